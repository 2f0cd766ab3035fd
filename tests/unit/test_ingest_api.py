"""The ingest API in-process (ASGI TestClient): authentication, every rejection, idempotency, listing."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image

from crux.collect import IngestSettings, add_station, create_app, create_db_engine, migrate, revoke_station
from crux.collect.db import captures, stations
from crux.collect.ingest_server import capture_metadata, make_jpeg
from crux.collect.stations import StationError, hash_token


class Env:
    def __init__(self, tmp_path: Path, **limits: Any) -> None:
        self.settings = IngestSettings(
            database_url=f"sqlite:///{tmp_path}/ingest.db", storage_url=str(tmp_path / "images"), **limits
        )
        self.images = tmp_path / "images"
        self.engine = create_db_engine(self.settings.database_url)
        migrate(self.engine)
        self.token = add_station(self.engine, "cam-1", "line-a")
        self.other_token = add_station(self.engine, "cam-2", "line-b")

    def rows(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(captures)).scalar_one())

    def blobs(self) -> list[Path]:
        return [p for p in self.images.rglob("*") if p.is_file()]

    def nothing_stored(self) -> bool:
        return self.rows() == 0 and self.blobs() == []


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture
def client(env: Env) -> Iterator[TestClient]:
    with TestClient(create_app(env.settings)) as c:
        yield c


def post(
    client: TestClient,
    token: str | None,
    image: bytes | None = None,
    meta: Any = None,
    *,
    key: str | None = None,
    content_type: str = "image/jpeg",
    filename: str = "c.jpg",
) -> Any:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    image = make_jpeg(1) if image is None else image
    meta = capture_metadata("cam-1", "line-a") if meta is None else meta
    body = meta if isinstance(meta, str) else json.dumps(meta)
    return client.post(
        "/v1/captures", headers=headers, files={"image": (filename, image, content_type)}, data={"metadata": body}
    )


def test_upload_stores_row_and_blob(env: Env, client: TestClient) -> None:
    image = make_jpeg(7)
    r = post(client, env.token, image)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["replayed"] is False
    assert (env.images / body["image_key"]).read_bytes() == image
    assert r.headers["location"] == f"/v1/captures/{body['id']}"
    got = client.get(f"/v1/captures/{body['id']}", headers={"Authorization": f"Bearer {env.token}"}).json()
    assert (got["station"], got["line"], got["width"], got["height"]) == ("cam-1", "line-a", 200, 200)
    assert got["boxes"] == [{"class": "scratches", "box": [10.0, 20.0, 60.0, 90.0], "score": 0.81}]
    assert got["captured_at"] == "2025-03-01T08:00:00Z"


def test_only_token_hash_is_stored(env: Env) -> None:
    with env.engine.connect() as conn:
        stored = conn.execute(sa.select(stations.c.token_sha256).where(stations.c.name == "cam-1")).scalar_one()
    assert stored == hash_token(env.token) and env.token not in stored


@pytest.mark.parametrize(
    ("token", "status"),
    [(None, 401), ("", 401), ("crux_st_wrong", 401), ("other", 403)],
    ids=["no-token", "empty", "wrong-token", "other-station"],
)
def test_auth_rejections_store_nothing(env: Env, client: TestClient, token: str | None, status: int) -> None:
    token = env.other_token if token == "other" else token
    r = post(client, token)
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    assert env.nothing_stored()


def test_basic_scheme_and_line_mismatch_rejected(env: Env, client: TestClient) -> None:
    r = client.post("/v1/captures", headers={"Authorization": "Basic abc"}, files={"image": ("a", b"x")})
    assert r.status_code == 401
    r = post(client, env.token, meta=capture_metadata("cam-1", "line-b"))
    assert r.status_code == 403 and "line-a" in r.json()["detail"]
    assert env.nothing_stored()


def test_revoked_token_is_refused_and_readd_gives_new_token(env: Env, client: TestClient) -> None:
    revoke_station(env.engine, "cam-1")
    assert post(client, env.token).status_code == 401
    with pytest.raises(StationError, match="already revoked"):
        revoke_station(env.engine, "cam-1")
    new = add_station(env.engine, "cam-1", "line-a")
    assert new != env.token
    assert post(client, env.token).status_code == 401
    assert post(client, new).status_code == 201
    with pytest.raises(StationError, match="already exists"):
        add_station(env.engine, "cam-1", "line-a")
    with pytest.raises(ValueError, match="not a valid name"):
        add_station(env.engine, "../etc", "line-a")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (20, 20)).save(buf, "PNG")
    return buf.getvalue()


BAD_UPLOADS: dict[str, tuple[dict[str, Any], int, str]] = {
    "non-image": ({"image": b"hello, not an image" * 10}, 415, "not a valid JPEG"),
    "corrupt-jpeg": ({"image": make_jpeg(3)[:400]}, 422, "could not be decoded"),
    "png-declared-jpeg": ({"image": _png()}, 415, "not a valid JPEG"),
    "gif-content-type": ({"content_type": "image/gif"}, 415, "not accepted"),
    "text-content-type": ({"content_type": "text/plain"}, 415, "not accepted"),
    "path-in-filename": ({"filename": "../../etc/passwd.jpg"}, 422, "path"),
    "backslash-filename": ({"filename": "..\\x.jpg"}, 422, "path"),
    "empty-image": ({"image": b""}, 422, "image"),
    "metadata-not-json": ({"meta": "{not json"}, 422, "json"),
    "metadata-array": ({"meta": "[]"}, 422, "metadata"),
    "metadata-unknown-key": ({"meta": capture_metadata("cam-1", "line-a", shell="rm -rf")}, 422, "shell"),
    "station-path": ({"meta": capture_metadata("../cam-1", "line-a")}, 422, "not a valid name"),
    "line-slash": ({"meta": capture_metadata("cam-1", "line/a")}, 422, "not a valid name"),
    "original-name-path": ({"meta": capture_metadata("cam-1", "line-a", original_name="a/b.jpg")}, 422, "name"),
    "naive-time": ({"meta": capture_metadata("cam-1", "line-a", captured_at="2025-03-01T08:00:00")}, 422, "timezone"),
    "score-above-1": ({"meta": capture_metadata("cam-1", "line-a", scores={"a": 1.5})}, 422, "less than or equal"),
    "nan-score": (
        {"meta": '{"station":"cam-1","line":"line-a","captured_at":"2025-01-01T00:00:00Z","scores":{"a":NaN}}'},
        422,
        "metadata",
    ),
    "box-reversed": (
        {"meta": capture_metadata("cam-1", "line-a", boxes=[{"class": "a", "box": [50, 50, 10, 10]}])},
        422,
        "x1 < x2",
    ),
    "box-outside": (
        {"meta": capture_metadata("cam-1", "line-a", boxes=[{"class": "a", "box": [0, 0, 500, 10]}])},
        422,
        "outside",
    ),
    "bad-verdict": ({"meta": capture_metadata("cam-1", "line-a", verdict="maybe")}, 422, "verdict"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_input_rejected_and_nothing_stored(env: Env, client: TestClient, case: str) -> None:
    args, status, message = BAD_UPLOADS[case]
    r = post(
        client,
        env.token,
        args.get("image"),
        args.get("meta"),
        content_type=args.get("content_type", "image/jpeg"),
        filename=args.get("filename", "c.jpg"),
    )
    assert r.status_code == status, r.text
    assert message.lower() in json.dumps(r.json()).lower()
    assert env.nothing_stored()


def test_missing_parts_and_wrong_body_type(env: Env, client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {env.token}"}
    meta_only = {"metadata": (None, json.dumps(capture_metadata("cam-1", "line-a")))}
    r = client.post("/v1/captures", headers=auth, files=meta_only)
    assert r.status_code == 422 and "image" in r.json()["detail"]
    r = client.post("/v1/captures", headers=auth, files={"image": ("c.jpg", make_jpeg(1), "image/jpeg")})
    assert r.status_code == 422 and "metadata" in r.json()["detail"]
    r = client.post("/v1/captures", headers=auth, json={"station": "cam-1"})
    assert r.status_code == 415
    r = client.post(
        "/v1/captures", headers=auth, files={"image": ("c.jpg", make_jpeg(1), "image/jpeg"), "extra": ("x", b"x")}
    )
    assert r.status_code in (400, 422)
    assert env.nothing_stored()


def _noise_jpeg(size: int) -> bytes:
    # Noise does not compress: the file size is predictable from the pixel count.
    buf = io.BytesIO()
    Image.frombytes("RGB", (size, size), os.urandom(size * size * 3)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_size_limits(tmp_path: Path) -> None:
    env = Env(tmp_path, max_image_bytes=4000, max_metadata_bytes=4096, max_pixels=100 * 100)
    with TestClient(create_app(env.settings)) as client:
        big = _noise_jpeg(300)
        assert len(big) > env.settings.max_body_bytes
        r = post(client, env.token, big)
        assert r.status_code == 413 and "exceeds" in r.json()["detail"]
        medium = _noise_jpeg(80)
        assert 4000 < len(medium) < env.settings.max_body_bytes
        r = post(client, env.token, medium)
        assert r.status_code == 413 and "image exceeds" in r.json()["detail"]
        r = post(client, env.token, make_jpeg(3, size=120, quality=30))  # small file, too many pixels
        assert r.status_code == 413 and "pixels" in r.json()["detail"]
        r = post(client, env.token, meta=capture_metadata("cam-1", "line-a", model_version="v" * 100_000))
        assert r.status_code in (400, 413)
        assert env.nothing_stored()


def test_idempotent_retry_lands_once(env: Env, client: TestClient) -> None:
    first = post(client, env.token, make_jpeg(5), key="retry-1")
    again = post(client, env.token, make_jpeg(5), key="retry-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == {**first.json(), "replayed": True}
    assert env.rows() == 1
    # The same key with other bytes is a client bug, not a retry.
    conflict = post(client, env.token, make_jpeg(6), key="retry-1")
    assert conflict.status_code == 409
    # Keys are per station: another station may use the same key.
    other = post(client, env.other_token, make_jpeg(5), capture_metadata("cam-2", "line-b"), key="retry-1")
    assert other.status_code == 201
    assert env.rows() == 2
    assert post(client, env.token, key="bad key/../x").status_code == 400


def test_same_image_twice_without_key_is_two_captures_one_blob(env: Env, client: TestClient) -> None:
    a, b = post(client, env.token, make_jpeg(9)), post(client, env.token, make_jpeg(9))
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"]
    assert env.rows() == 2 and len(env.blobs()) == 1


def test_list_filters_and_paging(env: Env, client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {env.token}"}
    for i in range(5):
        meta = capture_metadata("cam-1", "line-a", captured_at=f"2025-03-0{i + 1}T00:00:00+01:00")
        assert post(client, env.token, make_jpeg(i), meta).status_code == 201
    post(client, env.other_token, make_jpeg(99), capture_metadata("cam-2", "line-b"))
    page = client.get("/v1/captures", headers=auth, params={"limit": 2}).json()
    assert [c["id"] for c in page["items"]] == [1, 2] and page["next_after"] == 2
    page = client.get("/v1/captures", headers=auth, params={"limit": 2, "after": 4}).json()
    assert [c["id"] for c in page["items"]] == [5] and page["next_after"] is None
    since = client.get("/v1/captures", headers=auth, params={"since": "2025-03-03T00:00:00+01:00"}).json()
    assert [c["id"] for c in since["items"]] == [3, 4, 5]
    assert since["items"][0]["captured_at"] == "2025-03-02T23:00:00Z"
    assert client.get("/v1/captures", headers=auth, params={"line": "line-b"}).json()["items"] == []
    assert len(client.get("/v1/captures", headers=auth, params={"labeled": False}).json()["items"]) == 5
    assert client.get("/v1/captures", headers=auth, params={"labeled": True}).json()["items"] == []
    # A station token lists only its own station.
    assert client.get("/v1/captures", headers=auth, params={"station": "cam-2"}).status_code == 403
    assert client.get("/v1/captures/6", headers=auth).status_code == 404
    assert client.get("/v1/captures").status_code == 401
    assert client.get("/v1/captures", headers=auth, params={"limit": 100000}).status_code == 422
    assert client.get("/v1/captures", headers=auth, params={"since": "2025-03-03T00:00:00"}).status_code == 422


def test_health_and_openapi(client: TestClient) -> None:
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["schema_revision"] == "0004"
    spec = client.get("/openapi.json").json()
    assert {"/v1/captures", "/v1/health", "/v1/heartbeat"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/captures"]["post"]["requestBody"]["content"]
    assert "captured_at" in spec["components"]["schemas"]["CaptureMetadata"]["properties"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower() and "https://" not in docs.text
    assert client.get("/_swagger/swagger-ui-bundle.js").status_code == 200  # served from the package


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"verdict": "ok"}, "verdict"),
        ({"scores": {"scratches": 0.5, "crazing": 0.5}}, "scores"),
        ({"captured_at": "2025-03-01T08:00:01Z"}, "captured_at"),
        ({"boxes": []}, "boxes"),
        ({"model_version": "neu-det-v4"}, "model_version"),
    ],
)
def test_replay_with_different_metadata_is_a_conflict_and_keeps_the_first(
    env: Env, client: TestClient, change: dict, field: str
) -> None:
    first = post(client, env.token, make_jpeg(5), key="retry-2")
    assert first.status_code == 201
    # The same instant in another offset is the same metadata: still a replay.
    same = capture_metadata("cam-1", "line-a", captured_at="2025-03-01T09:00:00+01:00")
    assert post(client, env.token, make_jpeg(5), same, key="retry-2").status_code == 200
    conflict = post(client, env.token, make_jpeg(5), capture_metadata("cam-1", "line-a", **change), key="retry-2")
    assert conflict.status_code == 409, conflict.json()
    assert "different metadata" in conflict.json()["detail"] and field in conflict.json()["detail"]
    assert env.rows() == 1
    stored = client.get(f"/v1/captures/{first.json()['id']}", headers={"Authorization": f"Bearer {env.token}"})
    assert stored.json()["verdict"] == "ng" and stored.json()["model_version"] == "neu-det-v3"


def test_decompression_bomb_upload_is_413_and_stores_nothing(env: Env, client: TestClient) -> None:
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = struct.pack(">II", 20000, 20000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    r = post(client, env.token, bytes(data), content_type="image/png", filename="c.png")
    assert r.status_code == 413 and "pixel" in r.json()["detail"]
    assert env.nothing_stored()


# Issue #23: out-of-range and non-finite values are 4xx, never a 500 (SQLite overflow, NaN in the error response).
@pytest.mark.parametrize(
    "body",
    [
        '{"fps": NaN}',
        '{"fps": Infinity}',
        '{"latency_p50_ms": -Infinity}',
        '{"frames": 1e400}',
        '{"model_version": 1234567890123456789012345678901}',
        '{"outbox_bytes": 99999999999999999999}',
    ],
)
def test_heartbeat_values_out_of_range_are_422(env: Env, client: TestClient, body: str) -> None:
    r = client.post(
        "/v1/heartbeat",
        content=body,
        headers={"Authorization": f"Bearer {env.token}", "content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    json.loads(r.text)  # strict JSON: the rejected NaN is not echoed back


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/captures/12345678901234567890", 422),
        ("/v1/captures/99999999999999999999999999999", 422),
        ("/v1/captures/-1", 422),
        ("/v1/captures/9223372036854775807", 404),
        ("/v1/captures?after=99999999999999999999999", 422),
    ],
)
def test_ids_beyond_the_database_integer_are_4xx(env: Env, client: TestClient, path: str, status: int) -> None:
    assert client.get(path, headers={"Authorization": f"Bearer {env.token}"}).status_code == status


@pytest.mark.parametrize("mask", ["Q", "0Q", "z", "\u00e9"])
def test_a_mask_rle_cut_mid_value_or_foreign_is_422(env: Env, client: TestClient, mask: str) -> None:
    meta = capture_metadata("cam-1", "line-a")
    meta["boxes"] = [{"class": "scratch", "box": [1, 1, 5, 5], "score": 0.5, "mask": mask}]
    r = post(client, env.token, meta=meta)
    assert r.status_code == 422, r.text
    assert env.nothing_stored()
