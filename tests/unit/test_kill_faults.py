"""Issue #14 fault injection: a snapshot or a publish SIGKILLed half-way loses nothing. The previous dataset and
the previous production release stay whole, and the next run cleans up and completes."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from edge_support import exported
from kill_support import run_and_kill

from crux.data.manifest import read_manifest
from crux.data.snapshot import build_dataset
from crux.data.store import make_fetcher
from crux.data.synthetic_exports import Ann, box, image_bytes, local_url, ls_task, write_export, write_image
from crux.ship.fetch import fetch_release
from crux.ship.gate import GateConfig
from crux.ship.publish import publish
from crux.ship.signing import generate_private_key, load_private_key, private_key_pem

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
REPO = Path(__file__).resolve().parents[2]
CLASSES = ("crazing", "patches", "scratches")


def _spawn(script: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"finished before the fault: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the fault point was never reached")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_snapshot_killed_mid_build_keeps_the_previous_version_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    files, data, export = tmp_path / "files", tmp_path / "repo" / "data", tmp_path / "export.json"
    tasks = []
    for i in range(1, 13):
        rel = f"imgs/{i}.jpg"
        sha = write_image(files, rel, image_bytes(i))
        tasks.append(ls_task(i, local_url(rel), sha256=sha, original_name=f"{i}.jpg", width=64, height=48,
                             annotations=[Ann([box("scratches", 1, 1, 10, 10)])]))  # fmt: skip
    write_export(export, tasks[:4])
    args = (export, data, "detect", CLASSES, None, make_fetcher(files_root=files), (0.6, 0.2, 0.2))
    build_dataset(*args, previous_dir=data, project="p", workers=1)
    before = sorted(i.sha256 for i in read_manifest(data / "manifest.jsonl"))
    write_export(export, tasks)  # 8 new images, fetched slowly by the killed run
    proc = _spawn(f"""
        import time
        from pathlib import Path
        from crux.data.snapshot import build_dataset
        from crux.data.store import make_fetcher
        fetch = make_fetcher(files_root=Path({str(files)!r}))
        def slow(url):
            time.sleep(0.3)
            return fetch(url)
        build_dataset(Path({str(export)!r}), Path({str(data)!r}), "detect", {CLASSES!r}, None, slow, (0.6, 0.2, 0.2),
                      previous_dir=Path({str(data)!r}), project="p", workers=1)
    """)
    _kill_when(proc, lambda: any(p.rglob("*.jpg") for p in data.parent.glob(".data.building-*")))
    assert list(data.parent.glob(".data.building-*"))  # the killed run's work folder is there
    assert sorted(i.sha256 for i in read_manifest(data / "manifest.jsonl")) == before  # untouched
    summary = build_dataset(*args, previous_dir=data, project="p", workers=1)
    assert not list(data.parent.glob(".data.*")) and summary.out_dir == data
    assert len(read_manifest(data / "manifest.jsonl")) == 12


def test_publish_killed_mid_upload_leaves_production_whole_and_the_next_publish_goes_through(tmp_path: Path) -> None:
    key = generate_private_key()
    (tmp_path / "key.pem").write_bytes(private_key_pem(key))
    exports = tmp_path / "exports"
    v1, v2 = exported(exports, "classify", seed=0), exported(exports, "classify", seed=1)
    remote = tmp_path / "remote"
    publish(str(remote), "line-a", v1, key, GateConfig())
    proc = _spawn(f"""
        import time
        from pathlib import Path
        import crux.ship.publish as p
        from crux.ship.signing import load_private_key
        real = p.put_file
        def slow(fs, local, path):
            real(fs, local, path)
            time.sleep(30)  # killed here: a file of version 2 is uploaded, its manifest and the pointer are not
        p.put_file = slow
        key = load_private_key(Path({str(tmp_path / "key.pem")!r}).read_bytes())
        p.publish({str(remote)!r}, "line-a", Path({str(v2)!r}), key, p.GateConfig())
    """)
    _kill_when(proc, lambda: (remote / "line-a" / "000002").is_dir() and any((remote / "line-a" / "000002").iterdir()))
    assert not (remote / "line-a" / "000002" / "manifest.json").exists()
    release = fetch_release(str(remote / "line-a"), tmp_path / "edge", [key.public_key()], installed=None)
    assert release is not None and release.version == 1  # the edge still gets the complete v1
    again = publish(str(remote), "line-a", v2, load_private_key((tmp_path / "key.pem").read_bytes()), GateConfig())
    newer = fetch_release(str(remote / "line-a"), tmp_path / "edge", [key.public_key()], installed=release.pointer)
    assert newer is not None and newer.version == again.version > 1


# ---------------------------------------------------------------------------------------------------------------
# The seeded kill-point suite: each command is SIGKILLed at `random.Random(seed).uniform(0, t_full)` seconds after
# it starts its work (t_full: one unkilled run, measured), the invariants are checked after each kill, then the
# command is run again to completion. The short version (3 points per command) runs by default; the long one
# (50 points per command) is in the slow set. Figures go to <pytest basetemp>/kill_faults.json (printed with -s).

SHORT, LONG = 3, 50
POINTS = [pytest.param(SHORT, id="short"), pytest.param(LONG, id="long", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def kill_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    report: dict[str, Any] = {}
    yield report
    if report:
        out = tmp_path_factory.getbasetemp() / "kill_faults.json"
        out.write_text(json.dumps(report, indent=2, sort_keys=True))
        print(f"\nkill-point suite ({out}):\n{json.dumps(report, indent=2, sort_keys=True)}")


@dataclass
class KillStats:
    command: str
    points: int
    t_full_s: float = 0.0
    killed: int = 0  # points where the SIGKILL landed while the command was still running
    finished_first: int = 0  # points drawn after the command had already finished
    violations: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.violations.append(what)

    def record(self, report: dict[str, Any]) -> None:
        report[f"{self.command}[{self.points}]"] = {
            "kill_points": self.points,
            "killed_mid_run": self.killed,
            "finished_before_the_kill": self.finished_first,
            "t_full_s": round(self.t_full_s, 3),
            "invariant_violations": len(self.violations),
            "violations": self.violations[:20],
            **self.extra,
        }


def _go_script(setup: str, work: str) -> str:
    """A child that sets up (imports, inputs), says `go` on stdout, then does the work the parent kills."""
    body = textwrap.indent(textwrap.dedent(work).strip(), "    ")
    go = "import sys\nsys.stdout.write('go\\n')\nsys.stdout.flush()"
    return f"{textwrap.dedent(setup).strip()}\n{go}\nif True:\n{body}\n"


def _tree(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256): byte identity of a whole folder."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("points", POINTS)
def test_snapshot_killed_at_seeded_points(tmp_path: Path, points: int, kill_report: dict[str, Any]) -> None:
    files, export = tmp_path / "files", tmp_path / "export.json"
    tasks = []
    for i in range(1, 13):
        rel = f"imgs/{i}.jpg"
        sha = write_image(files, rel, image_bytes(i))
        tasks.append(ls_task(i, local_url(rel), sha256=sha, original_name=f"{i}.jpg", width=64, height=48,
                             annotations=[Ann([box("scratches", 1, 1, 10, 10)])]))  # fmt: skip
    base = tmp_path / "base" / "data"
    write_export(export, tasks[:4])
    build_dataset(export, base, "detect", CLASSES, None, make_fetcher(files_root=files), (0.6, 0.2, 0.2),
                  previous_dir=base, project="p", workers=1)  # fmt: skip
    old = _tree(base)
    write_export(export, tasks)
    reference = tmp_path / "reference" / "data"
    shutil.copytree(base, reference)
    build_dataset(export, reference, "detect", CLASSES, None, make_fetcher(files_root=files), (0.6, 0.2, 0.2),
                  previous_dir=reference, project="p", workers=1)  # fmt: skip
    new = _tree(reference)
    assert new != old

    def script(data: Path) -> str:
        return _go_script(
            f"""
            import time
            from pathlib import Path
            from crux.data.snapshot import build_dataset
            from crux.data.store import make_fetcher
            fetch = make_fetcher(files_root=Path({str(files)!r}))
            def slow(url):
                time.sleep(0.02)  # a fetch over the network: spreads the kill points over the whole build
                return fetch(url)
            """,
            f"""
            build_dataset(Path({str(export)!r}), Path({str(data)!r}), "detect", {CLASSES!r}, None, slow,
                          (0.6, 0.2, 0.2), previous_dir=Path({str(data)!r}), project="p", workers=1)
            """,
        )

    stats = KillStats("snapshot", points)
    probe = tmp_path / "probe" / "data"
    shutil.copytree(base, probe)
    _, stats.t_full_s = run_and_kill(script(probe), None)
    assert _tree(probe) == new  # the child's build is the reference build
    rng = random.Random(f"snapshot-{points}")
    for point in range(points):
        data = tmp_path / f"p{point}" / "data"
        shutil.copytree(base, data)
        finished, _ = run_and_kill(script(data), rng.uniform(0, stats.t_full_s))
        stats.killed += not finished
        stats.finished_first += finished
        live = _tree(data)
        stats.check(live in (old, new), f"point {point}: the live dataset is neither the old nor the new version")
        build_dataset(export, data, "detect", CLASSES, None, make_fetcher(files_root=files), (0.6, 0.2, 0.2),
                      previous_dir=data, project="p", workers=1)  # fmt: skip
        stats.check(_tree(data) == new, f"point {point}: the next run did not give the new version")
        leftovers = [p.name for p in data.parent.iterdir() if p.name != "data"]
        stats.check(not leftovers, f"point {point}: leftovers after the next run: {leftovers}")
        shutil.rmtree(data.parent)
    stats.record(kill_report)
    assert stats.killed >= 1 and not stats.violations, stats.violations


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A signing key, two exports and a folder remote whose production is version 1 of line-a."""
    root = tmp_path_factory.mktemp("releases")
    key = generate_private_key()
    (root / "key.pem").write_bytes(private_key_pem(key))
    v1, v2 = exported(root / "exports", "classify", seed=0), exported(root / "exports", "classify", seed=1)
    remote = root / "remote"
    publish(str(remote), "line-a", v1, key, GateConfig())
    return {"root": root, "key": key, "v1": v1, "v2": v2, "remote": remote}


