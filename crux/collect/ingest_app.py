"""The ingest HTTP service: `create_app(settings)` returns a FastAPI app; `serve` runs it with uvicorn.

Every rejection happens before anything is written: authentication, then the request size, the
metadata, the image declared type, its decoded format, pixel count and full decode. Only then is the
blob written (content-addressed, so a later failure leaves at most an unreferenced duplicate-free
blob) and the row inserted.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the endpoint annotations, some of which
# close over `settings` inside create_app. Storage, decoding and authentication are module functions taking their
# dependencies, so they are testable without HTTP; create_app only wires routes to them.

import contextlib
import hashlib
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import AwareDatetime, ValidationError
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from crux import __version__
from crux.collect import records
from crux.collect.db import create_db_engine, current_revision, migrate, to_naive_utc
from crux.collect.heartbeats import HeartbeatIn, record_heartbeat
from crux.collect.ingest_settings import CONTENT_TYPE_FORMATS, IngestSettings
from crux.collect.names import IDEMPOTENCY_KEY
from crux.collect.offline_docs import mount_offline_docs
from crux.collect.schemas import (
    DB_INT_MAX,
    CaptureCreated,
    CaptureMetadata,
    CaptureOut,
    CapturePage,
    Health,
    StationOut,
)
from crux.collect.stations import Station, station_for_token
from crux.collect.storage import ImageStore, image_key

log = logging.getLogger(__name__)
# Boxes of detectors carry no mask: keep their stored JSON as it was before segmentation models existed.
_NO_MASK = {"mask"}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLargeError(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse bodies over `limit` bytes: at once from Content-Length, else while streaming (chunked)."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body exceeds {self.limit} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLargeError(message)
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if started:
                raise
            await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)


@dataclass(frozen=True)
class Upload:
    """A checked upload, not yet stored."""

    station: Station
    meta: CaptureMetadata
    data: bytes
    content_type: str
    idempotency_key: str | None


def _reject(status: int, detail: Any, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers=headers)


def _validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    # Without input/context the errors are JSON-safe and never echo a (possibly huge) payload back.
    return [
        {"loc": ["metadata", *e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


async def _request_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422 echoes each rejected input: a NaN or an infinity there (`{"fps": NaN}`) cannot be written as
    JSON, so the error response itself failed with a 500. Only where and why, as for the metadata."""
    assert isinstance(exc, RequestValidationError)
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]  # fmt: skip
    return JSONResponse(status_code=422, content={"detail": detail})


_OPENAPI_UPLOAD: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "metadata"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "JPEG or PNG bytes"},
                        "metadata": {
                            "type": "string",
                            "description": "JSON object, see the CaptureMetadata schema",
                            "contentMediaType": "application/json",
                            "contentSchema": {"$ref": "#/components/schemas/CaptureMetadata"},
                        },
                    },
                }
            }
        },
    },
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY.pattern},
            "description": "Retries with the same key (per station) store the capture once.",
        }
    ],
}


