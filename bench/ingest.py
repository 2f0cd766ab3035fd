"""Benchmark of the ingest service: a real uvicorn server in a subprocess, uploads from this process.

    .venv/bin/python bench/ingest.py [--count 2000] [--concurrency 4] [--max-seconds 60] [--out bench/ingest.json]

Prints throughput, p50/p99 latency and a count check (every accepted capture has a row in the
database and a blob in storage; 0 lost), and writes the same figures as JSON. Loopback only.
Targets (issue #8): >= 300 captures/s, p99 <= 50 ms, 0 lost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crux.collect import add_station, create_db_engine, list_captures, migrate  # noqa: E402
from crux.collect.ingest_server import capture_metadata, free_port, make_jpeg  # noqa: E402
from crux.collect.storage import ImageStore  # noqa: E402

SERVER = """
import sys
from crux.collect import IngestSettings
from crux.collect.ingest_app import serve
serve(IngestSettings(database_url=sys.argv[1], storage_url=sys.argv[2]), host="127.0.0.1", port=int(sys.argv[3]))
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="uploads in total (bounded)")
    parser.add_argument("--concurrency", type=int, default=2, help="client threads, each with a keep-alive connection")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop uploading after this long")
    parser.add_argument("--warmup", type=int, default=50, help="uploads before timing (not counted in latency)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "ingest.json")
    args = parser.parse_args()
    if not (1 <= args.count <= 100_000 and 1 <= args.concurrency <= 64):
        parser.error("count must be 1..100000 and concurrency 1..64")

    with tempfile.TemporaryDirectory(prefix="crux-bench-ingest-") as tmp:
        db_url, storage = f"sqlite:///{tmp}/ingest.db", f"{tmp}/images"
        engine = create_db_engine(db_url)
        migrate(engine)
        token = add_station(engine, "bench-cam", "bench-line")
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, db_url, storage, str(port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            result = run(args, port, token)
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        # The count check reads the database and the store directly, after the server has stopped.
        store = ImageStore(storage)
        rows = list_captures(engine, limit=args.count + args.warmup + 10)
        by_id = {r.id: r for r in rows}
        missing_rows = [i for i in result.pop("accepted_ids") if i not in by_id]
        missing_blobs = [r.id for r in rows if not store.exists(r.image_key)]
        result["count_check"] = {
            "accepted": result["accepted"] + args.warmup,
            "rows": len(rows),
            "rows_missing": len(missing_rows),
            "blobs_missing": len(missing_blobs),
            "lost": len(missing_rows) + len(missing_blobs) + (result["accepted"] + args.warmup - len(rows)),
        }
        engine.dispose()

    result["targets"] = {
        "throughput_ok": result["throughput_per_s"] >= 300,
        "p99_ok": result["latency_ms"]["p99"] <= 50,
        "lost_ok": result["count_check"]["lost"] == 0,
    }
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    lat = result["latency_ms"]
    print(
        f"ingest bench: {result['accepted']}/{result['attempted']} accepted in {result['seconds']:.2f} s "
        f"-> {result['throughput_per_s']:.0f} captures/s; latency p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
        f"max {lat['max']:.1f} ms (concurrency {args.concurrency}); count check: {result['count_check']}"
    )
    print(f"targets: {result['targets']}; written {args.out}")
    return 0 if all(result["targets"].values()) else 1


def run(args: argparse.Namespace, port: int, token: str) -> dict[str, object]:
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("server did not come up within 30 s")
        time.sleep(0.1)

    total = args.count + args.warmup
    # Encode before timing: the edge has its JPEG already, the bench measures the upload path only.
    images = [make_jpeg(i) for i in range(total)]
    meta = [json.dumps(capture_metadata("bench-cam", "bench-line", original_name=f"c{i}.jpg")) for i in range(total)]
    headers = {"Authorization": f"Bearer {token}"}

    def upload(client: httpx.Client, i: int) -> tuple[int, int | None]:
        r = client.post(
            f"{base}/v1/captures",
            headers={**headers, "Idempotency-Key": f"bench-{i}"},
            files={"image": (f"c{i}.jpg", images[i], "image/jpeg")},
            data={"metadata": meta[i]},
        )
        return r.status_code, (r.json()["id"] if r.status_code in (200, 201) else None)

    with httpx.Client(timeout=10) as warm:
        for i in range(args.warmup):
            assert upload(warm, i)[0] == 201

    latencies: list[float] = []
    accepted: list[int] = []
    errors: dict[int, int] = {}
    lock = threading.Lock()
    counter = iter(range(args.warmup, total))
    stop_at = time.monotonic() + args.max_seconds

    def worker() -> None:
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                status, cid = upload(client, i)
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies.append(dt)
                    if cid is not None:
                        accepted.append(cid)
                    else:
                        errors[status] = errors.get(status, 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    return {
        "attempted": len(latencies),
        "accepted": len(accepted),
        "accepted_ids": accepted,
        "errors": errors,
        "seconds": seconds,
        "throughput_per_s": len(accepted) / seconds,
        "concurrency": args.concurrency,
        "image_bytes_mean": statistics.mean(len(b) for b in images),
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
            "max": max(latencies),
            "mean": statistics.mean(latencies),
        },
    }


if __name__ == "__main__":
    raise SystemExit(main())
