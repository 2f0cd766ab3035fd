"""The monitor's storage (migration 0004: heartbeat history, drift checks, alarms, the labelling queue) on both
backends the ingest service supports: SQLite, and PostgreSQL where CRUX_TEST_POSTGRES_URL names one
(scripts/postgres-for-tests.sh starts a throwaway cluster)."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from crux.collect import add_station, create_db_engine, migrate
from crux.collect.db import captures
from crux.collect.heartbeats import (
    DriftCheck,
    HeartbeatIn,
    alarms,
    clear_alarm,
    latest_checks,
    open_alarm,
    queue_shifted,
    queued_captures,
    raise_alarm,
    record_check,
    record_heartbeat,
    windows,
)
from crux.collect.stations import station_for_token
from crux.monitor.drift import SCORE_BINS

pytestmark = pytest.mark.integration

POSTGRES_URL = os.environ.get("CRUX_TEST_POSTGRES_URL")
T0 = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        e = create_db_engine(f"sqlite:///{tmp_path}/m.db")
        migrate(e)
        yield e
        e.dispose()
        return
    if not POSTGRES_URL:
        pytest.skip("set CRUX_TEST_POSTGRES_URL to run the PostgreSQL variant")
    schema = f"crux_test_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    e = create_db_engine(f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}")
    try:
        migrate(e)
        yield e
    finally:
        e.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_history_checks_alarms_and_queue(engine: sa.Engine) -> None:
    station = station_for_token(engine, add_station(engine, "cam-1", "line-a"))
    assert station is not None
    counts = [0] * SCORE_BINS
    counts[5] = 40
    for i in range(3):
        beat = HeartbeatIn(frames=40 * (i + 1), model_version=1, score_hist=counts, window_ng=4)
        record_heartbeat(engine, station, beat, now=T0 + dt.timedelta(minutes=i))
    (w,) = windows(engine, T0 - dt.timedelta(minutes=1), "line-a")
    assert (w.window.frames, w.window.ng, w.model_version) == (120, 12, 1)

    rows = [
        {"station_id": station.id, "station": "cam-1", "line": "line-a",
         "captured_at": (T0 + dt.timedelta(minutes=i)).replace(tzinfo=None), "received_at": T0.replace(tzinfo=None),
         "sha256": f"{i:064x}", "image_key": f"{i}.jpg", "content_type": "image/jpeg", "size_bytes": 1, "width": 1,
         "height": 1, "scores": {}, "boxes": []}
        for i in range(5)
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(captures), rows)
    check = DriftCheck("line-a", "cam-1", T0, 1, "alarm", 120, 0.9, 1e-9, 0.1, 0.02)
    record_check(engine, check)
    record_check(engine, DriftCheck("line-a", None, T0, 1, "no reference", 120, None, None, 0.1, None))
    record_check(engine, DriftCheck("line-a", "cam-1", T0, 1, "ok", 130, 0.01, 0.5, 0.02, 0.02))  # replaces
    assert [(c.station, c.status, c.frames) for c in latest_checks(engine, "line-a")] == [
        (None, "no reference", 120), ("cam-1", "ok", 130),
    ]  # fmt: skip

    alarm = raise_alarm(
        engine, line="line-a", station="cam-1", model_version=1,
        window_start=T0, window_end=T0 + dt.timedelta(minutes=3),
        frames=120, psi=0.9, ks_p=1e-9, ng_rate=0.1, ref_ng_rate=0.02, reasons=("PSI 0.9",), now=T0,
    )  # fmt: skip
    assert open_alarm(engine, "line-a", "cam-1") == alarm and open_alarm(engine, "line-a", None) is None
    first = queue_shifted(engine, alarm, limit=3, now=T0)
    assert len(first) == 3 and first == sorted(first, reverse=True)  # the newest of the window first
    more = queue_shifted(engine, alarm, limit=10, now=T0)
    assert len(more) == 1 and not set(more) & set(first)  # captured at minute 4 is outside the window
    assert queued_captures(engine, "line-a") == set(first) | set(more)
    assert alarms(engine)[0].queued == 4
    clear_alarm(engine, alarm.id, now=T0 + dt.timedelta(hours=1))
    assert alarms(engine) == [] and alarms(engine, open_only=False)[0].cleared_at is not None


def test_a_line_alarm_its_stations_cannot_explain_queues_the_line_and_clears_when_the_shift_ends(
    engine: sa.Engine,
) -> None:
    from crux.monitor.drift import MonitorConfig, Reference
    from crux.monitor.watch import check_line

    cfg = MonitorConfig(min_frames=100, window_s=600, queue_max=4)
    steady = [0] * SCORE_BINS
    steady[2], steady[3] = 30, 10
    shifted = [0] * SCORE_BINS
    shifted[12], shifted[13] = 30, 10
    reference = Reference(tuple(c * 10 for c in steady), 0.1)
    ids, registered = {}, []
    for name in ("cam-1", "cam-2"):
        st = station_for_token(engine, add_station(engine, name, "line-a"))
        assert st is not None
        ids[name] = st.id
        registered.append(st)
        # 80 shifted frames each: too few for a station, 160 together: enough for the line.
        for minute in (1, 2):
            beat = HeartbeatIn(frames=40, model_version=3, score_hist=shifted, window_ng=4)
            record_heartbeat(engine, st, beat, now=T0 + dt.timedelta(minutes=minute))
    rows = [
        {"station_id": ids[name], "station": name, "line": "line-a",
         "captured_at": (T0 + dt.timedelta(minutes=i)).replace(tzinfo=None), "received_at": T0.replace(tzinfo=None),
         "sha256": f"{k * 10 + i:064x}", "image_key": f"{k}-{i}.jpg", "content_type": "image/jpeg", "size_bytes": 1,
         "width": 1, "height": 1, "scores": {}, "boxes": []}
        for k, name in enumerate(ids) for i in range(3)
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(captures), rows)

    checks = check_line(engine, "line-a", lambda v: reference if v == 3 else None, 3, cfg, T0 + dt.timedelta(minutes=3))
    assert [(c.scope, c.assessment.status) for c in checks] == [
        ("station cam-1", "too few frames"), ("station cam-2", "too few frames"), ("line line-a", "alarm"),
    ]  # fmt: skip
    line_check = checks[-1]
    assert line_check.raised and len(line_check.queued) == cfg.queue_max  # the line's newest frames, both stations
    assert {r["station"] for r in rows if r["sha256"] in _shas(engine, line_check.queued)} == {"cam-1", "cam-2"}

    # The shift ends: 20 minutes later the window holds only steady beats, and the alarm clears.
    for st in registered:
        for minute in (21, 22):
            beat = HeartbeatIn(frames=40, model_version=3, score_hist=steady, window_ng=4)
            record_heartbeat(engine, st, beat, now=T0 + dt.timedelta(minutes=minute))
    later = check_line(engine, "line-a", lambda v: reference if v == 3 else None, 3, cfg, T0 + dt.timedelta(minutes=23))
    assert later[-1].assessment.status == "ok" and later[-1].alarm is None
    assert alarms(engine) == [] and alarms(engine, open_only=False)[0].cleared_at is not None
    assert {c.status for c in latest_checks(engine, "line-a") if c.station is None} == {"ok"}


def _shas(engine: sa.Engine, capture_ids: tuple[int, ...]) -> set[str]:
    with engine.connect() as conn:
        found = conn.execute(sa.select(captures.c.sha256).where(captures.c.id.in_(capture_ids))).scalars()
        return set(found)
