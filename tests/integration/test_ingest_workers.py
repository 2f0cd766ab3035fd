"""Issue #24: `crux ingest serve --workers N` runs N uvicorn worker processes on one port (PostgreSQL when
CRUX_TEST_POSTGRES_URL is set, else SQLite): concurrent stations' uploads are each stored once, retries with the
same Idempotency-Key are replays, and the service stops cleanly."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import new_bucket

from crux.collect import IngestSettings, add_station, create_db_engine, list_captures, migrate
from crux.collect.ingest_app import AppFactory
from crux.collect.ingest_server import capture_metadata, free_port, make_jpeg
from crux.collect.storage import ImageStore

pytestmark = pytest.mark.integration

POSTGRES_URL = os.environ.get("CRUX_TEST_POSTGRES_URL")


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    if not POSTGRES_URL:
        yield f"sqlite:///{tmp_path}/ingest.db"
        return
    schema = f"crux_workers_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_the_app_factory_survives_the_trip_to_a_spawned_worker() -> None:
    settings = IngestSettings(storage_url="s3://b/c", storage_options={"endpoint_url": "http://127.0.0.1:1"})
    again = pickle.loads(pickle.dumps(AppFactory(settings)))
    assert again.settings == settings and dict(again.settings.storage_options) == {"endpoint_url": "http://127.0.0.1:1"}


@pytest.fixture(params=["folder", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """Where the images go: a folder, or a bucket of the test S3 (written with async s3fs on the workers' loops)."""
    if request.param == "folder":
        return str(tmp_path / "images"), {}
    endpoint = request.getfixturevalue("moto_s3")
    return f"s3://{new_bucket('ingest-workers')}/captures", {"endpoint_url": endpoint}


def test_serve_with_two_workers_stores_each_capture_once(
    database_url: str, storage: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    engine = create_db_engine(database_url)
    migrate(engine)
    tokens = {f"cam-{i}": add_station(engine, f"cam-{i}", "line-a") for i in range(4)}
    params = tmp_path / "params.yaml"
    url, options = storage
    ingest = {"database_url": database_url, "storage_url": url, "storage_options": options}
    params.write_text(json.dumps({"ingest": ingest}))
    port = free_port()
    command = [sys.executable, "-m", "crux.cli", "ingest", "serve", "--workers", "2", "--port", str(port)]
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([*command, "--params", str(params)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        results: dict[str, list[int]] = {}

        def station(name: str) -> None:
            with httpx.Client(timeout=30) as client:
                for i in range(10):
                    for _ in range(2):  # every capture sent twice: the retry must be a replay
                        r = client.post(
                            f"{base}/v1/captures",
                            headers={"Authorization": f"Bearer {tokens[name]}", "Idempotency-Key": f"{name}-{i}"},
                            files={"image": ("c.jpg", make_jpeg(100 * int(name[-1]) + i), "image/jpeg")},
                            data={"metadata": json.dumps(capture_metadata(name, "line-a"))},
                        )
                        results.setdefault(name, []).append(r.status_code)

        threads = [threading.Thread(target=station, args=(name,)) for name in tokens]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert all(codes == [201, 200] * 10 for codes in results.values()), results
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        finally:
            server.kill()
            log.close()
    assert "Started parent process" in (tmp_path / "server.log").read_text()
    rows = list_captures(engine, limit=100)
    assert len(rows) == 40 and len({(r.station, r.idempotency_key) for r in rows}) == 40
    store = ImageStore(url, options)
    assert all(store.exists(r.image_key) for r in rows)
    assert len(store.fs.find(store.root)) == 40  # one object per capture, none for the replays
    engine.dispose()
