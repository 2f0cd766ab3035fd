"""Issue #14: bad input on the command line is a one-line error naming the item, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from crux.cli import app
from crux.errors import CruxError


@pytest.fixture
def params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    doc = {
        "labelstudio": {"projects": {"line-a": {"title": "A", "kind": "detect", "classes": {"dent": "#ff0000"}}}},
        "ingest": {"database_url": f"sqlite:///{tmp_path}/ingest.db", "storage_url": str(tmp_path / "captures")},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stations", "add", "../etc", "--line", "line-a"], "station '../etc' is not a valid name"),
        (["stations", "add", "cam-1", "--line", "nosuchline"], "'nosuchline' is not declared in labelstudio.projects"),
        (["stations", "add", "cam-1", "--line", "../x"], "'../x' is not declared in labelstudio.projects"),
    ],
)
def test_stations_add_refuses_bad_names_and_unknown_lines(params: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, [*args, "--params", str(params)])
    assert result.exit_code != 0
    assert isinstance(result.exception, CruxError) and message in str(result.exception)
    assert not (params.parent / "ingest.db").exists()  # refused before the database is even created


def test_stations_add_on_a_declared_line_prints_a_token(params: Path) -> None:
    result = CliRunner().invoke(app, ["stations", "add", "cam-1", "--line", "line-a", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("crux_")


def test_import_with_a_missing_predictions_file_is_refused_before_connecting(params: Path, tmp_path: Path) -> None:
    args = ["import", "line-a", str(tmp_path), "--predictions", str(tmp_path / "missing.jsonl")]
    result = CliRunner().invoke(app, [*args, "--params", str(params)])
    assert result.exit_code != 0
    assert isinstance(result.exception, CruxError) and "missing.jsonl: file not found" in str(result.exception)


def test_keys_rotate_keeps_the_old_public_key_and_says_what_to_trust(params: Path) -> None:
    from crux.ship.signing import key_id, load_public_key

    runner = CliRunner()
    assert runner.invoke(app, ["keys", "init", "--params", str(params)]).exit_code == 0
    keys = params.parent / ".crux" / "keys"
    old_id = key_id(load_public_key((keys / "publish.pub").read_bytes()))
    result = runner.invoke(app, ["keys", "rotate", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert key_id(load_public_key((keys / f"publish-{old_id}.pub").read_bytes())) == old_id
    assert key_id(load_public_key((keys / "publish.pub").read_bytes())) != old_id
    assert f"add {keys / f'publish-{old_id}.pub'} to edge.public_keys" in " ".join(result.stdout.split())


# Every command, with a representative bad input: exit code 1, a one-line `error:` naming the item, no traceback.
# "typo" runs the command against a params file with a misspelt section; "line" against one declaring line-a.
BAD_INPUT: dict[str, tuple[str, list[str], str]] = {
    "import": ("line", ["import", "nosuchline", "{tmp}"], "nosuchline"),
    "snapshot": ("line", ["snapshot", "nosuchline"], "nosuchline"),
    "export-dataset": ("line", ["export-dataset", "{tmp}/none", "{tmp}/out", "--format", "yolo"], "none"),
    "prepare": ("line", ["prepare", "{tmp}/none", "{tmp}/prepared"], "none"),
    "train": ("line", ["train", "{tmp}/none", "{tmp}/candidate"], "none"),
    "evaluate": ("line", ["evaluate", "{tmp}/none", "{tmp}/none", "{tmp}/metrics"], "none"),
    "export": ("line", ["export", "{tmp}/none", "{tmp}/export"], "none"),
    "publish": ("line", ["publish", "{tmp}/none", "nosuchline"], "none"),
    "rollback": ("line", ["rollback", "nosuchline"], "publish.key"),
    "predict": ("line", ["predict", "{tmp}/none", "{tmp}/frame.png"], "publish.pub"),
    "collect": ("line", ["collect", "nosuchline"], "nosuchline"),
    "cycle": ("line", ["cycle", "nosuchline"], "nosuchline"),
    "deploy": ("line", ["deploy", "nosuchline"], "nosuchline"),
    "trigger": ("line", ["trigger", "nosuchline"], "nosuchline"),
    "demo": ("line", ["demo", "--neu", "{tmp}/none"], "neu-cls"),
    "labelstudio up": ("typo", ["labelstudio", "up"], "trian"),
    "labelstudio down": ("typo", ["labelstudio", "down"], "trian"),
    "labelstudio status": ("typo", ["labelstudio", "status"], "trian"),
    "labelstudio url": ("typo", ["labelstudio", "url"], "trian"),
    "project sync": ("typo", ["project", "sync", "line-a"], "trian"),
    "annotators add": ("line", ["annotators", "add", "not-an-email"], "not-an-email"),
    "data diff": ("line", ["data", "diff", "nosuchrev"], "nosuchrev"),
    "data check": ("line", ["data", "check", "nosuchline"], "nosuchline"),
    "keys init": ("typo", ["keys", "init"], "trian"),
    "keys rotate": ("line", ["keys", "rotate"], "publish.key"),
    "models list": ("line", ["models", "list", "nosuchline"], "publish.pub"),
    "edge run": ("line", ["edge", "run", "nosuchline"], "publish.pub"),
    "ingest serve": ("typo", ["ingest", "serve"], "trian"),
    "stations add": ("line", ["stations", "add", "../etc", "--line", "line-a"], "../etc"),
    "stations revoke": ("line", ["stations", "revoke", "nosuchstation"], "nosuchstation"),
    "webhooks serve": ("typo", ["webhooks", "serve"], "trian"),
    "console serve": ("typo", ["console", "serve"], "trian"),
    "review": ("line", ["review", "nosuchline"], "nosuchline"),
    "data agreement": ("line", ["data", "agreement", "nosuchline"], "nosuchline"),
}


def _all_commands() -> set[str]:
    import typer

    group = typer.main.get_command(app)
    names = set()
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        sub = getattr(command, "commands", None)
        names.update(f"{name} {s}" for s in sub) if sub else names.add(name)
    return names


def test_every_command_has_a_bad_input_case() -> None:
    assert _all_commands() == set(BAD_INPUT), "add a representative bad input for each new command"


@pytest.mark.parametrize("command", sorted(BAD_INPUT))
def test_bad_input_exits_1_with_one_error_line_and_no_traceback(
    command: str, params: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from crux.cli import main

    which, args, item = BAD_INPUT[command]
    if which == "typo":
        params = tmp_path / "typo.yaml"
        params.write_text("trian: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    monkeypatch.setattr("sys.argv", ["crux", *argv, "--params", str(params)])
    with pytest.raises(SystemExit) as exited:
        main()  # anything but a CruxError propagates here and fails the test
    output = capfd.readouterr()
    text = " ".join((output.out + output.err).split())
    assert exited.value.code == 1, text
    assert "error:" in text and item in "".join(text.split()), text  # rich wraps long paths mid-word
    assert "Traceback" not in text
