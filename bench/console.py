"""Benchmark of the console at plant scale: 100,000 captures and 50 stations in the ingest database (SQLite), 5 lines
with 10 signed releases each on a local model remote, a real uvicorn console in a subprocess.

    .venv/bin/python bench/console.py [--captures 100000] [--stations 50] [--requests 30] [--out FILE.json]

For each page, `--requests` timed requests after 3 warm-up ones; prints p50/p95 of the server's own time (the
console's `Server-Timing` header) and of the client's wall time, and writes them as JSON. Target (issue #16): every
page p95 <= 300 ms server time. Label Studio is not configured here (its reads are cached for 10 s in any case).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # edge_support: the tiny real models the tests publish

from crux.collect import create_db_engine, migrate  # noqa: E402
from crux.collect.ingest_server import free_port, make_jpeg  # noqa: E402

SERVER = """
import sys
from pathlib import Path
import uvicorn
from crux.console.app import create_console_app
from crux.console.deps import ConsoleConfig, LineInfo
from crux.console.sources import DatasetReader, IngestReader, ModelReader
from crux.collect import create_db_engine
from crux.ship.signing import load_public_keys
tmp, port, lines = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
cfg = ConsoleConfig(
    lines=tuple(LineInfo(n, n, "classify") for n in lines),
    ingest=IngestReader(create_db_engine(f"sqlite:///{tmp}/ingest.db"), str(tmp / "images")),
    models=ModelReader(str(tmp / "remote"), load_public_keys([tmp / "publish.pub"])),
    datasets=DatasetReader(tmp / "repo"),
)
uvicorn.run(create_console_app(cfg), host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def fill(tmp: Path, n_captures: int, n_stations: int, lines: list[str]) -> dict[str, object]:
    """Stations, heartbeats and captures straight into the database (bulk inserts: the fill is not what is timed)."""
    import sqlalchemy as sa

    from crux.collect.db import captures, station_heartbeats, stations
    from crux.collect.storage import ImageStore, image_key

    started = time.perf_counter()
    engine = create_db_engine(f"sqlite:///{tmp}/ingest.db")
    migrate(engine)
    store = ImageStore(str(tmp / "images"))
    keys = []
    for i in range(32):  # captures share 32 real JPEGs: the overlay page decodes a real image
        data = make_jpeg(i)
        key = image_key(f"{i:064x}", "jpg")
        store.put(key, data)
        keys.append(key)
    rng = random.Random(0)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    names = [f"st-{i:02d}" for i in range(n_stations)]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(stations),
            [
                {"name": n, "line": lines[i % len(lines)], "token_sha256": f"{i:064x}", "created_at": now}
                for i, n in enumerate(names)
            ],
        )
        conn.execute(
            sa.insert(station_heartbeats),
            [
                {
                    "station_id": i + 1,
                    "station": n,
                    "line": lines[i % len(lines)],
                    # Every 10th station silent for an hour, every 7th on an older model.
                    "received_at": now - dt.timedelta(hours=1 if i % 10 == 0 else 0, seconds=rng.uniform(0, 30)),
                    "model_version": 9 if i % 7 == 0 else 10,
                    "frames": 10_000 + i,
                    "ng": 300 + i,
                    "errors": 0,
                    "fps": 5.0,
                    "latency_p50_ms": 3.1,
                    "ng_rate": 0.03,
                    "outbox_pending": i,
                    "outbox_bytes": i * 9000,
                    "interval_s": 30.0,
                }
                for i, n in enumerate(names)
            ],
        )
        batch = []
        for i in range(n_captures):
            s = i % n_stations
            ng = rng.random() < 0.2
            captured = now - dt.timedelta(seconds=rng.uniform(0, 7 * 86400))  # a week of captures
            batch.append(
                {
                    "station_id": s + 1,
                    "station": names[s],
                    "line": lines[s % len(lines)],
                    "captured_at": captured,
                    "received_at": captured,
                    "sha256": f"{i:064x}",
                    "image_key": keys[i % len(keys)],
                    "content_type": "image/jpeg",
                    "size_bytes": 9000,
                    "width": 200,
                    "height": 200,
                    "original_name": f"f{i}.jpg",
                    "model_version": "v10",
                    "prediction": "scratch" if ng else "ok",
                    "verdict": "ng" if ng else "ok",
                    "scores": {"scratch": 0.8 if ng else 0.1},
                    "boxes": [{"class": "scratch", "box": [20.0, 30.0, 120.0, 150.0], "score": 0.8}] if ng else [],
                    "idempotency_key": None,
                    "ls_project": None,
                    "ls_task_id": None,
                    "sent_at": None,
                    "labeled_at": captured if rng.random() < 0.5 else None,
                }
            )
            if len(batch) == 5000:
                conn.execute(sa.insert(captures), batch)
                batch = []
        if batch:
            conn.execute(sa.insert(captures), batch)
    engine.dispose()
    return {"fill_seconds": round(time.perf_counter() - started, 1)}


