"""Benchmark of the ingest service at plant scale: `crux ingest serve --workers N` on PostgreSQL with images on S3.

    .venv/bin/python bench/ingest.py [--stations 50] [--rate 1000] [--duration 60] [--workers 2]
                                     [--database postgres|sqlite] [--storage s3|local] [--out bench/ingest.json]

Starts everything on loopback, in processes of its own: a throwaway PostgreSQL cluster (Debian's, through
scripts/postgres-for-tests.sh), a moto_server S3 endpoint, and the real CLI `crux ingest serve --workers N`. It
registers `--stations` stations (each with its own token) and runs one asyncio client per station, each on its
own keep-alive connection, together offering `--rate` captures/s (0 = as fast as the server answers) for
`--duration` seconds after a warm-up. Every capture is a distinct JPEG with its own Idempotency-Key; a failed
request is retried with the same key, as the edge outbox does. Afterwards a sample of acknowledged captures is sent
again (must come back as replays of the same id), the server is stopped, and the check reads PostgreSQL and lists
the bucket: every acknowledged capture has exactly one row (0 lost, 0 duplicated) and every row's image is an
object on S3.

Prints and writes (JSON) captures/s, captures/s per core, latency p50/p90/p99/max, and the count check.
Targets (issue #24): >= 1,000 captures/s sustained from 50 stations, p99 <= 20 ms, 0 lost, 0 duplicated.
The client, PostgreSQL, moto and the workers all share this machine's cores: the figure per core is the total
divided by os.cpu_count(), an underestimate of what a dedicated server core does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crux.collect import add_station, create_db_engine, migrate  # noqa: E402
from crux.collect.ingest_server import capture_metadata, free_port, make_jpeg  # noqa: E402

LINE = "bench-line"
BOUNDARY = "crux-bench-boundary-7f3a"
TARGETS = {"throughput_per_s": 1000.0, "p99_ms": 20.0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def unique_jpeg(base: bytes, tag: str) -> bytes:
    """`base` with a JPEG comment segment (COM) holding `tag` after its start marker: a valid, distinct image per
    capture (so a distinct S3 object) without encoding thousands of JPEGs before the run."""
    comment = tag.encode()
    return base[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + base[2:]


def multipart(image: bytes, metadata: str, name: str) -> bytes:
    """The body httpx/aiohttp would send, built once: the client's CPU goes to the server, not to encoding."""
    return b"".join(
        [
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{metadata}\r\n'.encode(),
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'.encode(),
            b"Content-Type: image/jpeg\r\n\r\n",
            image,
            f"\r\n--{BOUNDARY}--\r\n".encode(),
        ]
    )


# --- the servers ------------------------------------------------------------------------------------------------


# Processes whose CPU time is measured, by role; the client is this process alone (its children are the others).
CPU_ROLES: dict[str, int] = {}


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throwaway cluster on a free loopback port (scripts/postgres-for-tests.sh), removed afterwards."""
    folder = Path(f"/tmp/crux-bench-pg-{uuid.uuid4().hex[:8]}")  # not under a 0700 temp dir: postgres must enter it
    env = {**os.environ, "CRUX_PG_DIR": str(folder), "CRUX_PG_PORT": str(free_port())}
    script = ROOT / "scripts" / "postgres-for-tests.sh"
    printed = subprocess.run([str(script), "start"], env=env, check=True, capture_output=True, text=True).stdout
    if "=" not in printed:
        raise SystemExit("PostgreSQL is not installed here (apt-get install postgresql), or use --database sqlite")
    try:
        CPU_ROLES["postgres"] = int((folder / "postmaster.pid").read_text().split()[0])
        yield printed.strip().split("=", 1)[1]
    finally:
        subprocess.run([str(script), "stop"], env=env, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def moto(log: Path) -> Iterator[str]:
    port = free_port()
    exe = shutil.which("moto_server", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if exe is None:
        raise SystemExit("moto_server not found (pip install 'moto[server]'), or use --storage local")
    with open(log, "wb") as out:
        process = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    CPU_ROLES["moto"] = process.pid
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", 20)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def wait_http(url: str, seconds: float) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer within {seconds:.0f} s")
        time.sleep(0.1)


def cpu_seconds() -> dict[str, float]:
    """CPU time (user + system) so far of each role's process tree, from /proc (Linux); with the time of children
    already reaped (PostgreSQL backends of closed connections), so that a process that exits keeps its share."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent pid, cpu seconds)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / ticks)
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)

    def tree(pid: int) -> float:
        return stats.get(pid, (0, 0.0))[1] + sum(tree(c) for c in children.get(pid, []))

    result = {role: tree(pid) for role, pid in CPU_ROLES.items()}
    own = (Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split())[11:13]  # not the servers it started
    result["client"] = sum(int(f) for f in own) / ticks
    return result


