"""`crux worker start`: Prefect's process worker for params `deploy.work_pool`, with CRUX_WORKDIR = this project
folder and the heartbeat period the crashed-run automation watches (tests/integration/test_workers_topology.py runs
two of them for real)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from crux.cli import app
from crux.errors import CruxError


@pytest.fixture
def params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"deploy": {"work_pool": "gpu", "heartbeat_s": 45}}))
    return path


def test_worker_start_execs_a_prefect_process_worker_in_the_project_folder(
    params: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.setattr("os.execve", lambda path, args, env: calls.append((path, args, env)))
    result = CliRunner().invoke(app, ["worker", "start", "--name", "gpu-1", "--params", str(params)])
    assert result.exit_code == 0, result.output
    ((path, args, env),) = calls
    assert path == sys.executable
    assert args[1:] == ["-m", "prefect", "worker", "start", "--pool", "gpu", "--type", "process",
                        "--name", "gpu-1", "--limit", "1"]  # fmt: skip
    assert env["CRUX_WORKDIR"] == str(params.parent.resolve())
    assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "45"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"


@pytest.mark.parametrize(
    ("deploy", "api", "message"),
    [
        ({"work_pool": "gpu"}, None, "PREFECT_API_URL is not set"),
        ({"work_pool": None}, "http://127.0.0.1:4200/api", "deploy.work_pool is null"),
        ({"heartbeat_s": 5}, "http://127.0.0.1:4200/api", "deploy.heartbeat_s: 5"),
    ],
)
def test_worker_start_refuses_before_starting_anything(
    deploy: dict, api: str | None, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"deploy": deploy}))
    if api is None:
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
    else:
        monkeypatch.setenv("PREFECT_API_URL", api)
    monkeypatch.setattr("os.execve", lambda *a: pytest.fail("started a worker"))
    result = CliRunner().invoke(app, ["worker", "start", "--params", str(params)])
    assert isinstance(result.exception, CruxError) and message in str(result.exception)