def _release_files(export_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in export_dir.iterdir() if p.is_file()}


@pytest.mark.parametrize("points", POINTS)
def test_publish_killed_at_seeded_points(
    tmp_path: Path, points: int, releases: dict[str, Any], kill_report: dict[str, Any]
) -> None:
    key, v1, v2 = releases["key"], releases["v1"], releases["v2"]
    keys = [key.public_key()]
    v1_files, v2_files = _release_files(v1), _release_files(v2)

    def script(remote: Path) -> str:
        return _go_script(
            f"""
            from pathlib import Path
            import crux.ship.publish as p
            from crux.ship.signing import load_private_key
            key = load_private_key(Path({str(releases["root"] / "key.pem")!r}).read_bytes())
            """,
            f"p.publish({str(remote)!r}, 'line-a', Path({str(v2)!r}), key, p.GateConfig())",
        )

    def served(remote: Path, edge: Path) -> tuple[int, dict[str, str]] | None:
        """The release current.json names, fetched and verified as an edge does; None when it does not verify."""
        shutil.rmtree(edge, ignore_errors=True)
        try:
            release = fetch_release(str(remote / "line-a"), edge, keys, installed=None)
        except Exception:  # any failure to serve a verified release is the violation
            return None
        assert release is not None
        got = {
            name: hashlib.sha256((release.path / name).read_bytes()).hexdigest()
            for name in v1_files
            if (release.path / name).is_file()
        }
        shutil.rmtree(edge)
        return release.version, got

    stats = KillStats("publish", points)
    probe = tmp_path / "probe"
    shutil.copytree(releases["remote"], probe)
    _, stats.t_full_s = run_and_kill(script(probe), None)
    assert served(probe, tmp_path / "edge") == (2, v2_files)
    rng = random.Random(f"publish-{points}")
    for point in range(points):
        remote = tmp_path / f"remote{point}"
        shutil.copytree(releases["remote"], remote)
        finished, _ = run_and_kill(script(remote), rng.uniform(0, stats.t_full_s))
        stats.killed += not finished
        stats.finished_first += finished
        now = served(remote, tmp_path / "edge")
        stats.check(now in ((1, v1_files), (2, v2_files)), f"point {point}: current.json serves {now}")
        if now is not None and now[0] == 1:
            publish(str(remote), "line-a", v2, key, GateConfig())
            after = served(remote, tmp_path / "edge")
            stats.check(after is not None and after[1] == v2_files, f"point {point}: the next publish serves {after}")
        shutil.rmtree(remote)
    stats.record(kill_report)
    assert stats.killed >= 1 and not stats.violations, stats.violations


