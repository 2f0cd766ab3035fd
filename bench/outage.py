"""Benchmark: the ingest server goes down for a while; the edge keeps inspecting and queueing, then drains.

A real uvicorn ingest server in a subprocess on loopback; on the edge side the real on-disk `Outbox` with its
background uploader, fed at a steady frame rate (every fifth frame NG) before, during and after an outage
in which the server process is killed. Afterwards: every enqueued capture must be in the database exactly
once (by idempotency key), in enqueue order, and the outbox empty.

    .venv/bin/python bench/outage.py [--outage-s 600] [--fps 5] [--out bench/results/outage.json]
"""

from __future__ import annotations

import argparse
import json
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
from crux.edge.outbox import Outbox  # noqa: E402

SERVER = """
import sys
from crux.collect import IngestSettings
from crux.collect.ingest_app import serve
serve(IngestSettings(database_url=sys.argv[1], storage_url=sys.argv[2]), host="127.0.0.1", port=int(sys.argv[3]))
"""


def start_server(db_url: str, storage: str, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", SERVER, db_url, storage, str(port)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("ingest server did not come up within 30 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage-s", type=float, default=600.0, help="how long the server is down")
    parser.add_argument("--before-s", type=float, default=10.0, help="normal operation before the outage")
    parser.add_argument("--after-s", type=float, default=10.0, help="inspection continues this long after")
    parser.add_argument("--fps", type=float, default=5.0, help="frames kept per second by the edge")
    parser.add_argument("--drain-timeout-s", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "outage.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="crux-bench-outage-") as tmp:
        db_url, storage, port = f"sqlite:///{tmp}/ingest.db", f"{tmp}/images", free_port()
        engine = create_db_engine(db_url)
        migrate(engine)
        token = add_station(engine, "edge-1", "line-1")
        server = start_server(db_url, storage, port)
        outbox = Outbox(Path(tmp) / "outbox", f"http://127.0.0.1:{port}", token, backoff_max_s=5.0)
        outbox.start()
        keys: list[str] = []
        max_pending = 0
        stop = threading.Event()

        def inspect() -> None:
            """The edge's side: a steady stream of kept frames, whatever the server does."""
            nonlocal max_pending
            frame = 0
            while not stop.is_set():
                meta = capture_metadata("edge-1", "line-1", original_name=f"f{frame}.jpg")
                item = outbox.enqueue(make_jpeg(frame), meta, ng=frame % 5 == 0)
                if item is not None:
                    keys.append(item.key)
                max_pending = max(max_pending, len(outbox.pending()))
                frame += 1
                time.sleep(1.0 / args.fps)

        producer = threading.Thread(target=inspect, daemon=True)
        producer.start()
        time.sleep(args.before_s)
        server.kill()
        server.wait()
        outage_started = time.monotonic()
        print(f"server down for {args.outage_s:.0f} s; the edge keeps inspecting…", flush=True)
        time.sleep(args.outage_s)
        pending_at_restart = len(outbox.pending())
        server = start_server(db_url, storage, port)
        restarted = time.monotonic()
        time.sleep(args.after_s)
        stop.set()
        producer.join()
        drained = outbox.drain(args.drain_timeout_s)
        drain_s = time.monotonic() - restarted
        outbox.stop()
        server.terminate()
        server.wait()
        rows = list_captures(engine, limit=1_000_000)
        stored_keys = [row.idempotency_key for row in rows]
        enqueued = set(keys)
        figures = {
            "outage_s": round(restarted - outage_started, 1),
            "fps": args.fps,
            "enqueued": len(keys),
            "pending_at_restart": pending_at_restart,
            "max_pending": max_pending,
            "drained": drained,
            "drain_s_after_restart": round(drain_s, 1),
            "stored": len(rows),
            "lost": len(enqueued - set(stored_keys)),
            "duplicates": len(stored_keys) - len(set(stored_keys)),
            "in_order": [k for k in stored_keys if k in enqueued] == keys,
            "dropped_ok": outbox.stats.dropped_ok,
        }
    for key, value in figures.items():
        print(f"{key:>22}: {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["lost"] == 0 and figures["duplicates"] == 0 and drained else 1


if __name__ == "__main__":
    raise SystemExit(main())