def publish_lines(tmp: Path, lines: list[str], versions: int) -> None:
    """`versions` signed releases per line. `publish` runs each model before it signs it, so every version is a real,
    tiny exported classifier (tests/edge_support.py: ~0.3 s an export); the console reads manifests and cards only."""
    from edge_support import exported

    from crux.ship.gate import GateConfig
    from crux.ship.publish import publish
    from crux.ship.signing import generate_private_key, public_key_pem

    key = generate_private_key()
    (tmp / "publish.pub").write_bytes(public_key_pem(key.public_key()))
    for v in range(versions):
        acc = round(0.9 + 0.009 * v, 4)
        metrics = {"accuracy": acc, "macro_f1": acc, "confusion_matrix": [[30, 1, 0], [1, 25, 2], [0, 1, 28]]}
        export = exported(tmp, "classify", seed=v, metrics=metrics)
        for line in lines:
            publish(str(tmp / "remote"), line, export, key, GateConfig())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captures", type=int, default=100_000)
    parser.add_argument("--stations", type=int, default=50)
    parser.add_argument("--lines", type=int, default=5)
    parser.add_argument("--versions", type=int, default=10, help="published versions per line")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per page")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "console.json")
    args = parser.parse_args()
    if not (1 <= args.captures <= 2_000_000 and 1 <= args.stations <= 10_000 and 1 <= args.lines <= args.stations):
        parser.error("captures 1..2,000,000, stations 1..10,000, lines 1..stations")
    lines = [f"line-{i}" for i in range(args.lines)]
    with tempfile.TemporaryDirectory(prefix="crux-bench-console-") as name:
        tmp = Path(name)
        subprocess.run(["git", "init", "-q", str(tmp / "repo")], check=True)
        result: dict[str, object] = fill(tmp, args.captures, args.stations, lines)
        publish_lines(tmp, lines, args.versions)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(tmp), str(port), ",".join(lines)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            result["pages"] = measure(f"http://127.0.0.1:{port}", lines[0], args.requests)
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
    pages = result["pages"]
    assert isinstance(pages, dict)
    result["config"] = {k: getattr(args, k) for k in ("captures", "stations", "lines", "versions", "requests")}
    result["target_ok"] = all(p["server_ms"]["p95"] <= 300 for p in pages.values())
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    scale = f"{args.captures} captures, {args.stations} stations, {args.lines} lines x {args.versions} versions"
    print(f"console bench: {scale}")
    print(f"{'page':32} {'server p50':>10} {'p95':>8} {'wall p50':>10} {'p95':>8}  (ms)")
    for path, p in pages.items():
        s, w = p["server_ms"], p["wall_ms"]
        print(f"{path:32} {s['p50']:10.1f} {s['p95']:8.1f} {w['p50']:10.1f} {w['p95']:8.1f}")
    print(f"target p95 <= 300 ms server time: {'met' if result['target_ok'] else 'MISSED'}; written {args.out}")
    return 0 if result["target_ok"] else 1


def measure(base: str, line: str, n: int) -> dict[str, dict[str, object]]:
    with httpx.Client(base_url=base, timeout=30) as client:
        deadline = time.monotonic() + 60
        while True:
            try:
                client.get("/static/console.css")
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        capture = 1
        pages = ["/", f"/lines/{line}", "/stations", "/stations/st-01", f"/lines/{line}/trend.svg",
                 f"/lines/{line}/confusion.png", f"/captures/{capture}/overlay.png"]  # fmt: skip
        out: dict[str, dict[str, object]] = {}
        for path in pages:
            server, wall = [], []
            for i in range(n + 3):
                started = time.perf_counter()
                response = client.get(path)
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                if i < 3:
                    continue  # warm-up: first imports, caches, SQLite page cache
                wall.append(elapsed)
                server.append(float(response.headers["server-timing"].split("dur=")[1]))
            out[path] = {
                "server_ms": {"p50": percentile(server, 50), "p95": percentile(server, 95), "max": max(server)},
                "wall_ms": {"p50": percentile(wall, 50), "p95": percentile(wall, 95)},
                "bytes": len(response.content),
            }
    return out


if __name__ == "__main__":
    sys.exit(main())
