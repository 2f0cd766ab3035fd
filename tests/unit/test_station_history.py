"""Heartbeats as a time series (crux.collect.heartbeats, migration 0004): every beat kept with its score histogram,
old ones dropped as new ones arrive, the drift window summed per station; and the station page's history chart
(crux.console.stations_view.history_svg): axes from 0, a silence breaks the line, many beats are averaged."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pydantic import ValidationError

from crux.collect import add_station, create_db_engine, migrate
from crux.collect.heartbeats import (
    HISTORY_RETENTION,
    HeartbeatIn,
    HistoryPoint,
    latest_heartbeats,
    record_heartbeat,
    station_history,
    windows,
)
from crux.collect.stations import station_for_token
from crux.console.stations_view import history_svg
from crux.monitor.drift import SCORE_BINS

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SVG = "{http://www.w3.org/2000/svg}"


def hist(*pairs: tuple[int, int]) -> list[int]:
    counts = [0] * SCORE_BINS
    for index, n in pairs:
        counts[index] = n
    return counts


def test_every_beat_is_kept_old_ones_dropped_and_windows_summed(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path}/h.db")
    migrate(engine)
    station = station_for_token(engine, add_station(engine, "cam-1", "line-a"))
    assert station is not None
    old = HeartbeatIn(frames=1, score_hist=hist((0, 1)), window_ng=0)
    record_heartbeat(engine, station, old, now=T0 - HISTORY_RETENTION - dt.timedelta(hours=1))
    for i in range(3):
        beat = HeartbeatIn(frames=10 * (i + 1), ng=i, fps=1.0 + i, model_version=2,
                           score_hist=hist((2, 8), (15, 2)), window_ng=2)  # fmt: skip
        record_heartbeat(engine, station, beat, now=T0 + dt.timedelta(minutes=i))
    record_heartbeat(engine, station, HeartbeatIn(frames=40, model_version=2), now=T0 + dt.timedelta(minutes=3))
    points = station_history(engine, "cam-1", T0 - dt.timedelta(days=30))
    # The beat older than the retention went when the next one came; an older edge's beat (no histogram) stays.
    assert [p.fps for p in points] == [1.0, 2.0, 3.0, None]
    assert [p.window_frames for p in points] == [10, 10, 10, None]
    assert len(latest_heartbeats(engine)) == 1  # the latest-beat table still holds one row per station
    (w,) = windows(engine, T0 - dt.timedelta(seconds=1), "line-a")
    assert (w.station, w.model_version, w.window.frames, w.window.ng) == ("cam-1", 2, 30, 6)
    assert w.window.counts[2] == 24 and w.window.counts[15] == 6
    assert windows(engine, T0 + dt.timedelta(minutes=5)) == []


def test_a_heartbeat_histogram_must_be_whole() -> None:
    for bad in ({"score_hist": [1] * 5}, {"score_hist": [-1] * SCORE_BINS}, {"window_ng": 3},
                {"score_hist": hist((1, 2)), "window_ng": 3}):  # fmt: skip
        with pytest.raises(ValidationError):
            HeartbeatIn(**bad)  # type: ignore[arg-type]


def point(minutes: float, fps: float | None = 2.0, ng: float | None = 0.1, ms: float | None = 4.0) -> HistoryPoint:
    return HistoryPoint(T0 + dt.timedelta(minutes=minutes), 1, fps, ms, ng, 100, 10)


def test_the_history_chart_starts_each_axis_at_zero_and_breaks_at_a_silence() -> None:
    points = [point(m) for m in range(0, 60, 5)] + [point(m, fps=3.0) for m in range(120, 180, 5)]
    svg = ET.fromstring(history_svg(points, T0, T0 + dt.timedelta(hours=3)))
    texts = [t.text for t in svg.iter(SVG + "text")]
    assert {"frames/s", "NG rate", "median latency", "0.00", "0.0%", "0.0 ms", "3.00"} <= set(texts)
    assert len(list(svg.iter(SVG + "polyline"))) == 6  # 3 panels x 2 runs either side of the hour's silence
    # A constant series is drawn flat at the top of its 0-based axis, not zoomed into noise.
    latency = list(svg.iter(SVG + "polyline"))[4].get("points", "")
    assert len({xy.split(",")[1] for xy in latency.split()}) == 1


def test_the_history_chart_averages_many_beats_and_says_when_there_is_none() -> None:
    points = [point(m / 10, fps=float(m % 2)) for m in range(3000)]
    svg = history_svg(points, T0, T0 + dt.timedelta(minutes=300), max_points=100)
    (first, *_) = [e for e in ET.fromstring(svg).iter(SVG + "polyline")]
    assert len(first.get("points", "").split()) == 100  # bucket means, not 3000 vertices
    empty = history_svg([point(0, fps=None, ng=None, ms=None)], T0, T0 + dt.timedelta(hours=1))
    assert empty.count("no heartbeat in this period") == 3
