"""Station heartbeats: what each edge reports at an interval (model running, frames/s, latency, NG rate, outbox
backlog, the score histogram of the frames judged since its last beat). Written by POST /v1/heartbeat: the latest
beat of each station (one row per station, replaced) for the console's tables, and every beat in a time series of
bounded retention for the station history and the drift monitor. Also the monitor's records: drift alarms and the
captures they queue for labelling first."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.engine import Engine

from crux.collect.db import (
    captures,
    drift_alarms,
    drift_checks,
    drift_queue,
    heartbeat_history,
    station_heartbeats,
    stations,
    to_aware_utc,
    to_naive_utc,
    utcnow,
)
from crux.collect.stations import Station
from crux.monitor.drift import HISTORY_DAYS, SCORE_BINS, Window

# How long every heartbeat is kept (monitor.window_s must fit inside it).
HISTORY_RETENTION = dt.timedelta(days=HISTORY_DAYS)


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
    score_hist: list[int] | None = Field(
        None,
        min_length=SCORE_BINS,
        max_length=SCORE_BINS,
        description=f"frames judged since the last delivered beat, by NG score in {SCORE_BINS} bins of 0..1",
    )
    window_ng: int | None = Field(None, ge=0, le=2**62, description="NG frames among those of score_hist")

    @model_validator(mode="after")
    def _window(self) -> HeartbeatIn:
        if self.score_hist is not None:
            if any(not 0 <= c <= 2**62 for c in self.score_hist):
                raise ValueError("score_hist: counts must be in 0..2**62")
            if self.window_ng is not None and self.window_ng > sum(self.score_hist):
                raise ValueError("window_ng: more NG frames than frames in score_hist")
        elif self.window_ng is not None:
            raise ValueError("window_ng without score_hist")
        return self


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


def record_heartbeat(
    engine: Engine,
    station: Station,
    beat: HeartbeatIn,
    now: dt.datetime | None = None,
    retention: dt.timedelta = HISTORY_RETENTION,
) -> None:
    """Replace `station`'s latest heartbeat row (update, else insert: one row per station whatever the backend),
    append the beat to the history and drop the station's history older than `retention`."""
    received = to_naive_utc(now) if now else utcnow()
    window = beat.model_dump(include={"score_hist", "window_ng"})
    values = {
        "station": station.name,
        "line": station.line,
        "received_at": received,
        **beat.model_dump(exclude={"score_hist", "window_ng"}),
        "started_at": to_naive_utc(beat.started_at) if beat.started_at else None,
    }
    history = {k: values[k] for k in HISTORY_FIELDS} | window
    with engine.begin() as conn:
        updated = conn.execute(
            sa.update(station_heartbeats).where(station_heartbeats.c.station_id == station.id).values(**values)
        ).rowcount
        if not updated:
            conn.execute(sa.insert(station_heartbeats).values(station_id=station.id, **values))
        conn.execute(sa.insert(heartbeat_history).values(station_id=station.id, **history))
        # One station's old rows through the (station_id, received_at) index: a cheap delete on every beat.
        conn.execute(
            sa.delete(heartbeat_history).where(
                heartbeat_history.c.station_id == station.id, heartbeat_history.c.received_at < received - retention
            )
        )


HISTORY_FIELDS = (
    "station", "line", "received_at", "model_version", "frames", "ng", "errors", "fps", "latency_p50_ms", "ng_rate",
)  # fmt: skip


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


# ----------------------------------------------------------------------------------------------------------------
# History


@dataclass(frozen=True)
class HistoryPoint:
    """One heartbeat of the time series (the station page's history)."""

    received_at: dt.datetime
    model_version: int | None
    fps: float | None
    latency_p50_ms: float | None
    ng_rate: float | None
    window_frames: int | None
    window_ng: int | None


