"""Scale check of the results drill-down: a classify test split of N items (6 classes) through crux.evaluation's
per-item records and overlays (what `crux evaluate` adds), then the console's /lines/LINE/results page, a confusion
cell and an overlay, timed over HTTP (first load after start, then p50/p95 of 20).

    PYTHONPATH=. .venv/bin/python bench/results_page.py [N]   (default 15000: the test split of a 100k dataset)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


def main(n: int) -> None:
    from crux import evaluation as ev
    from crux.collect.ingest_server import running_app
    from crux.console.app import create_console_app
    from crux.console.deps import ConsoleConfig, LineInfo

    classes = ["ok", "crazing", "inclusion", "patches", "pitted", "scratches"]
    rng = np.random.default_rng(0)
    targets = rng.integers(0, len(classes), n)
    logits = rng.normal(0, 1, (n, len(classes)))
    logits[np.arange(n), targets] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    root = Path(tempfile.mkdtemp())
    out = root / "metrics" / "line-a"
    t0 = time.perf_counter()
    metrics, plots = ev.classification_metrics(probs, targets, classes, "ok", 0.5)
    records = ev.classify_items(probs, targets, classes, "ok", 0.5)
    chosen = ev.thumbnail_indices(records)
    (out / "results").mkdir(parents=True)
    image = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    for i in chosen:
        ev.overlay_thumbnail(image, records[i]).save(out / "results" / ev.thumb_name(i), format="PNG")
        records[i]["thumb"] = ev.thumb_name(i)
    for r in records:
        r["id"], r["image"] = f"{r['index']:012x}", f"../img/{r['index']}.jpg"
    doc = ev.results_document("classify", classes, "ok", 0.5, "test", records, metrics, plots["threshold_curve"])
    ev.write_json(out / "predictions.json", doc)
    size = (out / "predictions.json").stat().st_size
    print(f"evaluate side: {n} records, {len(chosen)} overlays, predictions.json {size / 1e6:.1f} MB in "
          f"{time.perf_counter() - t0:.2f} s")  # fmt: skip
    cfg = ConsoleConfig(lines=(LineInfo("line-a", "A", "classify"),), workspace=root)
    with running_app(create_console_app(cfg), "console") as url, httpx.Client(base_url=url, timeout=30) as client:
        for path in ("/lines/line-a/results", "/lines/line-a/results?actual=crazing&predicted=ok",
                     f"/lines/line-a/results/images/{ev.thumb_name(chosen[0])}"):  # fmt: skip
            times = []
            for _ in range(21):
                t = time.perf_counter()
                r = client.get(path)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, (path, r.status_code)
            rest = sorted(times[1:])
            print(f"{path}: first {times[0]:.0f} ms, p50 {statistics.median(rest):.0f} ms, "
                  f"p95 {rest[int(0.95 * len(rest)) - 1]:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15000)
