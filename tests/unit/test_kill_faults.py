"""Issue #14 fault injection: a snapshot or a publish SIGKILLed half-way loses nothing. The previous dataset and
the previous production release stay whole, and the next run cleans up and completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from edge_support import exported

from crux.dataset.manifest import read_manifest
from crux.dataset.snapshot import build_dataset
from crux.dataset.store import make_fetcher
from crux.dataset.synthetic import Ann, box, image_bytes, local_url, ls_task, write_export, write_image
from crux.publish import GateConfig, fetch_release, publish
from crux.signing import generate_private_key, load_private_key, private_key_pem

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
        from crux.dataset.snapshot import build_dataset
        from crux.dataset.store import make_fetcher
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
        import crux.publish as p
        from crux.signing import load_private_key
        real = p._put_file
        def slow(fs, local, path):
            real(fs, local, path)
            time.sleep(30)  # killed here: a file of version 2 is uploaded, its manifest and the pointer are not
        p._put_file = slow
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