def authenticate(engine: Engine | Connection, authorization: str | None) -> Station:
    """The station a request's `Authorization: Bearer <token>` belongs to, or a 401."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if not authorization:
        raise _reject(401, "missing bearer token (Authorization: Bearer <station token>)", challenge)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _reject(401, "Authorization header must be 'Bearer <station token>'", challenge)
    station = station_for_token(engine, token.strip())
    if station is None:
        raise _reject(401, "unknown or revoked station token", challenge)
    return station


# "Not looked up yet", as opposed to None: looked up, and no capture has this key.
_NOT_LOOKED_UP: Any = object()


def authenticate_upload(
    engine: Engine, authorization: str | None, key: str | None
) -> tuple[Station, records.CaptureRecord | None]:
    """The caller, and the capture an earlier request with the same Idempotency-Key stored (a retry), read on one
    pooled connection before the body is read: the upload then needs the database once more, for its insert."""
    with engine.connect() as conn:
        station = authenticate(conn, authorization)
        if key is None or not IDEMPOTENCY_KEY.match(key):
            return station, None  # read_upload refuses a malformed key with its own message
        return station, records.find_by_idempotency_key(conn, station.id, key)


async def read_upload(request: Request, station: Station, settings: IngestSettings) -> Upload:
    """The multipart body checked against the station and the limits; nothing is stored yet."""
    allowed = allowed_types(settings)
    key = request.headers.get("idempotency-key")
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        raise _reject(400, "Idempotency-Key must be 1-128 of A-Z a-z 0-9 _ . : - starting with a letter or digit")
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise _reject(415, "body must be multipart/form-data with parts 'image' and 'metadata'")
    try:
        form = await request.form(max_files=1, max_fields=2, max_part_size=settings.max_metadata_bytes)
    except BodyTooLargeError:
        raise
    except HTTPException as exc:  # starlette reports multipart limits as 400
        raise _reject(400, f"malformed multipart body: {exc.detail}") from exc
    except Exception as exc:
        raise _reject(400, f"malformed multipart body: {exc}") from exc
    try:
        unknown = sorted(set(form.keys()) - {"image", "metadata"})
        if unknown:
            raise _reject(422, f"unexpected form part(s) {', '.join(unknown)}; expected 'image' and 'metadata'")
        raw_meta = form.get("metadata")
        image = form.get("image")
        if not isinstance(raw_meta, str):
            raise _reject(422, "form part 'metadata' (a JSON string) is missing")
        if not isinstance(image, UploadFile):
            raise _reject(422, "form part 'image' (a file) is missing")
        if len(raw_meta.encode("utf-8")) > settings.max_metadata_bytes:
            raise _reject(413, f"metadata exceeds {settings.max_metadata_bytes} bytes")
        try:
            meta = CaptureMetadata.model_validate_json(raw_meta)
        except ValidationError as exc:
            raise _reject(422, _validation_detail(exc)) from exc
        if meta.station != station.name:
            raise _reject(403, f"this token belongs to station {station.name!r}, not {meta.station!r}")
        if meta.line != station.line:
            raise _reject(403, f"station {station.name!r} is registered on line {station.line!r}, not {meta.line!r}")
        content_type = (image.content_type or "").split(";")[0].strip().lower()
        if content_type not in allowed:
            raise _reject(
                415, f"image content type {content_type or 'missing'!r} not accepted; use {', '.join(allowed)}"
            )
        if image.filename and not _safe_filename(image.filename):
            raise _reject(422, f"image file name {image.filename!r} contains path or control characters")
        if image.size is not None and image.size > settings.max_image_bytes:
            raise _reject(413, f"image exceeds {settings.max_image_bytes} bytes")
        data = await image.read(settings.max_image_bytes + 1)
        if len(data) > settings.max_image_bytes:
            raise _reject(413, f"image exceeds {settings.max_image_bytes} bytes")
        if not data:
            raise _reject(422, "image part is empty")
    finally:
        await form.close()
    return Upload(station, meta, data, content_type, key)


def allowed_types(settings: IngestSettings) -> dict[str, tuple[str, str]]:
    """Accepted content type → (Pillow format, file extension)."""
    return {ct: CONTENT_TYPE_FORMATS[ct] for ct in settings.content_types}


def decode_image(data: bytes, content_type: str, settings: IngestSettings) -> tuple[int, int]:
    """(width, height) of an upload, decoded in full with its declared format only; a 413/415/422 otherwise."""
    from crux.postprocess import ImageError, open_image

    fmt = allowed_types(settings)[content_type][0]
    try:
        # Only the declared format's decoder is tried: a PNG sent as image/jpeg is refused, and the
        # attack surface is one decoder, not all of Pillow's. The pixel limit is checked before decoding.
        with open_image(io.BytesIO(data), max_pixels=settings.max_pixels, formats=[fmt], name="image") as im:
            width, height = im.size
            im.load()
    except ImageError as exc:
        if exc.reason == "too_large":
            raise _reject(413, f"{exc} (max_pixels {settings.max_pixels})") from exc
        if exc.reason == "unidentified":
            raise _reject(415, f"image is not a valid {fmt} file") from exc
        raise _reject(422, f"image could not be decoded as {fmt}: {exc}") from exc
    except ValueError as exc:
        raise _reject(422, f"image could not be decoded as {fmt}: {exc}") from exc
    if width < 1 or height < 1:
        raise _reject(422, "image has no pixels")
    return width, height


def meta_values(meta: CaptureMetadata) -> dict[str, Any]:
    """The stored columns that come from the request's metadata (also what a replay must match)."""
    return {
        "captured_at": to_naive_utc(meta.captured_at),
        "original_name": meta.original_name,
        "model_version": meta.model_version,
        "prediction": meta.prediction,
        "verdict": meta.verdict,
        "scores": dict(meta.scores),
        "boxes": [
            b.model_dump(by_alias=True, mode="json", exclude=_NO_MASK if b.mask is None else None) for b in meta.boxes
        ],
    }


