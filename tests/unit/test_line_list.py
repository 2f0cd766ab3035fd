"""Issue 24, one list of lines: pipeline.lines is what dvc.yaml trains and what deploy, the cycle, `crux cycle`,
`crux trigger` and the webhook receiver accept. A declared project outside it is refused before any side effect
(no Prefect, no fetch, no snapshot, no commit), with how to enable it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from crux.cli import app
from crux.config import ConfigError
from crux.settings import (
    LineNotTrainableError,
    git_config,
    load_context,
    require_trainable,
    trainable_lines,
    untrainable_lines,
)

REPO = Path(__file__).resolve().parents[2]
PROJECT = {"title": "T", "kind": "classify", "classes": {"ok": "#000000", "ng": "#ff0000"}}


@pytest.fixture
def params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    doc = {
        "labelstudio": {"projects": {"line-a": PROJECT, "line-new": PROJECT}},
        "pipeline": {"lines": ["line-a"]},
        "ingest": {"database_url": f"sqlite:///{tmp_path}/ingest.db", "storage_url": str(tmp_path / "captures")},
    }
    path.write_text(yaml.safe_dump(doc))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    return path


def test_dvc_yaml_stages_foreach_over_pipeline_lines() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages and {name: stage.get("foreach") for name, stage in stages.items()} == {
        name: "${pipeline.lines}" for name in stages
    }
    shipped = load_context(REPO / "params.yaml")
    assert trainable_lines(shipped.params) == shipped.params["pipeline"]["lines"]
    # The shipped plant declares lines that cannot train yet: those are exactly the ones deploy skips.
    assert set(untrainable_lines(shipped)) == set(shipped.params["labelstudio"]["projects"]) - set(
        shipped.params["pipeline"]["lines"]
    )


def test_a_declared_line_outside_pipeline_lines_is_refused_with_how_to_enable_it(params: Path) -> None:
    ctx = load_context(params)
    require_trainable(ctx, "line-a")
    with pytest.raises(LineNotTrainableError) as exc:
        require_trainable(ctx, "line-new")
    message = str(exc.value)
    assert "crux snapshot line-new --commit" in message and "add line-new to pipeline.lines" in message
    with pytest.raises(ConfigError, match="did you mean 'line-a'"):
        require_trainable(ctx, "line-aa")


@pytest.mark.parametrize("command", [["cycle", "line-new"], ["trigger", "line-new"], ["deploy", "line-new"]])
def test_cli_refuses_before_prefect_and_before_any_commit(params: Path, command: list[str]) -> None:
    head_before = subprocess.run(["git", "log", "--oneline"], cwd=params.parent, capture_output=True, text=True)
    result = CliRunner().invoke(app, [*command, "--params", str(params)])
    assert result.exit_code != 0
    assert isinstance(result.exception, LineNotTrainableError), result.output
    assert "add line-new to pipeline.lines" in str(result.exception)
    assert not (params.parent / ".crux").exists()  # no Prefect home, no export, nothing written
    assert not (params.parent / "data").exists()
    head_after = subprocess.run(["git", "log", "--oneline"], cwd=params.parent, capture_output=True, text=True)
    assert head_after.stdout == head_before.stdout == ""


def test_the_cycle_flow_refuses_before_its_first_task(params: Path) -> None:
    from flows import cycle as cycle_module

    calls: list[str] = []

    class Spy:
        def __call__(self, *args: object, **kwargs: object) -> None:
            calls.append("task")

    with pytest.MonkeyPatch.context() as mp:
        for name in ("git_sync_task", "line_data_task", "snapshot_task", "reproduce_task", "push_task"):
            mp.setattr(cycle_module, name, Spy())
        with pytest.raises(LineNotTrainableError, match="line-new"):
            cycle_module.cycle.fn("line-new", params_path=str(params))
    assert calls == []  # refused before the git sync, the data pull and the snapshot


def test_git_section_is_validated_and_defaults_to_no_shared_remote(params: Path) -> None:
    cfg = git_config(load_context(params))
    assert cfg.remote is None and cfg.branch == "main" and not cfg.shared
    doc = yaml.safe_load(params.read_text())
    for bad, message in (
        ({"remote": "x", "brunch": "main"}, "unknown key"),
        ({"branch": "-x"}, "not a branch name"),
        ({"branch": "a..b"}, "not a branch name"),
        ({"remote": "--upload-pack=evil"}, "not a git remote"),
        ({"push_attempts": 0}, "push_attempts"),
    ):
        params.write_text(yaml.safe_dump({**doc, "git": bad}))
        with pytest.raises(ConfigError, match=message):
            git_config(load_context(params))
    shipped = git_config(load_context(REPO / "params.yaml"))
    assert shipped.remote is None and shipped.branch == "main"


def test_deploy_registers_only_trainable_lines_and_says_which_it_skipped(
    params: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows import deploy

    registered: list[list[str]] = []
    kept: list[list[str]] = []
    monkeypatch.setattr(deploy, "deployments_from_config", lambda names, cfg, working_dir=None: list(names))
    monkeypatch.setattr(deploy, "register", lambda deployments, pool, *_: registered.append(deployments) or ["id-1"])
    monkeypatch.setattr(deploy, "prune", lambda names: kept.append(list(names)) or ["cycle-line-new"])
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # never reached: register is replaced
    # prefect_defaults() only fills these when unset: set here, nothing leaks into later tests.
    monkeypatch.setenv("PREFECT_HOME", str(params.parent / "prefect"))
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    result = CliRunner().invoke(app, ["deploy", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert registered == [["line-a"]] and kept == [["line-a"]]
    assert "line-new: skipped" in result.output and "not in pipeline.lines" in result.output
    assert "crux snapshot line-new --commit" in result.output
    assert "cycle-line-new: removed (no longer in pipeline.lines)" in result.output


def test_the_console_shows_a_declared_line_outside_pipeline_lines_as_labelling_only(
    params: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from crux.collect import create_db_engine
    from crux.console.app import create_console_app
    from crux.console.deps import ConsoleConfig
    from crux.console.sources import DatasetReader, IngestReader, ModelReader
    from crux.settings import console_config

    lines = console_config(load_context(params), None, 2.0).lines
    assert [(line.name, line.trainable) for line in lines] == [("line-a", True), ("line-new", False)]
    cfg = ConsoleConfig(
        lines=lines,
        ingest=IngestReader(create_db_engine(f"sqlite:///{tmp_path}/console.db"), str(tmp_path)),
        models=ModelReader(str(tmp_path / "empty-remote")),
        datasets=DatasetReader(tmp_path),
        timeout_s=2.0,
        warm_timeout_s=0.0,
    )
    client = TestClient(create_console_app(cfg))
    overview = client.get("/").text
    row = overview[overview.index('data-line="line-new"') :]
    assert "labelling only: not in pipeline.lines" in row
    assert (
        "labelling only" not in overview[overview.index('data-line="line-a"') : overview.index('data-line="line-new"')]
    )
    assert "labelling only: not in pipeline.lines" in client.get("/lines/line-new").text
    assert "labelling only" not in client.get("/lines/line-a").text
