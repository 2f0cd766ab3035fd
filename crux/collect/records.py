"""Capture rows: insert, look up, list with filters, and the Label Studio hand-over used by the collect flow."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from crux.collect.db import captures, to_aware_utc, to_naive_utc, utcnow


@dataclass(frozen=True)
class CaptureRecord:
    """One capture row, datetimes as aware UTC."""

    id: int
    station: str
    line: str
    captured_at: dt.datetime
    received_at: dt.datetime
    sha256: str
    image_key: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    original_name: str | None
    model_version: str | None
    prediction: str | None
    verdict: str | None
    scores: dict[str, float]
    boxes: list[dict[str, Any]]
    idempotency_key: str | None
    ls_project: str | None
    ls_task_id: int | None
    sent_at: dt.datetime | None
    labeled_at: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _record(row: Any) -> CaptureRecord:
    m = row._mapping
    return CaptureRecord(
        id=m["id"],
        station=m["station"],
        line=m["line"],
        captured_at=to_aware_utc(m["captured_at"]),  # type: ignore[arg-type]
        received_at=to_aware_utc(m["received_at"]),  # type: ignore[arg-type]
        sha256=m["sha256"],
        image_key=m["image_key"],
        content_type=m["content_type"],
        size_bytes=m["size_bytes"],
        width=m["width"],
        height=m["height"],
        original_name=m["original_name"],
        model_version=m["model_version"],
        prediction=m["prediction"],
        verdict=m["verdict"],
        scores=dict(m["scores"] or {}),
        boxes=list(m["boxes"] or []),
        idempotency_key=m["idempotency_key"],
        ls_project=m["ls_project"],
        ls_task_id=m["ls_task_id"],
        sent_at=to_aware_utc(m["sent_at"]),
        labeled_at=to_aware_utc(m["labeled_at"]),
    )


# Built once: on the upload path, building statements per request cost as much as running them.
_INSERT = captures.insert().returning(captures.c.id)
_BY_KEY = sa.select(captures).where(
    captures.c.station_id == sa.bindparam("station_id"), captures.c.idempotency_key == sa.bindparam("key")
)


def insert_capture(conn: Connection, values: Mapping[str, Any]) -> int:
    """Insert one row (the caller owns the transaction) and return its id."""
    return int(conn.execute(_INSERT, {"received_at": utcnow(), **values}).scalar_one())


def find_by_idempotency_key(conn: Connection, station_id: int, key: str) -> CaptureRecord | None:
    row = conn.execute(_BY_KEY, {"station_id": station_id, "key": key}).first()
    return None if row is None else _record(row)


def get_capture(engine: Engine, capture_id: int) -> CaptureRecord | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(captures).where(captures.c.id == capture_id)).first()
    return None if row is None else _record(row)


def list_captures(
    engine: Engine,
    *,
    line: str | None = None,
    station: str | None = None,
    since: dt.datetime | None = None,
    labeled: bool | None = None,
    sent: bool | None = None,
    after: int | None = None,
    limit: int = 100,
) -> list[CaptureRecord]:
    """Captures in id (= arrival) order; keyset paging with `after` stays stable while rows arrive."""
    query = sa.select(captures).order_by(captures.c.id).limit(limit)
    if line is not None:
        query = query.where(captures.c.line == line)
    if station is not None:
        query = query.where(captures.c.station == station)
    if since is not None:
        query = query.where(captures.c.captured_at >= to_naive_utc(since))
    if labeled is not None:
        query = query.where(captures.c.labeled_at.is_not(None) if labeled else captures.c.labeled_at.is_(None))
    if sent is not None:
        query = query.where(captures.c.sent_at.is_not(None) if sent else captures.c.sent_at.is_(None))
    if after is not None:
        query = query.where(captures.c.id > after)
    with engine.connect() as conn:
        return [_record(r) for r in conn.execute(query)]


def count_captures(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(captures)).scalar_one())


def list_unsent(engine: Engine, *, line: str | None = None, limit: int = 1000) -> list[CaptureRecord]:
    """Captures not yet handed to Label Studio, oldest first (the collect flow's input)."""
    return list_captures(engine, line=line, sent=False, limit=limit)


def mark_sent(engine: Engine, project: str, task_ids: Mapping[int, int]) -> int:
    """Record that captures became Label Studio tasks: {capture_id: task_id}. Returns rows updated.

    Only rows not yet sent are updated, so a re-run of the collect flow after a crash cannot
    re-point a capture to a second task; the flow should put the capture id into the task data
    so that it can reconcile tasks created just before a crash.
    """
    if not task_ids:
        return 0
    now = utcnow()
    updated = 0
    with engine.begin() as conn:
        for capture_id, task_id in task_ids.items():
            result = conn.execute(
                sa.update(captures)
                .where(captures.c.id == capture_id, captures.c.sent_at.is_(None))
                .values(ls_project=project, ls_task_id=task_id, sent_at=now)
            )
            updated += result.rowcount
    return updated


def mark_labeled(engine: Engine, capture_ids: Iterable[int], when: dt.datetime | None = None) -> int:
    """Record that the captures' tasks carry an annotation (set by the export/collect side)."""
    ids = list(capture_ids)
    if not ids:
        return 0
    stamp = utcnow() if when is None else to_naive_utc(when)
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(captures).where(captures.c.id.in_(ids), captures.c.labeled_at.is_(None)).values(labeled_at=stamp)
        )
    return result.rowcount
