"""Shared fixtures: paths to the real datasets and a real Label Studio server for integration tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crux.collect.ingest_server import free_port

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
NEU = DATASETS / "neu-det"
MAGNETIC_TILE = DATASETS / "magnetic-tile"


@pytest.fixture(autouse=True)
def _isolate_library_globals() -> Iterator[None]:
    """Two process-wide caches would leak between tests: DVC's log handler keeps the stdout of the test that
    first used DVC (a closed capture later), and fsspec reuses S3 filesystems bound to an earlier endpoint."""
    import logging
    import sys

    for handler in logging.getLogger("dvc").handlers:
        if isinstance(handler, logging.StreamHandler):
            # Not setStream(): that flushes the old stream, which may be closed already.
            handler.stream = sys.stderr if handler.level >= logging.WARNING else sys.stdout
    if "s3fs" in sys.modules:
        sys.modules["s3fs"].S3FileSystem.clear_instance_cache()
    yield


@pytest.fixture(scope="session")
def neu_dir() -> Path:
    if not NEU.exists():
        pytest.skip(f"{NEU} not present")
    return NEU


@pytest.fixture(scope="session")
def ls_files_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the test server serves local files from; tests put their sources below it."""
    return tmp_path_factory.mktemp("ls-files")


@pytest.fixture(scope="session")
def ls_server(tmp_path_factory: pytest.TempPathFactory, ls_files_root: Path) -> Iterator[tuple]:
    """A real Label Studio from .venv-ls on a free loopback port with a throwaway data dir."""
    from crux.label import server

    venv = Path(os.environ.get("CRUX_LS_VENV") or REPO / ".venv-ls")
    if not (venv / "bin" / "label-studio").exists():
        pytest.fail(f"{venv} has no label-studio; run `make setup`")
    settings = server.ServerSettings(
        venv=venv,
        state_dir=tmp_path_factory.mktemp("ls-state"),
        host="127.0.0.1",
        port=free_port(),
        files_root=ls_files_root,
        # The test S3 (moto) listens on loopback, which Label Studio's SSRF guard blocks by default.
        extra_env={"SSRF_PROTECTION_ENABLED": "false"},
    )
    credentials, _ = server.load_or_create_credentials(settings.credentials_path, {})
    server.start(settings, credentials, os.environ, timeout=300)
    yield settings, credentials
    server.stop(settings)


@pytest.fixture(scope="session")
def ls_client(ls_server: tuple):
    from crux.label.client import connect

    settings, credentials = ls_server
    return connect(settings.url, credentials.token)


def copy_neu_subset(dest: Path, stems: list[str]) -> Path:
    """A NEU-DET-layout folder holding only `stems` (the real files, copied, never modified)."""
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "labels").mkdir(parents=True, exist_ok=True)
    shutil.copy(NEU / "classes.txt", dest / "classes.txt")
    for stem in stems:
        shutil.copy(NEU / "images" / f"{stem}.jpg", dest / "images" / f"{stem}.jpg")
        shutil.copy(NEU / "labels" / f"{stem}.txt", dest / "labels" / f"{stem}.txt")
    return dest


def neu_stems(per_class: int) -> list[str]:
    names = [line.strip() for line in (NEU / "classes.txt").read_text().splitlines() if line.strip()]
    stems = []
    for name in names:
        stems.extend(sorted(p.stem for p in (NEU / "images").glob(f"{name}_*.jpg"))[:per_class])
    return stems


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 endpoint (moto_server) on loopback, one per test session; tests use buckets of their own."""
    port = free_port()
    moto = Path(os.environ.get("CRUX_MOTO_SERVER") or REPO / ".venv" / "bin" / "moto_server")
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto trap: never region_name in s3fs client_kwargs; the default region comes from the environment.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def moto_s3(moto_endpoint: str, s3_credentials: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """The moto endpoint with the AWS variables pointing s3fs and boto at it for this test."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


def new_bucket(prefix: str) -> str:
    """A bucket no other test uses (the moto server lives for the whole session)."""
    import uuid

    import s3fs

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return name