def station_history(engine: Engine, station: str, since: dt.datetime, limit: int = 5000) -> list[HistoryPoint]:
    """`station`'s heartbeats since `since`, oldest first (at most the newest `limit`)."""
    h = heartbeat_history.c
    query = (
        sa.select(h.received_at, h.model_version, h.fps, h.latency_p50_ms, h.ng_rate, h.score_hist, h.window_ng)
        # By station id: the (station_id, received_at) index; a million rows of a week's fleet are not scanned.
        .where(h.station_id == _station_id(station), h.received_at >= to_naive_utc(since))
        .order_by(h.received_at.desc(), h.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        HistoryPoint(
            to_aware_utc(r.received_at) or r.received_at,
            r.model_version,
            r.fps,
            r.latency_p50_ms,
            r.ng_rate,
            sum(r.score_hist) if r.score_hist else None,
            r.window_ng,
        )
        for r in reversed(rows)
    ]


def _station_id(name: str) -> Any:
    return sa.select(stations.c.id).where(stations.c.name == name).scalar_subquery()


@dataclass(frozen=True)
class StationWindow:
    """What one station judged over a window, from the score histograms of its heartbeats."""

    station: str
    line: str
    model_version: int | None  # of its latest beat in the window
    window: Window


def windows(engine: Engine, since: dt.datetime, line: str | None = None) -> list[StationWindow]:
    """Each station's summed score histogram and NG count of the heartbeats received since `since` (beats of
    older edges, without a histogram, count for nothing)."""
    h = heartbeat_history.c
    query = (
        sa.select(h.station, h.line, h.model_version, h.score_hist, h.window_ng)
        .where(h.received_at >= to_naive_utc(since), h.score_hist.is_not(None))
        .order_by(h.station, h.received_at, h.id)
    )
    if line is not None:
        query = query.where(h.line == line)
    found: dict[str, tuple[str, int | None, list[int], int]] = {}
    with engine.connect() as conn:
        for r in conn.execute(query):
            _, _, counts, ng = found.get(r.station, (r.line, None, [0] * SCORE_BINS, 0))
            if not isinstance(r.score_hist, list) or len(r.score_hist) != SCORE_BINS:
                continue  # a row written under another bin count (never by this version): not comparable
            counts = [a + int(b) for a, b in zip(counts, r.score_hist, strict=True)]
            found[r.station] = (r.line, r.model_version, counts, ng + int(r.window_ng or 0))
    return [
        StationWindow(name, line_, version, Window(tuple(counts), ng))
        for name, (line_, version, counts, ng) in sorted(found.items())
    ]


# ----------------------------------------------------------------------------------------------------------------
# Drift alarms and the labelling queue


@dataclass(frozen=True)
class DriftAlarm:
    id: int
    line: str
    station: str | None  # None: the whole line
    model_version: int | None
    raised_at: dt.datetime
    window_start: dt.datetime
    window_end: dt.datetime
    frames: int
    psi: float | None
    ks_p: float | None
    ng_rate: float | None
    ref_ng_rate: float | None
    reasons: tuple[str, ...]
    queued: int
    cleared_at: dt.datetime | None

    @property
    def scope(self) -> str:
        return f"station {self.station}" if self.station else f"line {self.line}"


def _alarm(row: Any) -> DriftAlarm:
    m = dict(row._mapping)
    for key in ("raised_at", "window_start", "window_end", "cleared_at"):
        m[key] = to_aware_utc(m[key])
    m["reasons"] = tuple(str(r) for r in (m["reasons"] or ()))
    return DriftAlarm(**m)


def open_alarm(engine: Engine, line: str, station: str | None) -> DriftAlarm | None:
    """The uncleared alarm of this scope (a line when `station` is None), or None."""
    a = drift_alarms.c
    scope = a.station.is_(None) if station is None else a.station == station
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(drift_alarms).where(a.line == line, scope, a.cleared_at.is_(None)).order_by(a.id.desc())
        ).first()
    return None if row is None else _alarm(row)


def raise_alarm(
    engine: Engine,
    *,
    line: str,
    station: str | None,
    model_version: int | None,
    window_start: dt.datetime,
    window_end: dt.datetime,
    frames: int,
    psi: float | None,
    ks_p: float | None,
    ng_rate: float | None,
    ref_ng_rate: float | None,
    reasons: tuple[str, ...],
    now: dt.datetime | None = None,
) -> DriftAlarm:
    with engine.begin() as conn:
        alarm_id = conn.execute(
            sa.insert(drift_alarms)
            .values(
                line=line,
                station=station,
                model_version=model_version,
                raised_at=to_naive_utc(now) if now else utcnow(),
                window_start=to_naive_utc(window_start),
                window_end=to_naive_utc(window_end),
                frames=frames,
                psi=psi,
                ks_p=ks_p,
                ng_rate=ng_rate,
                ref_ng_rate=ref_ng_rate,
                reasons=list(reasons),
                queued=0,
            )
            .returning(drift_alarms.c.id)
        ).scalar_one()
        row = conn.execute(sa.select(drift_alarms).where(drift_alarms.c.id == alarm_id)).one()
    return _alarm(row)


