"""The edge's score histogram in its heartbeats (crux.edge.heartbeat): each beat carries the frames judged since the
last beat that arrived, so a lost beat's frames come with the next one and the ingest's histograms add up to every
judged frame. Through the real ingest API (FastAPI app in process, SQLite)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from fastapi.testclient import TestClient

from crux.collect import IngestSettings, add_station, create_app, create_db_engine, migrate
from crux.collect.heartbeats import station_history, windows
from crux.edge.heartbeat import HeartbeatSender, heartbeat_payload
from crux.edge.runtime import EdgeConfig, EdgeRuntime
from crux.monitor.drift import SCORE_BINS


def judge(runtime: EdgeRuntime, bins: dict[int, int], ng: int) -> None:
    """What EdgeRuntime.process adds per judged frame, without a model (the runtime's own tests run real frames)."""
    for index, n in bins.items():
        runtime.score_counts[index] += n
        runtime.frames += n
    runtime.ng += ng


def test_a_lost_beat_s_frames_arrive_with_the_next(tmp_path: Path) -> None:
    settings = IngestSettings(database_url=f"sqlite:///{tmp_path}/i.db", storage_url=str(tmp_path / "images"))
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    token = add_station(engine, "cam-1", "line-a")
    runtime = EdgeRuntime("unused", "line-a", EdgeConfig(station="cam-1"), [], tmp_path / "edge")
    assert heartbeat_payload(runtime, None, 30.0)["score_hist"] == [0] * SCORE_BINS
    with TestClient(create_app(settings)) as client:
        sender = HeartbeatSender("http://testserver", token, runtime, None, 30.0, client=client)
        judge(runtime, {3: 5}, ng=2)
        assert sender.beat()
        judge(runtime, {4: 7}, ng=1)
        sender.token = "crux_st_not-this-one"  # one beat refused (401): not delivered
        assert not sender.beat()
        sender.token = token
        judge(runtime, {19: 2}, ng=2)
        assert sender.beat()
        assert sender.beat()  # nothing judged since: an empty window
    points = station_history(engine, "cam-1", dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    assert [(p.window_frames, p.window_ng) for p in points] == [(5, 2), (9, 3), (0, 0)]
    (w,) = windows(engine, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    assert (w.window.frames, w.window.ng) == (14, 5) == (sum(runtime.score_counts), runtime.ng)
    assert (w.window.counts[3], w.window.counts[4], w.window.counts[19]) == (5, 7, 2)