# --- the client ---------------------------------------------------------------------------------------------------


@dataclass
class Station:
    name: str
    token: str
    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)  # Idempotency-Key -> capture id
    bodies: dict[str, bytes] = field(default_factory=dict)  # kept for the replay check
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    measured_acked: int = 0  # acknowledged captures sent inside the measured window


async def upload(session: object, url: str, st: Station, key: str, body: bytes) -> tuple[int, int | None]:
    """POST one capture; a connection error or 5xx is retried with the same key (the outbox's contract)."""
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    headers = {
        "Authorization": f"Bearer {st.token}",
        "Idempotency-Key": key,
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
    }
    for attempt in range(10):
        try:
            async with session.post(url, data=body, headers=headers) as response:
                payload = await response.read()
                if response.status < 500:
                    cid = json.loads(payload)["id"] if response.status in (200, 201) else None
                    if cid is None:
                        st.errors[str(response.status)] = st.errors.get(str(response.status), 0) + 1
                    return response.status, cid
                st.errors[str(response.status)] = st.errors.get(str(response.status), 0) + 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            st.errors[type(exc).__name__] = st.errors.get(type(exc).__name__, 0) + 1
        st.retries += 1
        await asyncio.sleep(0.05 * 2**attempt)
    return 0, None


async def station_loop(
    st: Station, base: str, base_jpeg: bytes, rate: float, start: float, warm_until: float, stop_at: float
) -> None:
    import aiohttp

    url = f"{base}/v1/captures"
    # One connection per station, kept alive: a station is one camera box with one uploader.
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        loop = asyncio.get_running_loop()
        # Stations start spread over one period so that they do not fire in lock step.
        next_at = start + (random.random() / rate if rate > 0 else 0.0)
        seq = 0
        while True:
            now = loop.time()
            if now >= stop_at:
                return
            if rate > 0 and next_at > now:
                await asyncio.sleep(next_at - now)
            seq += 1
            key = f"{st.name}-{seq}"
            meta = json.dumps(capture_metadata(st.name, LINE, original_name=f"{key}.jpg"))
            body = multipart(unique_jpeg(base_jpeg, key), meta, f"{key}.jpg")
            t0 = loop.time()
            _, cid = await upload(session, url, st, key, body)
            elapsed_ms = (loop.time() - t0) * 1000
            st.sent += 1
            if cid is not None:
                st.acked[key] = cid
                st.bodies[key] = body
            if t0 >= warm_until:
                st.latencies_ms.append(elapsed_ms)
                st.measured_acked += cid is not None
            next_at += 1 / rate if rate > 0 else 0.0


async def replay_sample(base: str, stations: list[Station], fraction: float) -> dict[str, int]:
    """Send a sample of acknowledged captures again with their keys: each must be a replay of the same id."""
    import aiohttp

    checked = mismatched = 0
    async with aiohttp.ClientSession() as session:
        for st in stations:
            keys = list(st.acked)
            for key in random.sample(keys, max(1, int(len(keys) * fraction))) if keys else []:
                status, cid = await upload(session, f"{base}/v1/captures", st, key, st.bodies[key])
                checked += 1
                if status != 200 or cid != st.acked[key]:
                    mismatched += 1
    return {"replayed": checked, "replay_mismatches": mismatched}


