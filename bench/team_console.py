"""Benchmark of the console's capture lists and team panel (issue 25): filtered, paged `/captures` over an ingest
database of 100,000 captures (SQLite), and the team aggregation over a Label Studio-sized project.

    .venv/bin/python bench/team_console.py [--captures 100000] [--tasks 2000] [--requests 20] [--out FILE.json]

Prints p50/p95 of the server's own time (the console's `Server-Timing` header) per page after 3 warm-up requests,
and the time `crux.console.team_data.summarize` takes for `--tasks` tasks labelled by two of three annotators (what
the team panel's background refresh computes after reading Label Studio). Target: every page p95 <= 300 ms.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LINES = [f"line-{i}" for i in range(5)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def fill(tmp: Path, n: int, n_stations: int = 50) -> None:
    """Captures straight into the database: 1 in 4 NG (scratch or spot), 1 in 50 uncertain (close top-2 scores)."""
    import sqlalchemy as sa

    from crux.collect import add_station, create_db_engine, migrate
    from crux.collect.db import captures

    engine = create_db_engine(f"sqlite:///{tmp}/ingest.db")
    migrate(engine)
    names = [f"st-{i:02d}" for i in range(n_stations)]
    for i, name in enumerate(names):
        add_station(engine, name, LINES[i % len(LINES)])
    rng = random.Random(0)
    start = dt.datetime(2026, 12, 1)
    with engine.begin() as conn:
        ids = dict(conn.execute(sa.text("SELECT name, id FROM stations")).all())
        rows = []
        for i in range(n):
            station = names[i % n_stations]
            ng = rng.random() < 0.25
            cls = rng.choice(["scratch", "spot"]) if ng else "ok"
            unsure = rng.random() < 0.02
            top = 0.52 if unsure else 0.93
            scores = {cls: top, ("ok" if ng else "scratch"): round(1 - top, 2)}
            at = start + dt.timedelta(seconds=3 * i)
            rows.append(
                {"station_id": ids[station], "station": station, "line": LINES[names.index(station) % len(LINES)],
                 "captured_at": at, "received_at": at, "sha256": f"{i:064x}", "image_key": f"{i:064x}.jpg",
                 "content_type": "image/jpeg", "size_bytes": 1, "width": 8, "height": 8, "prediction": cls,
                 "verdict": "ng" if ng else "ok", "scores": scores, "boxes": [], "idempotency_key": f"k{i}"}
            )  # fmt: skip
            if len(rows) == 5000:
                conn.execute(captures.insert(), rows)
                rows = []
        if rows:
            conn.execute(captures.insert(), rows)
    engine.dispose()


def team_tasks(n: int) -> list[dict[str, object]]:
    from crux.kinds import Label, get_kind

    kind = get_kind("classify")
    rng = random.Random(1)
    now = dt.datetime.now(dt.UTC)
    tasks = []
    for t in range(n):
        people = rng.sample([2, 3, 4], 2)
        cls = rng.choice(["ok", "scratch", "spot"])
        annotations = [
            {"id": 2 * t + k, "completed_by": who,
             "result": kind.to_results([Label(cls if rng.random() > 0.05 else "spot")], 200, 200),
             "created_at": (now - dt.timedelta(hours=rng.random() * 300)).isoformat(), "lead_time": rng.random() * 20}
            for k, who in enumerate(people)
        ]  # fmt: skip
        tasks.append({"id": t + 1, "data": {"original_name": f"{t}.jpg", "width": 200, "height": 200},
                      "annotations": annotations})  # fmt: skip
    return tasks


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--captures", type=int, default=100_000)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from crux.collect import create_db_engine
    from crux.collect.ingest_server import running_app
    from crux.console.app import create_console_app
    from crux.console.deps import ConsoleConfig, LineInfo
    from crux.console.sources import IngestReader
    from crux.console.team_data import summarize

    results: dict[str, object] = {"captures": args.captures, "machine": platform.platform()}
    started = time.perf_counter()
    tasks = team_tasks(args.tasks)
    t0 = time.perf_counter()
    summary = summarize(
        "line-0", "classify", 1, "http://ls", tasks, {2: "a", 3: "b", 4: "c"}, [], dt.datetime.now(dt.UTC)
    )
    results["team_summarize_s"] = round(time.perf_counter() - t0, 3)
    print(f"team summary of {args.tasks} tasks ({summary.overlapped} overlapped): {results['team_summarize_s']} s")

    with tempfile.TemporaryDirectory(prefix="crux-bench-team-") as name:
        tmp = Path(name)
        fill(tmp, args.captures)
        print(f"filled {args.captures} captures in {time.perf_counter() - started:.1f} s")
        cfg = ConsoleConfig(
            lines=tuple(LineInfo(x, x, "classify") for x in LINES),
            ingest=IngestReader(create_db_engine(f"sqlite:///{tmp}/ingest.db"), str(tmp / "images")),
        )
        pages = {
            "captures line": "/captures?line=line-0",
            "captures ng": "/captures?line=line-0&verdict=ng",
            "captures station": "/captures?station=st-07",
            "captures class": "/captures?line=line-1&cls=spot",
            "captures uncertain": "/captures?line=line-2&uncertain=1",
            "captures deep page": "/captures?line=line-3&before=500",
            "captures all lines": "/captures",
            "line page (team panel)": "/lines/line-0",
        }
        timings: dict[str, dict[str, float]] = {}
        with running_app(create_console_app(cfg), "console") as base, httpx.Client(base_url=base, timeout=30) as c:
            for label, path in pages.items():
                server = []
                for i in range(3 + args.requests):
                    r = c.get(path)
                    assert r.status_code == 200, (path, r.status_code, r.text[:300])
                    if i >= 3:
                        server.append(float(r.headers["server-timing"].split("dur=")[1]))
                timings[label] = {
                    "p50_ms": round(percentile(server, 50), 1),
                    "p95_ms": round(percentile(server, 95), 1),
                }
                print(f"{label:28s} p50 {timings[label]['p50_ms']:7.1f} ms   p95 {timings[label]['p95_ms']:7.1f} ms")
        results["pages"] = timings
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
