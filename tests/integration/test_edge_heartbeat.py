"""`crux edge run` with an ingest service: the station's heartbeat arrives (station token, model, frame counts),
and with the service down the frames are inspected all the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from console_support import LINE, publish_versions
from typer.testing import CliRunner

from crux.cli import app
from crux.collect import IngestSettings, add_station, create_db_engine, migrate
from crux.collect.heartbeats import latest_heartbeats
from crux.collect.ingest_server import free_port, make_jpeg, running_server

pytestmark = pytest.mark.integration


def params_file(tmp: Path, remote: Path, public_key: Path, ingest_url: str) -> Path:
    path = tmp / "params.yaml"
    path.write_text(
        json.dumps(
            {
                "edge": {
                    "remote": str(remote),
                    "public_keys": [str(public_key)],
                    "state_dir": str(tmp / "edge"),
                    "outbox_dir": str(tmp / "outbox"),
                    "ingest_url": ingest_url,
                    "station": "cam-1",
                    "heartbeat_interval_s": 30.0,
                }
            }
        )
    )
    return path


def frames(tmp: Path, n: int) -> str:
    folder = tmp / "frames"
    folder.mkdir()
    for i in range(n):
        (folder / f"{i}.jpg").write_bytes(make_jpeg(i, size=64))
    return str(folder / "*.jpg")


def test_edge_run_sends_a_heartbeat_with_its_model_and_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    remote = tmp_path / "remote"
    _, pub = publish_versions(tmp_path, remote)
    settings = IngestSettings(database_url=f"sqlite:///{tmp_path}/i.db", storage_url=str(tmp_path / "images"))
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    monkeypatch.setenv("CRUX_STATION_TOKEN", add_station(engine, "cam-1", LINE))
    with running_server(settings) as url:
        params = params_file(tmp_path, remote, pub, url)
        result = CliRunner().invoke(app, ["edge", "run", LINE, "--glob", frames(tmp_path, 6), "--no-poll",
                                          "--params", str(params)])  # fmt: skip
        assert result.exit_code == 0, result.output
    (beat,) = latest_heartbeats(engine)
    assert (beat.station, beat.line, beat.model_version, beat.frames) == ("cam-1", LINE, 2, 6)
    assert beat.latency_p50_ms is not None and beat.latency_p50_ms > 0
    assert beat.outbox_pending is not None


def test_edge_run_inspects_every_frame_while_the_ingest_service_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = tmp_path / "remote"
    _, pub = publish_versions(tmp_path, remote)
    monkeypatch.setenv("CRUX_STATION_TOKEN", "crux_st_nobody-listens")
    params = params_file(tmp_path, remote, pub, f"http://127.0.0.1:{free_port()}")
    result = CliRunner().invoke(app, ["edge", "run", LINE, "--glob", frames(tmp_path, 6), "--no-poll",
                                      "--params", str(params)])  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 6 and all("verdict" in r for r in records)