def store_upload(
    engine: Engine,
    store: ImageStore,
    settings: IngestSettings,
    up: Upload,
    existing: records.CaptureRecord | None = _NOT_LOOKED_UP,
) -> tuple[CaptureCreated, bool]:
    """Store a checked upload: (the created capture, True) or, for a replayed Idempotency-Key, (it, False).
    `existing` is the capture stored under the key when the caller already looked (`authenticate_upload`)."""
    digest = hashlib.sha256(up.data).hexdigest()
    if existing is _NOT_LOOKED_UP:
        existing = None
        if up.idempotency_key is not None:
            with engine.connect() as conn:
                existing = records.find_by_idempotency_key(conn, up.station.id, up.idempotency_key)
    if existing is not None:
        return _replayed(existing, digest, up.meta), False
    try:
        return _store_new(engine, store, settings, up, digest)
    except IntegrityError as exc:
        return _replay_after_race(engine, up, digest, exc), False


def _store_new(
    engine: Engine, store: ImageStore, settings: IngestSettings, up: Upload, digest: str
) -> tuple[CaptureCreated, bool]:
    key, width, height = check_image(settings, up, digest)
    # The blob first, with no database connection held: an object-store PUT takes milliseconds, and holding a pooled
    # connection through it made the pool, not the database, the limit. A crash between the two leaves an
    # unreferenced blob (content-addressed, so a retry reuses it), never a row without its image.
    store.put(key, up.data)
    return insert_upload(engine, up, digest, key, width, height), True


def check_image(settings: IngestSettings, up: Upload, digest: str) -> tuple[str, int, int]:
    """(store key, width, height) of an upload whose image decodes in full and holds its boxes; a 4xx otherwise."""
    width, height = decode_image(up.data, up.content_type, settings)
    try:
        up.meta.check_boxes_inside(width, height)
    except ValueError as exc:
        raise _reject(422, str(exc)) from exc
    return image_key(digest, allowed_types(settings)[up.content_type][1]), width, height


def insert_upload(engine: Engine, up: Upload, digest: str, key: str, width: int, height: int) -> CaptureCreated:
    """The capture's row, committed (durable: PostgreSQL's synchronous_commit, SQLite's WAL) before it returns, so
    before the 201 goes out. Its blob is stored already."""
    values = {
        "station_id": up.station.id,
        "station": up.station.name,
        "line": up.station.line,
        "sha256": digest,
        "image_key": key,
        "content_type": up.content_type,
        "size_bytes": len(up.data),
        "width": width,
        "height": height,
        **meta_values(up.meta),
        "idempotency_key": up.idempotency_key,
        "ls_project": None,
        "ls_task_id": None,
        "sent_at": None,
        "labeled_at": None,
    }
    with engine.begin() as conn:
        capture_id = records.insert_capture(conn, values)
    return CaptureCreated(id=capture_id, sha256=digest, image_key=key, replayed=False)


def _replay_after_race(engine: Engine, up: Upload, digest: str, error: IntegrityError) -> CaptureCreated:
    """Two requests with one Idempotency-Key raced past the check: the loser replays the winner."""
    if up.idempotency_key is None:
        raise error
    with engine.connect() as conn:
        existing = records.find_by_idempotency_key(conn, up.station.id, up.idempotency_key)
    if existing is None:
        raise error
    return _replayed(existing, digest, up.meta)


async def store_upload_async(
    engine: Engine, store: ImageStore, settings: IngestSettings, up: Upload, existing: records.CaptureRecord | None
) -> tuple[CaptureCreated, bool]:
    """`store_upload` for the event loop: decoding and the database in the thread pool, the object-store PUT
    awaited on the loop itself (async s3fs), so that a PUT in flight holds no thread. The same order and
    guarantees: blob, then committed row, then the answer."""
    if not store.is_async:
        return await run_in_threadpool(store_upload, engine, store, settings, up, existing)
    digest = hashlib.sha256(up.data).hexdigest()
    if existing is not None:
        return _replayed(existing, digest, up.meta), False
    key, width, height = await run_in_threadpool(check_image, settings, up, digest)
    await store.aput(key, up.data)
    try:
        return await run_in_threadpool(insert_upload, engine, up, digest, key, width, height), True
    except IntegrityError as exc:
        return await run_in_threadpool(_replay_after_race, engine, up, digest, exc), False


