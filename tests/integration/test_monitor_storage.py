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