@pytest.mark.parametrize("points", POINTS)
def test_edge_killed_at_seeded_points_resumes_with_a_verified_model(
    tmp_path: Path, points: int, releases: dict[str, Any], kill_report: dict[str, Any]
) -> None:
    from crux.edge.runtime import EdgeConfig, EdgeRuntime

    key = releases["key"]
    remote = tmp_path / "remote"
    shutil.copytree(releases["remote"], remote)
    base = tmp_path / "base-state"
    first = EdgeRuntime(str(remote / "line-a"), "line-a", EdgeConfig(), [key.public_key()], base)
    assert first.check_update() and first.running is not None and first.running.version == 1
    publish(str(remote), "line-a", releases["v2"], key, GateConfig())  # the update the killed edge installs

    def script(state: Path) -> str:
        return _go_script(
            f"""
            from pathlib import Path
            from crux.edge.runtime import EdgeConfig, EdgeRuntime
            from crux.ship.signing import load_private_key
            pub = load_private_key(Path({str(releases["root"] / "key.pem")!r}).read_bytes()).public_key()
            rt = EdgeRuntime({str(remote / "line-a")!r}, "line-a", EdgeConfig(), [pub], Path({str(state)!r}))
            assert rt.resume() and rt.running.version == 1
            """,
            "assert rt.check_update() and rt.running.version == 2",
        )

    stats = KillStats("edge", points)
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    _, stats.t_full_s = run_and_kill(script(probe), None)
    rng = random.Random(f"edge-{points}")
    resume_s: list[float] = []
    for point in range(points):
        state = tmp_path / f"state{point}"
        shutil.copytree(base, state)
        finished, _ = run_and_kill(script(state), rng.uniform(0, stats.t_full_s))
        stats.killed += not finished
        stats.finished_first += finished
        t0 = time.perf_counter()
        rt = EdgeRuntime(str(remote / "line-a"), "line-a", EdgeConfig(), [key.public_key()], state)
        resumed = rt.resume()
        resume_s.append(time.perf_counter() - t0)
        version = rt.running.version if rt.running is not None else None
        stats.check(resumed and version in (1, 2), f"point {point}: resumed={resumed}, version {version}")
        stats.check(not list((state / "models").glob(".incoming-*")), f"point {point}: a partial download is left")
        rt.check_update()
        version = rt.running.version if rt.running is not None else None
        stats.check(version == 2, f"point {point}: after the next poll the edge runs version {version}")
        shutil.rmtree(state)
    # A restarted edge process: imports, EdgeRuntime, resume() (verification, ONNX load, warm-up), exit.
    shutil.copytree(base, tmp_path / "cold")
    _, cold_s = run_and_kill(
        _go_script(
            "import time",
            f"""
            from pathlib import Path
            from crux.edge.runtime import EdgeConfig, EdgeRuntime
            from crux.ship.signing import load_private_key
            pub = load_private_key(Path({str(releases["root"] / "key.pem")!r}).read_bytes()).public_key()
            state = Path({str(tmp_path / "cold")!r})
            rt = EdgeRuntime({str(remote / "line-a")!r}, "line-a", EdgeConfig(), [pub], state)
            assert rt.resume()
            """,
        ),
        None,
    )
    stats.extra["cold_resume_s"] = round(cold_s, 3)
    resume_s.sort()
    stats.extra["resume_s"] = {
        "median": round(resume_s[len(resume_s) // 2], 4),
        "max": round(resume_s[-1], 4),
        "note": "in-process EdgeRuntime + resume(): clean-up, re-verification, ONNX load, warm-up (cold: + imports)",
    }
    stats.record(kill_report)
    assert stats.killed >= 1 and not stats.violations, stats.violations


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ingest server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("ingest server did not start")


@pytest.mark.parametrize("points", POINTS)
def test_ingest_server_killed_at_seeded_points_loses_and_duplicates_no_capture(
    tmp_path: Path, points: int, kill_report: dict[str, Any]
) -> None:
    import httpx

    from crux.collect import IngestSettings, add_station, create_db_engine, list_captures, migrate
    from crux.collect.ingest_server import capture_metadata, free_port, make_jpeg
    from crux.collect.storage import ImageStore

    settings = IngestSettings(database_url=f"sqlite:///{tmp_path}/ingest.db", storage_url=str(tmp_path / "images"))
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    token = add_station(engine, "cam-1", "line-a")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_script = textwrap.dedent(f"""
        import uvicorn
        from crux.collect import IngestSettings
        from crux.collect.ingest_app import create_app
        settings = IngestSettings(database_url={settings.database_url!r}, storage_url={settings.storage_url!r})
        uvicorn.run(create_app(settings), host="127.0.0.1", port={port}, log_level="warning", access_log=False)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    per_batch = 8
    images: dict[str, bytes] = {}

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", server_script], env=env, stderr=subprocess.PIPE)
        _wait_healthy(base, proc)
        return proc

    def send(batch: int, accepted: set[str], stop_on_error: bool) -> int:
        """Upload the batch's captures in order; the keys the server acknowledged go to `accepted`."""
        errors = 0
        with httpx.Client(timeout=10) as client:
            for j in range(per_batch):
                k = f"b{batch}-{j}"
                images.setdefault(k, make_jpeg(batch * per_batch + j, size=96))
                meta = capture_metadata("cam-1", "line-a", original_name=f"{k}.jpg")
                try:
                    r = client.post(
                        f"{base}/v1/captures",
                        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": k},
                        files={"image": ("c.jpg", images[k], "image/jpeg")},
                        data={"metadata": json.dumps(meta)},
                    )
                except httpx.HTTPError:
                    errors += 1
                    if stop_on_error:
                        return errors
                    continue
                if r.status_code in (200, 201):
                    accepted.add(k)
                else:
                    errors += 1
        return errors

    stats = KillStats("ingest", points)
    accepted: set[str] = set()
    server = start()
    assert send(-2, accepted, True) == 0  # warm-up: the first batch pays for connections and imports
    t0 = time.monotonic()
    assert send(-1, accepted, True) == 0
    stats.t_full_s = time.monotonic() - t0
    rng = random.Random(f"ingest-{points}")
    restarts: list[float] = []
    try:
        for point in range(points):
            batch_accepted: set[str] = set()
            sender = threading.Thread(target=send, args=(point, batch_accepted, True))
            sender.start()
            time.sleep(rng.uniform(0, stats.t_full_s))
            finished = not sender.is_alive()
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
            server.stderr.close()  # type: ignore[union-attr]
            sender.join(30)
            stats.killed += not finished
            stats.finished_first += finished
            accepted |= batch_accepted
            t1 = time.monotonic()
            server = start()
            restarts.append(time.monotonic() - t1)
            resent: set[str] = set()
            errors = send(point, resent, False)  # the client re-sends the whole batch with the same keys
            stats.check(errors == 0 and len(resent) == per_batch, f"point {point}: re-send errors {errors}")
            accepted |= resent
    finally:
        server.kill()
        server.wait()
        server.stderr.close()  # type: ignore[union-attr]
    rows = list_captures(engine, limit=100_000)
    keys = [r.idempotency_key for r in rows]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    stats.check(not dupes, f"duplicated captures: {dupes}")
    lost = sorted(accepted - set(keys))
    stats.check(not lost, f"lost accepted captures: {lost}")
    store = ImageStore(settings.storage_url)
    wrong = [r.idempotency_key for r in rows if store.get(r.image_key) != images.get(str(r.idempotency_key))]
    stats.check(not wrong, f"stored bytes differ: {wrong}")
    referenced = {store.path(r.image_key) for r in rows}
    blobs = {p.as_posix() for p in Path(settings.storage_url).rglob("*") if p.is_file()}
    stats.extra.update(
        captures_accepted=len(accepted),
        rows=len(rows),
        restart_s=round(max(restarts), 3),
        # Files a killed server left in the store that no row names (half-written temporaries): garbage, not loss.
        unreferenced_files=len(blobs - referenced),
    )
    engine.dispose()
    stats.record(kill_report)
    assert stats.killed >= 1 and not stats.violations, stats.violations