async def drive(base: str, stations: list[Station], args: argparse.Namespace) -> dict[str, object]:
    base_jpeg = make_jpeg(1)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    warm_until = start + args.warmup
    stop_at = warm_until + args.duration
    per_station = args.rate / len(stations) if args.rate > 0 else 0.0
    tasks = [station_loop(st, base, base_jpeg, per_station, start, warm_until, stop_at) for st in stations]
    samples: list[dict[str, float]] = []

    async def meter() -> None:  # CPU time of each process tree over the measured window only
        for at in (warm_until, stop_at):
            await asyncio.sleep(max(0.0, at - loop.time()))
            samples.append(cpu_seconds())

    t0 = time.perf_counter()
    await asyncio.gather(meter(), *tasks)
    wall = time.perf_counter() - t0
    replay = await replay_sample(base, stations, args.replay_fraction)
    latencies = [v for st in stations for v in st.latencies_ms]
    measured = len(latencies)
    counted = max(1, measured)
    cpu_ms = {role: round((samples[1][role] - samples[0][role]) * 1000 / counted, 3) for role in samples[0]}
    return {
        # Where the CPU goes, per capture measured: the ingest workers, PostgreSQL, moto (S3), the load generator.
        "cpu_ms_per_capture": cpu_ms,
        # What one core does for the ingest service alone (the database and the object store elsewhere, as in a plant).
        "ingest_captures_per_core_s": round(1000 / cpu_ms["ingest"], 1) if cpu_ms.get("ingest") else None,
        "wall_s": wall,
        "measured_requests": measured,
        # Acknowledged captures (stored: row committed, image on S3) per second of the measured window.
        "throughput_per_s": sum(st.measured_acked for st in stations) / args.duration,
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
            "max": max(latencies, default=float("nan")),
            "mean": statistics.mean(latencies) if latencies else float("nan"),
        },
        "retries": sum(st.retries for st in stations),
        "errors": {k: sum(st.errors.get(k, 0) for st in stations) for k in {k for st in stations for k in st.errors}},
        **replay,
    }


# --- the check ----------------------------------------------------------------------------------------------------


def count_check(db_url: str, stations: list[Station], storage: str, s3_endpoint: str | None) -> dict[str, int]:
    """What the database and the object store hold, against what the clients were told was stored."""
    import sqlalchemy as sa

    from crux.collect.db import captures

    engine = create_db_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(captures.c.id, captures.c.station, captures.c.idempotency_key, captures.c.image_key)
        ).all()
    engine.dispose()
    stored = {(r.station, r.idempotency_key): r.id for r in rows}
    acked = {(st.name, key): cid for st in stations for key, cid in st.acked.items()}
    lost = sum(1 for k, cid in acked.items() if stored.get(k) != cid)
    if s3_endpoint is not None:
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
        objects = {p.split("/", 2)[2] for p in fs.find(storage.removeprefix("s3://"))}
    else:
        root = Path(storage)
        objects = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    keys = {r.image_key for r in rows}
    return {
        "acknowledged": len(acked),
        "rows": len(rows),
        "lost": lost,
        # Rows beyond the acknowledged ones: a retry stored twice, or a row for a request never acknowledged.
        "duplicated": len(rows) - len({(r.station, r.idempotency_key) for r in rows}),
        "rows_not_acknowledged": len(set(stored) - set(acked)),
        "objects": len(objects),
        "objects_missing": len(keys - objects),
    }