def clear_alarm(engine: Engine, alarm_id: int, now: dt.datetime | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(drift_alarms)
            .where(drift_alarms.c.id == alarm_id, drift_alarms.c.cleared_at.is_(None))
            .values(cleared_at=to_naive_utc(now) if now else utcnow())
        )


def alarms(engine: Engine, *, line: str | None = None, open_only: bool = True, limit: int = 50) -> list[DriftAlarm]:
    """Alarms, newest first: the open ones (default) or all, of one line or every line."""
    a = drift_alarms.c
    query = sa.select(drift_alarms).order_by(a.id.desc()).limit(limit)
    if line is not None:
        query = query.where(a.line == line)
    if open_only:
        query = query.where(a.cleared_at.is_(None))
    with engine.connect() as conn:
        return [_alarm(r) for r in conn.execute(query)]


@dataclass(frozen=True)
class DriftCheck:
    """The latest drift check of a scope (station None: the whole line)."""

    line: str
    station: str | None
    checked_at: dt.datetime
    model_version: int | None
    status: str  # crux.monitor.drift STATUS_*
    frames: int
    psi: float | None
    ks_p: float | None
    ng_rate: float | None
    ref_ng_rate: float | None


def record_check(engine: Engine, check: DriftCheck) -> None:
    """Replace the scope's latest check (update, else insert)."""
    key = {"line": check.line, "station": check.station or ""}
    values = {k: v for k, v in check.__dict__.items() if k not in key}
    values["checked_at"] = to_naive_utc(check.checked_at)
    c = drift_checks.c
    with engine.begin() as conn:
        where = sa.and_(c.line == key["line"], c.station == key["station"])
        if not conn.execute(sa.update(drift_checks).where(where).values(**values)).rowcount:
            conn.execute(sa.insert(drift_checks).values(**key, **values))


def latest_checks(engine: Engine, line: str | None = None) -> list[DriftCheck]:
    query = sa.select(drift_checks).order_by(drift_checks.c.line, drift_checks.c.station)
    if line is not None:
        query = query.where(drift_checks.c.line == line)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    out = []
    for r in rows:
        m = dict(r._mapping)
        m["station"] = m["station"] or None
        m["checked_at"] = to_aware_utc(m["checked_at"])
        out.append(DriftCheck(**m))
    return out


def queue_shifted(engine: Engine, alarm: DriftAlarm, limit: int, now: dt.datetime | None = None) -> list[int]:
    """Queue for labelling first the unlabelled captures of the alarm's scope taken in its window (newest first, at
    most `limit`, none queued twice); returns their ids. crux.collect.labeling sends queued captures ahead of the
    rest, and the `priority` of their tasks sorts them first in Label Studio."""
    c, q = captures.c, drift_queue.c
    query = (
        sa.select(c.id)
        .where(
            c.line == alarm.line,
            c.captured_at >= to_naive_utc(alarm.window_start),
            c.captured_at <= to_naive_utc(alarm.window_end),
            c.labeled_at.is_(None),
            ~sa.exists().where(q.capture_id == c.id),
        )
        .order_by(c.id.desc())
        .limit(limit)
    )
    if alarm.station is not None:
        query = query.where(c.station == alarm.station)
    at = to_naive_utc(now) if now else utcnow()
    with engine.begin() as conn:
        ids = [int(i) for i in conn.execute(query).scalars()]
        if ids:
            conn.execute(
                sa.insert(drift_queue),
                [{"capture_id": i, "alarm_id": alarm.id, "line": alarm.line, "queued_at": at} for i in ids],
            )
            conn.execute(
                sa.update(drift_alarms)
                .where(drift_alarms.c.id == alarm.id)
                .values(queued=drift_alarms.c.queued + len(ids))
            )
    return ids


def queued_captures(engine: Engine, line: str) -> set[int]:
    """Ids of `line`'s captures a drift alarm queued for labelling first."""
    with engine.connect() as conn:
        query = sa.select(drift_queue.c.capture_id).where(drift_queue.c.line == line)
        return {int(i) for i in conn.execute(query).scalars()}


__all__ = [
    "HISTORY_RETENTION",
    "DriftAlarm",
    "DriftCheck",
    "Heartbeat",
    "HeartbeatIn",
    "HistoryPoint",
    "StationWindow",
    "alarms",
    "clear_alarm",
    "latest_checks",
    "latest_heartbeats",
    "open_alarm",
    "queue_shifted",
    "queued_captures",
    "raise_alarm",
    "record_check",
    "record_heartbeat",
    "station_history",
    "windows",
]