def _replayed(existing: records.CaptureRecord, digest: str, meta: CaptureMetadata) -> CaptureCreated:
    if existing.sha256 != digest:
        raise _reject(409, "Idempotency-Key was already used for a different image by this station")
    # A replay must be the same request: different metadata under one key would otherwise be dropped silently.
    stored = {**existing.as_dict(), "captured_at": to_naive_utc(existing.captured_at)}
    differ = sorted(k for k, v in meta_values(meta).items() if stored.get(k) != v)
    if differ:
        raise _reject(
            409,
            f"Idempotency-Key was already used by this station with different metadata ({', '.join(differ)}); "
            f"capture {existing.id} keeps the first upload's",
        )
    return CaptureCreated(id=existing.id, sha256=existing.sha256, image_key=existing.image_key, replayed=True)


def health_report(engine: Engine, store: ImageStore) -> Health:
    """Database and storage reachability, and the schema revision."""
    db_state, storage_state, revision = "ok", "ok", None
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        revision = current_revision(engine)
    except Exception as exc:
        db_state = f"error: {type(exc).__name__}"
    try:
        store.check()
    except Exception as exc:
        storage_state = f"error: {type(exc).__name__}"
    return Health(
        status="ok" if db_state == storage_state == "ok" else "degraded",
        database=db_state,
        storage=storage_state,
        schema_revision=revision,
        version=__version__,
    )


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus CaptureMetadata, which the upload parses by hand (to reject before storing)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        meta = CaptureMetadata.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(meta.pop("$defs", {}))
        components["CaptureMetadata"] = meta
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: IngestSettings) -> FastAPI:
    """Build the ingest app: routes over the functions above. Migrations run when the app starts (uvicorn
    lifespan), not here."""
    # Migrations, heartbeats, listings and health: few requests, a small pool (3 connections at most).
    engine = create_db_engine(settings.database_url, 2, 1)
    # The upload path's statements each stand alone (two lookups, one insert), so each is its own transaction: no
    # BEGIN/COMMIT/ROLLBACK round trips around them (they were two thirds of an upload's trips to PostgreSQL). An
    # autocommitted INSERT is as durable as a committed one: the 201 still goes out after the commit.
    statements = create_db_engine(
        settings.database_url, settings.db_pool_size, settings.db_max_overflow, pre_ping=False, autocommit=True
    )
    store = ImageStore(settings.storage_url, settings.storage_options)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(migrate, engine)
        await store.open_async()
        try:
            yield
        finally:
            await store.close_async()
            engine.dispose()
            statements.dispose()

    app = FastAPI(
        title="CRUX ingest",
        version=__version__,
        description="Edge stations upload inspection captures (image + prediction metadata).",
        lifespan=lifespan,
        # /docs serves Swagger UI from a package (a CDN is out of reach on a plant network); no ReDoc.
        docs_url=None,
        redoc_url=None,
    )
    mount_offline_docs(app)
    app.state.engine = engine
    app.state.store = store
    app.state.settings = settings
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_exception_handler(RequestValidationError, _request_validation_error)

    @app.post(
        "/v1/captures",
        status_code=201,
        response_model=CaptureCreated,
        openapi_extra=_OPENAPI_UPLOAD,
        responses={
            200: {"model": CaptureCreated, "description": "replay of an earlier upload (same Idempotency-Key)"},
            401: {"description": "no, unknown or revoked token"},
            403: {"description": "token of another station/line"},
            409: {"description": "Idempotency-Key reused for a different image or different metadata"},
            413: {"description": "body, metadata, image or pixel count over the limit"},
            415: {"description": "not multipart, or image type not accepted / not matching its bytes"},
            422: {"description": "malformed metadata, corrupt image, bad names"},
        },
        summary="Upload one capture (image + prediction metadata)",
    )
    async def post_capture(request: Request) -> JSONResponse:
        # Database round trips run in the thread pool, so the event loop keeps parsing other stations' uploads.
        station, existing = await run_in_threadpool(
            authenticate_upload,
            statements,
            request.headers.get("authorization"),
            request.headers.get("idempotency-key"),
        )
        upload = await read_upload(request, station, settings)
        created, new = await store_upload_async(statements, store, settings, upload, existing)
        headers = {"Location": f"/v1/captures/{created.id}"}
        return JSONResponse(created.model_dump(), status_code=201 if new else 200, headers=headers)

    @app.get("/v1/captures", response_model=CapturePage, summary="List this station's captures")
    def get_captures(
        request: Request,
        line: str | None = None,
        station: str | None = None,
        since: Annotated[AwareDatetime | None, Query(description="captured_at >= since (ISO 8601, offset)")] = None,
        labeled: bool | None = None,
        after: Annotated[int | None, Query(ge=0, le=DB_INT_MAX, description="id cursor from next_after")] = None,
        limit: Annotated[int, Query(ge=1, le=settings.max_page_size)] = 100,
    ) -> CapturePage:
        caller = authenticate(engine, request.headers.get("authorization"))
        # A station token reads only its own captures: a stolen edge box must not leak other lines.
        if station is not None and station != caller.name:
            raise _reject(403, f"this token may list only station {caller.name!r}")
        rows = records.list_captures(
            engine, line=line, station=caller.name, since=since, labeled=labeled, after=after, limit=limit
        )
        items = [CaptureOut(**r.as_dict()) for r in rows]
        return CapturePage(items=items, next_after=rows[-1].id if len(rows) == limit else None)

    @app.get("/v1/captures/{capture_id}", response_model=CaptureOut, summary="One capture of this station")
    def get_capture(request: Request, capture_id: Annotated[int, Path(ge=0, le=DB_INT_MAX)]) -> Any:
        caller = authenticate(engine, request.headers.get("authorization"))
        row = records.get_capture(engine, capture_id)
        if row is None or row.station != caller.name:
            raise _reject(404, f"capture {capture_id} not found")
        return CaptureOut(**row.as_dict())

    @app.post(
        "/v1/heartbeat",
        status_code=204,
        responses={401: {"description": "no, unknown or revoked token"}},
        summary="A station's periodic status (model running, frames/s, latency, NG rate, outbox backlog)",
    )
    def post_heartbeat(request: Request, beat: HeartbeatIn) -> Response:
        record_heartbeat(engine, authenticate(engine, request.headers.get("authorization")), beat)
        return Response(status_code=204)

    @app.get(
        "/v1/station",
        response_model=StationOut,
        responses={401: {"description": "no, unknown or revoked token"}},
        summary="The station and line this token belongs to (the edge checks its set-up with it at start)",
    )
    def get_station(request: Request) -> StationOut:
        caller = authenticate(engine, request.headers.get("authorization"))
        return StationOut(name=caller.name, line=caller.line)

    @app.get("/v1/health", response_model=Health, summary="Liveness and dependency check")
    def health() -> JSONResponse:
        body = health_report(engine, store)
        return JSONResponse(json.loads(body.model_dump_json()), status_code=200 if body.status == "ok" else 503)

    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    return app


