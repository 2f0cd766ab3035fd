"""A real uvicorn server on a free loopback port, with SQLite (and PostgreSQL when
CRUX_TEST_POSTGRES_URL is set, e.g. postgresql+psycopg://user:pw@127.0.0.1:5432/crux_test)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from crux.collect import IngestSettings, add_station, create_db_engine, list_captures, migrate
from crux.collect.ingest_server import capture_metadata, free_port, make_jpeg, running_server
from crux.collect.storage import ImageStore
from crux.edge.outbox import Outbox

pytestmark = pytest.mark.integration

POSTGRES_URL = os.environ.get("CRUX_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IngestSettings]:
    if request.param == "sqlite":
        yield IngestSettings(database_url=f"sqlite:///{tmp_path}/ingest.db", storage_url=str(tmp_path / "images"))
        return
    if not POSTGRES_URL:
        pytest.skip("set CRUX_TEST_POSTGRES_URL to run the PostgreSQL variant")
    # A fresh schema per test keeps runs independent without needing CREATE DATABASE rights.
    schema = f"crux_test_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    try:
        yield IngestSettings(database_url=url, storage_url=str(tmp_path / "images"))
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _setup(settings: IngestSettings) -> tuple[sa.Engine, str, str]:
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    return engine, add_station(engine, "cam-1", "line-a"), add_station(engine, "cam-2", "line-a")


def _post(base: str, token: str | None, image: bytes, meta: object, **headers: str) -> httpx.Response:
    auth = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.post(
        f"{base}/v1/captures",
        headers={**auth, **headers},
        files={"image": ("c.jpg", image, "image/jpeg")},
        data={"metadata": meta if isinstance(meta, str) else json.dumps(meta)},
        timeout=10,
    )


def test_upload_rejections_and_idempotency_over_http(settings: IngestSettings) -> None:
    engine, token, other = _setup(settings)
    meta = capture_metadata("cam-1", "line-a")
    with running_server(settings) as base:
        assert httpx.get(f"{base}/v1/health").json()["status"] == "ok"
        rejections = {
            "no token": _post(base, None, make_jpeg(1), meta),
            "wrong token": _post(base, "crux_st_nope", make_jpeg(1), meta),
            "other station": _post(base, other, make_jpeg(1), meta),
            "non-image": _post(base, token, b"GIF89a not really", meta),
            "corrupt": _post(base, token, make_jpeg(1)[:300], meta),
            "path": _post(base, token, make_jpeg(1), capture_metadata("cam-1", "../line-a")),
            "malformed": _post(base, token, make_jpeg(1), '{"station": "cam-1",'),
        }
        codes = {k: r.status_code for k, r in rejections.items()}
        assert codes == {
            "no token": 401,
            "wrong token": 401,
            "other station": 403,
            "non-image": 415,
            "corrupt": 422,
            "path": 422,
            "malformed": 422,
        }
        # Oversize without Content-Length (chunked): cut off while streaming.
        head = (
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="c.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        )
        chunks = iter([head, *(b"x" * 65536 for _ in range(settings.max_body_bytes // 65536 + 2))])
        big = httpx.post(
            f"{base}/v1/captures",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "multipart/form-data; boundary=b"},
            content=chunks,
            timeout=10,
        )
        assert big.status_code == 413
        assert list_captures(engine) == []
        assert not any(p.is_file() for p in Path(settings.storage_url).rglob("*"))

        first = _post(base, token, make_jpeg(2), meta, **{"Idempotency-Key": "k-1"})
        again = _post(base, token, make_jpeg(2), meta, **{"Idempotency-Key": "k-1"})
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["id"] == again.json()["id"]
        page = httpx.get(f"{base}/v1/captures", headers={"Authorization": f"Bearer {token}"}).json()
        assert [c["id"] for c in page["items"]] == [first.json()["id"]]
    assert len(list_captures(engine)) == 1
    engine.dispose()


def test_outbox_waits_for_an_unreachable_server_then_drains_in_order(settings: IngestSettings, tmp_path: Path) -> None:
    engine, token, _ = _setup(settings)
    port = free_port()
    box = Outbox(
        tmp_path / "outbox", f"http://127.0.0.1:{port}", token, backoff_initial_s=0.05, backoff_max_s=0.2, timeout_s=5
    )
    with box:
        box.start()
        # The server is down: the edge keeps inspecting and enqueueing.
        for i in range(30):
            meta = capture_metadata("cam-1", "line-a", original_name=f"c{i}.jpg", verdict="ng" if i % 4 else "ok")
            box.enqueue(make_jpeg(i), meta, ng=i % 4 != 0)
        assert not box.drain(0.5)
        assert box.stats.failed_attempts >= 1 and len(box.pending()) == 30
        with running_server(settings, port=port):
            assert box.drain(60), f"{len(box.pending())} captures left"
    rows = list_captures(engine, limit=100)
    assert [r.original_name for r in rows] == [f"c{i}.jpg" for i in range(30)]
    assert len({r.idempotency_key for r in rows}) == 30
    store = ImageStore(settings.storage_url)
    assert all(store.get(r.image_key) == make_jpeg(i) for i, r in enumerate(rows))
    assert box.stats.uploaded == 30 and box.stats.rejected == 0
    engine.dispose()


def test_heartbeats_and_the_console_s_counts_on_this_backend(settings: IngestSettings) -> None:
    """Migration 0002 (heartbeats, console indexes) and the console's reads on SQLite and PostgreSQL alike."""
    import datetime as dt

    from crux.console.sources import IngestReader

    engine, token, _ = _setup(settings)
    with running_server(settings) as base:
        for i, verdict in enumerate(["ng", "ng", "ok"]):
            meta = capture_metadata("cam-1", "line-a", verdict=verdict, captured_at=dt.datetime.now(dt.UTC).isoformat())
            assert _post(base, token, make_jpeg(i), meta, **{"Idempotency-Key": f"hb-{i}"}).status_code == 201
        for frames in (5, 9):
            r = httpx.post(f"{base}/v1/heartbeat", json={"model_version": 3, "frames": frames, "fps": 2.0},
                           headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            assert r.status_code == 204, r.text
    reader = IngestReader(engine, settings.storage_url)
    counts = reader.line_counts(["line-a", "line-b"], dt.datetime.now(dt.UTC) - dt.timedelta(hours=24))
    assert (counts["line-a"].captures_24h, counts["line-a"].ng_24h, counts["line-a"].waiting) == (3, 2, 3)
    assert counts["line-b"].captures_24h == 0
    rows = {s.name: s for s in reader.stations()}
    assert rows["cam-1"].heartbeat.frames == 9 and rows["cam-1"].heartbeat.model_version == 3
    assert rows["cam-2"].heartbeat is None
    assert [c.verdict for c in reader.recent_captures(line="line-a", ng=True)] == ["ng", "ng"]
    engine.dispose()
