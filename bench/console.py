"""Benchmark of the console at plant scale: 100,000 captures and 50 stations in the ingest database (SQLite), 5 lines
with 10 signed releases each on a local model remote, two dataset versions of 100,000 items (real git + DVC), a
real uvicorn console in a subprocess.

    .venv/bin/python bench/console.py [--captures 100000] [--stations 50] [--items 100000] [--requests 30]
                                      [--out FILE.json]

The console is started twice. The first start finds no cache: it reads every store and draws every figure before
it opens its port (timed as `start_s`), then computes the dataset diffs in the background (`diffs_ready_s`). The
second start finds the diffs it computed on disk. For each start the first request of every page is timed on its
own (`first_ms`: the first load after a start), then, on the first start, `--requests` timed requests after 3
warm-up ones (p50/p95 of the server's own time, the `Server-Timing` header, and of the client's wall time). Target
(issue #25): every page p95 <= 300 ms server time, the first load after a start included, the dataset diff page
at 100k items included. Label Studio is not configured here (its reads are cached in any case).
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
    lines=tuple(LineInfo(n, n, "classify", "ok") for n in lines),
    ingest=IngestReader(create_db_engine(f"sqlite:///{tmp}/ingest.db"), str(tmp / "images")),
    models=ModelReader(str(tmp / "remote"), load_public_keys([tmp / "publish.pub"])),
    datasets=DatasetReader(tmp / "repo"),
    cache_dir=tmp / "console-cache",
    warm_timeout_s=120.0,
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


def dataset_versions(repo: Path, line: str, n_items: int) -> tuple[list[str], dict[str, object]]:
    """Two dataset versions of `line` with real git + DVC: `n_items` items, then 1% relabelled, 1% added and 0.5%
    removed. Only the manifest and classes.json are written (the diff reads manifests; thumbnails are not timed)."""
    from crux.data import versioning as V
    from crux.data.manifest import ClassesInfo, ItemLabel, ManifestItem, write_classes, write_manifest

    started = time.perf_counter()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for key, value in (("user.email", "bench@crux.local"), ("user.name", "bench")):
        subprocess.run(["git", "config", key, value], cwd=repo, check=True)
    V.init_repo(repo)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=repo, check=True)
    folder = repo / "data" / line
    folder.mkdir(parents=True)
    classes = ("ok", "scratch", "spot")
    write_classes(folder / "classes.json", ClassesInfo("classify", classes, "ok"))

    def item(i: int, cls: str) -> ManifestItem:
        sha = f"{i:064x}"
        split = ("train", "train", "train", "train", "train", "train", "train", "train", "val", "test")[i % 10]
        return ManifestItem(sha, i + 1, f"images/{sha[:2]}/{sha}.jpg", 200, 200, f"f{i}.jpg", split,
                            (ItemLabel(cls),), (f"annotator-{i % 4}",), (i + 1,))  # fmt: skip

    items = [item(i, classes[i % 3]) for i in range(n_items)]
    commits = []
    for version in range(2):
        if version == 1:
            step = 100  # 1% relabelled, 1% added, 0.5% removed
            items = [item(i, classes[(i + 1) % 3]) if i % step == 0 else x for i, x in enumerate(items)]
            items = [x for i, x in enumerate(items) if i % 200 != 1]
            items += [item(n_items + i, "scratch") for i in range(n_items // step)]
        write_manifest(folder / "manifest.jsonl", items)
        result = V.commit_version(repo, project=line, data_rel=f"data/{line}", push=False)
        assert result is not None
        commits.append(result.commit)
    return commits, {"dataset_seconds": round(time.perf_counter() - started, 1), "dataset_items": len(items)}


def start_console(tmp: Path, port: int, lines: list[str]) -> tuple[subprocess.Popen[bytes], float]:
    """The console in a subprocess; returns it once its port answers, and the seconds that took (warm-up included)."""
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp), str(port), ",".join(lines)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/static/console.css", timeout=1)
            return server, time.perf_counter() - started
        except httpx.HTTPError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("the console did not start") from None
            time.sleep(0.1)


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captures", type=int, default=100_000)
    parser.add_argument("--stations", type=int, default=50)
    parser.add_argument("--lines", type=int, default=5)
    parser.add_argument("--versions", type=int, default=10, help="published versions per line")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per page")
    parser.add_argument("--items", type=int, default=100_000, help="items of the dataset version the diff shows")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "console.json")
    args = parser.parse_args()
    if not (1 <= args.captures <= 2_000_000 and 1 <= args.stations <= 10_000 and 1 <= args.lines <= args.stations):
        parser.error("captures 1..2,000,000, stations 1..10,000, lines 1..stations")
    if not 1000 <= args.items <= 2_000_000:
        parser.error("items 1000..2,000,000")
    lines = [f"line-{i}" for i in range(args.lines)]
    with tempfile.TemporaryDirectory(prefix="crux-bench-console-") as name:
        tmp = Path(name)
        result: dict[str, object] = fill(tmp, args.captures, args.stations, lines)
        commits, info = dataset_versions(tmp / "repo", lines[0], args.items)
        result.update(info)
        publish_lines(tmp, lines, args.versions)
        paths = page_paths(lines[0], commits)
        port = free_port()
        server, start_s = start_console(tmp, port, lines)
        try:
            base = f"http://127.0.0.1:{port}"
            first = first_loads(base, paths)
            result["diffs_ready_s"] = round(wait_for_diffs(base, paths) + start_s, 1)
            result["pages"] = measure(base, paths, args.requests)
        finally:
            stop(server)
        # A restart: the figures are drawn again at start, the diffs are read from the cache on disk.
        server, restart_s = start_console(tmp, port, lines)
        try:
            again = first_loads(f"http://127.0.0.1:{port}", paths)
        finally:
            stop(server)
    result["start_s"] = round(start_s, 1)
    result["restart_s"] = round(restart_s, 1)
    for path, p in result["pages"].items():  # type: ignore[union-attr]
        p["first_ms"] = first[path]
        p["first_after_restart_ms"] = again[path]
    pages = result["pages"]
    assert isinstance(pages, dict)
    result["config"] = {k: getattr(args, k) for k in ("captures", "stations", "lines", "versions", "requests", "items")}
    result["target_ok"] = all(
        max(p["server_ms"]["p95"], p["first_ms"]["server"], p["first_after_restart_ms"]["server"]) <= 300
        for p in pages.values()
    )
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    scale = (
        f"{args.captures} captures, {args.stations} stations, {args.lines} lines x {args.versions} versions, "
        f"dataset diff of {args.items} items"
    )
    print(f"console bench: {scale}")
    print(
        f"start (warm-up included) {result['start_s']} s, diffs ready {result['diffs_ready_s']} s after start, "
        f"restart {result['restart_s']} s"
    )
    print(f"{'page':58} {'first':>7} {'restart':>8} {'p50':>7} {'p95':>7} {'wall p95':>9}  (server ms)")
    for path, p in pages.items():
        s, w = p["server_ms"], p["wall_ms"]
        print(
            f"{path:58} {p['first_ms']['server']:7.1f} {p['first_after_restart_ms']['server']:8.1f} "
            f"{s['p50']:7.1f} {s['p95']:7.1f} {w['p95']:9.1f}"
        )
    print(
        f"target p95 <= 300 ms server time, first loads included: {'met' if result['target_ok'] else 'MISSED'}; "
        f"written {args.out}"
    )
    return 0 if result["target_ok"] else 1


def page_paths(line: str, commits: list[str]) -> list[str]:
    first, second = commits
    return [
        "/", f"/lines/{line}", "/stations", "/stations/st-01", f"/lines/{line}/trend.svg",
        f"/lines/{line}/confusion.png", "/captures/1/overlay.png",
        f"/lines/{line}/datasets/{first}",  # the first version: every item added
        f"/lines/{line}/datasets/{first}?change=added&page=900",  # deep in it
        f"/lines/{line}/datasets/{second}?change=relabelled",
    ]  # fmt: skip


def first_loads(base: str, paths: list[str]) -> dict[str, dict[str, float]]:
    """The first request of each page after a start, each timed on its own."""
    out = {}
    with httpx.Client(base_url=base, timeout=60) as client:
        for path in paths:
            started = time.perf_counter()
            response = client.get(path)
            response.raise_for_status()
            out[path] = {
                "server": float(response.headers["server-timing"].split("dur=")[1]),
                "wall": round((time.perf_counter() - started) * 1000, 1),
                # A diff still being computed answers at once with a page that reloads itself: say so.
                "pending": 'id="diff-pending"' in response.text,
            }
    return out


def wait_for_diffs(base: str, paths: list[str]) -> float:
    started = time.perf_counter()
    with httpx.Client(base_url=base, timeout=60) as client:
        for path in (p for p in paths if "/datasets/" in p):
            while 'id="diff-pending"' in client.get(path).text:
                if time.perf_counter() - started > 1800:
                    raise RuntimeError(f"{path}: the diff was not computed in 30 min")
                time.sleep(0.5)
    return time.perf_counter() - started


def measure(base: str, paths: list[str], n: int) -> dict[str, dict[str, object]]:
    with httpx.Client(base_url=base, timeout=30) as client:
        out: dict[str, dict[str, object]] = {}
        for path in paths:
            server, wall = [], []
            for i in range(n + 3):
                started = time.perf_counter()
                response = client.get(path)
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                if i < 3:
                    continue  # warm-up: the SQLite page cache, the first connection
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