def _safe_filename(name: str) -> bool:
    return not any(c in name for c in "/\\\x00") and ".." not in name and name.isprintable() and len(name) <= 255


@dataclass(frozen=True)
class AppFactory:
    """`create_app(settings)` as a picklable callable: uvicorn's worker processes are spawned, so each one gets this
    value (not an app built in the parent) and builds its own engine and store."""

    settings: IngestSettings

    def __call__(self) -> FastAPI:
        return create_app(self.settings)

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType (storage_options) does not pickle: hand the fields over as plain values.
        fields = {**self.settings.__dict__, "storage_options": dict(self.settings.storage_options)}
        return (_factory_from_fields, (fields,))


def _factory_from_fields(fields: dict[str, Any]) -> AppFactory:
    import types

    fields["storage_options"] = types.MappingProxyType(fields["storage_options"])
    return AppFactory(IngestSettings(**fields))


def serve(
    settings: IngestSettings,
    host: str = "127.0.0.1",
    port: int = 8700,
    access_log: bool = False,
    workers: int | None = None,
) -> None:
    """Run the service until interrupted (what `crux ingest serve` calls): one process, or `workers` processes
    (default `settings.workers`) sharing one listening socket under uvicorn's supervisor, which restarts a dead one."""
    import uvicorn

    workers = settings.workers if workers is None else workers
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, access_log=access_log, log_level="info")
        return
    from uvicorn.supervisors import Multiprocess

    # Migrate once here: N workers starting together would each race to create Alembic's version table.
    engine = create_db_engine(settings.database_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    config = uvicorn.Config(
        AppFactory(settings), factory=True, host=host, port=port, workers=workers, access_log=access_log,
        log_level="info",
    )  # fmt: skip
    # uvicorn.run() insists on an import string for workers; its supervisor takes any picklable factory.
    with contextlib.suppress(KeyboardInterrupt):
        Multiprocess(config, sockets=[config.bind_socket()]).run()
