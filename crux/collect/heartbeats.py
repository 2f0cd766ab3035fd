"""Station heartbeats: what each edge reports at an interval (model running, frames/s, latency, NG rate, outbox
backlog), one row per station replaced each time. Written by POST /v1/heartbeat, read by the console."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine

from crux.collect.db import station_heartbeats, to_aware_utc, to_naive_utc, utcnow
from crux.collect.stations import Station


class HeartbeatIn(BaseModel):
    """The body of POST /v1/heartbeat; the station and line come from the token, never from the body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    started_at: AwareDatetime | None = Field(None, description="when this run of `crux edge run` started")
    model_version: int | None = Field(
        None, ge=0, le=2**62, description="published version running; null before the first"
    )
    frames: int = Field(0, ge=0, le=2**62, description="frames inspected since start")
    ng: int = Field(0, ge=0, le=2**62, description="NG frames since start")
    errors: int = Field(0, ge=0, le=2**62, description="frames that failed to decode since start")
    fps: float | None = Field(None, ge=0, le=1e6, allow_inf_nan=False, description="frames/s over the last minute")
    latency_p50_ms: float | None = Field(None, ge=0, le=1e7, allow_inf_nan=False, description="median, recent frames")
    ng_rate: float | None = Field(None, ge=0, le=1, allow_inf_nan=False, description="NG share of recent frames")
    outbox_pending: int | None = Field(None, ge=0, le=2**62, description="captures waiting in the outbox")
    outbox_bytes: int | None = Field(None, ge=0, le=2**62, description="bytes waiting in the outbox")
    interval_s: float | None = Field(None, gt=0, le=86400, allow_inf_nan=False, description="seconds to the next")
    model_errors: int | None = Field(
        None, ge=0, le=2**62, description="frames since start whose model output was NaN/inf or misshapen (rejected)"
    )


@dataclass(frozen=True)
class Heartbeat:
    """A station's latest heartbeat, datetimes aware UTC."""

    station: str
    line: str
    received_at: dt.datetime
    started_at: dt.datetime | None
    model_version: int | None
    frames: int
    ng: int
    errors: int
    fps: float | None
    latency_p50_ms: float | None
    ng_rate: float | None
    outbox_pending: int | None
    outbox_bytes: int | None
    interval_s: float | None
    model_errors: int | None = None


def record_heartbeat(engine: Engine, station: Station, beat: HeartbeatIn, now: dt.datetime | None = None) -> None:
    """Replace `station`'s heartbeat row (update, else insert: one row per station whatever the backend)."""
    values = {
        "station": station.name,
        "line": station.line,
        "received_at": to_naive_utc(now) if now else utcnow(),
        **beat.model_dump(),
        "started_at": to_naive_utc(beat.started_at) if beat.started_at else None,
    }
    with engine.begin() as conn:
        updated = conn.execute(
            sa.update(station_heartbeats).where(station_heartbeats.c.station_id == station.id).values(**values)
        ).rowcount
        if not updated:
            conn.execute(sa.insert(station_heartbeats).values(station_id=station.id, **values))


def latest_heartbeats(engine: Engine, line: str | None = None) -> list[Heartbeat]:
    query = sa.select(station_heartbeats).order_by(station_heartbeats.c.station)
    if line is not None:
        query = query.where(station_heartbeats.c.line == line)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    out = []
    for row in rows:
        m = dict(row._mapping)
        m.pop("station_id")
        m["received_at"] = to_aware_utc(m["received_at"])
        m["started_at"] = to_aware_utc(m["started_at"])
        out.append(Heartbeat(**m))
    return out


__all__ = ["Heartbeat", "HeartbeatIn", "latest_heartbeats", "record_heartbeat"]
