"""Issue #25 defect 12: `crux edge run` asks the real ingest service who its token belongs to before the first
frame, and a station the service would refuse (unknown, revoked, another name, another line) stops it with a
message saying how to register it, instead of a day of refused uploads."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from crux.cli import app
from crux.collect import IngestSettings, add_station, create_db_engine, migrate, revoke_station
from crux.collect.ingest_server import free_port, running_server
from crux.edge.heartbeat import StationSetupError, check_station
from crux.errors import CruxError

pytestmark = pytest.mark.integration


@pytest.fixture
def ingest(tmp_path: Path) -> tuple[str, dict[str, str]]:
    settings = IngestSettings(database_url=f"sqlite:///{tmp_path}/i.db", storage_url=str(tmp_path / "images"))
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    tokens = {name: add_station(engine, name, "line-a") for name in ("cam-1", "cam-2", "gone")}
    revoke_station(engine, "gone")
    with running_server(settings) as url:
        yield url, tokens
    engine.dispose()


def test_the_station_check_against_the_real_ingest(ingest: tuple[str, dict[str, str]]) -> None:
    url, tokens = ingest
    assert httpx.get(f"{url}/v1/station", headers={"Authorization": f"Bearer {tokens['cam-1']}"}).json() == {
        "name": "cam-1",
        "line": "line-a",
    }
    assert check_station(url, tokens["cam-1"], "cam-1", "line-a") is None
    with pytest.raises(StationSetupError) as unknown:
        check_station(url, "crux_st_not-a-token", "cam-9", "line-a")
    assert f"station 'cam-9' is not registered at {url}" in str(unknown.value)
    assert "crux stations add cam-9 --line line-a" in str(unknown.value)
    with pytest.raises(StationSetupError, match="not registered"):
        check_station(url, tokens["gone"], "gone", "line-a")  # revoked
    with pytest.raises(StationSetupError) as other:
        check_station(url, tokens["cam-2"], "cam-1", "line-a")
    assert "belongs to station 'cam-2'" in str(other.value) and "--station cam-2" in str(other.value)
    with pytest.raises(StationSetupError, match=r"registered at .* on line 'line-a', but this box runs line 'line-b'"):
        check_station(url, tokens["cam-1"], "cam-1", "line-b")


def test_an_unreachable_ingest_is_a_warning_not_a_stop() -> None:
    warning = check_station(f"http://127.0.0.1:{free_port()}", "crux_st_x", "cam-1", "line-a", timeout_s=2)
    assert warning is not None and "not reachable" in warning


def test_edge_run_stops_at_start_when_the_ingest_refuses_the_station(
    ingest: tuple[str, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, tokens = ingest
    params = tmp_path / "params.yaml"
    # The params file names another station and no ingest: the flags and the environment set this box's identity.
    params.write_text(json.dumps({"edge": {"remote": str(tmp_path / "remote"), "station": "edge-1"}}))
    monkeypatch.setenv("CRUX_STATION_TOKEN", tokens["cam-1"])
    monkeypatch.setenv("CRUX_INGEST_URL", url)
    runner = CliRunner()
    result = runner.invoke(app, ["edge", "run", "line-a", "--glob", "none/*.jpg", "--params", str(params)])
    assert isinstance(result.exception, CruxError), result.output
    assert "belongs to station 'cam-1'" in str(result.exception) and "'edge-1'" in str(result.exception)
    monkeypatch.setenv("CRUX_STATION_TOKEN", "crux_st_wrong")
    result = runner.invoke(app, ["edge", "run", "line-a", "--station", "cam-7", "--params", str(params)])
    assert isinstance(result.exception, CruxError), result.output
    assert f"station 'cam-7' is not registered at {url}" in str(result.exception)
    # With the right name the check passes and start-up goes on (to the next check: no model published here).
    monkeypatch.setenv("CRUX_STATION_TOKEN", tokens["cam-1"])
    result = runner.invoke(app, ["edge", "run", "line-a", "--station", "cam-1", "--params", str(params)])
    assert isinstance(result.exception, CruxError), result.output
    assert "no model of line 'line-a' published" in str(result.exception)