# --- main ---------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, default=50, help="concurrent stations, each with its own token")
    parser.add_argument("--rate", type=float, default=1000.0, help="offered captures/s in total (0 = closed loop)")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds (after the warm-up)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="crux ingest serve --workers")
    parser.add_argument(
        "--db-pool-size", type=int, default=None, help="ingest.db_pool_size (default: the ingest default)"
    )
    parser.add_argument("--db-max-overflow", type=int, default=None, help="ingest.db_max_overflow")
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--storage", choices=("s3", "local"), default="s3")
    parser.add_argument("--replay-fraction", type=float, default=0.02, help="acknowledged captures sent again")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "ingest.json")
    args = parser.parse_args()
    if not (1 <= args.stations <= 500 and 0 < args.duration <= 3600 and 1 <= args.workers <= 64):
        parser.error("stations 1..500, duration 0..3600 s, workers 1..64")

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crux-bench-ingest-")))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        s3_endpoint = None
        if args.storage == "s3":
            env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
            os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
            s3_endpoint = stack.enter_context(moto(tmp / "moto.log"))
            import s3fs

            s3fs.S3FileSystem(endpoint_url=s3_endpoint).mkdir("bench-captures")
            storage, options = "s3://bench-captures/captures", {"endpoint_url": s3_endpoint}
        else:
            storage, options = str(tmp / "images"), {}
        db_url = stack.enter_context(postgres()) if args.database == "postgres" else f"sqlite:///{tmp}/ingest.db"
        engine = create_db_engine(db_url)
        migrate(engine)
        stations = [Station(f"st{i:03d}", add_station(engine, f"st{i:03d}", LINE)) for i in range(args.stations)]
        engine.dispose()
        params = tmp / "params.yaml"
        ingest = {"database_url": db_url, "storage_url": storage, "storage_options": options}
        for key in ("db_pool_size", "db_max_overflow"):
            if getattr(args, key) is not None:
                ingest[key] = getattr(args, key)
        params.write_text(json.dumps({"ingest": ingest}))  # JSON is YAML
        port = free_port()
        cmd = [sys.executable, "-m", "crux.cli", "ingest", "serve", "--port", str(port), "--workers", str(args.workers)]
        log = open(tmp / "server.log", "wb")  # noqa: SIM115 - closed with the stack
        stack.callback(log.close)
        server = subprocess.Popen([*cmd, "--params", str(params)], cwd=tmp, env=env, stdout=log, stderr=log)
        CPU_ROLES["ingest"] = server.pid
        try:
            base = f"http://127.0.0.1:{port}"
            try:
                wait_http(f"{base}/v1/health", 180)  # workers import FastAPI & co.: slow on busy cores
            except SystemExit:
                log.flush()
                print((tmp / "server.log").read_text()[-3000:], file=sys.stderr)
                raise
            result = asyncio.run(drive(base, stations, args))
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
        # Read back after the server has stopped: what is there now is what a restart would find.
        result["count_check"] = count_check(db_url, stations, storage, s3_endpoint)

    cpus = os.cpu_count() or 1
    check = result["count_check"]
    assert isinstance(check, dict)
    lat = result["latency_ms"]
    assert isinstance(lat, dict)
    rate = float(result["throughput_per_s"])  # type: ignore[arg-type]
    result.update(
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        throughput_per_core=rate / cpus,
        targets={
            "throughput_ok": rate >= TARGETS["throughput_per_s"],
            "p99_ok": lat["p99"] <= TARGETS["p99_ms"],
            "lost_ok": check["lost"] == 0 and check["objects_missing"] == 0,
            "duplicated_ok": check["duplicated"] == 0 and check["rows_not_acknowledged"] == 0,
            "replays_ok": result["replay_mismatches"] == 0,
        },
        machine={
            "python": platform.python_version(),
            "cpus": cpus,
            "platform": platform.platform(),
            "note": "client, PostgreSQL, moto_server and the ingest workers share these cores",
        },
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(
        f"ingest bench ({args.database}, {args.storage}, {args.workers} workers, {args.stations} stations, offered "
        f"{args.rate:.0f}/s): {rate:.0f} captures/s ({rate / cpus:.0f} per core, {cpus} shared cores); latency p50 "
        f"{lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms; retries "
        f"{result['retries']}, errors {result['errors']}; replays {result['replayed']} "
        f"({result['replay_mismatches']} wrong); CPU ms per capture {result['cpu_ms_per_capture']} -> ingest alone "
        f"{result['ingest_captures_per_core_s']} captures/s per core; "
        f"count check {check}"
    )
    print(f"targets: {result['targets']}; written {args.out}")
    return 0 if all(result["targets"].values()) else 1  # type: ignore[union-attr]


if __name__ == "__main__":
    raise SystemExit(main())
