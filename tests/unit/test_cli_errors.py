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
    "project restore": ("line", ["project", "restore", "line-a", "--rev", "nosuchrev"], "nosuchrev"),
    "annotators add": ("line", ["annotators", "add", "not-an-email"], "not-an-email"),
    "data diff": ("line", ["data", "diff", "nosuchrev"], "nosuchrev"),
    "data check": ("line", ["data", "check", "nosuchline"], "nosuchline"),
    "data remote": ("line", ["data", "remote", "gs://bucket/dvc"], "gs://bucket/dvc"),
    "keys init": ("typo", ["keys", "init"], "trian"),
    "keys rotate": ("line", ["keys", "rotate"], "publish.key"),
    "models list": ("line", ["models", "list", "nosuchline"], "publish.pub"),
    "edge run": ("line", ["edge", "run", "nosuchline"], "nosuchline"),
    "ingest serve": ("typo", ["ingest", "serve"], "trian"),
    "stations add": ("line", ["stations", "add", "../etc", "--line", "line-a"], "../etc"),
    "stations revoke": ("line", ["stations", "revoke", "nosuchstation"], "nosuchstation"),
    "webhooks serve": ("typo", ["webhooks", "serve"], "trian"),
    "worker start": ("typo", ["worker", "start"], "trian"),
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


# Issue #23: user text is printed as given, brackets included, and never crashes the printing (rich markup).
BRACKETED: dict[str, tuple[list[str], str]] = {
    "data check": (["data", "check", "[/x]"], "project '[/x]' is not declared"),
    "stations add": (["stations", "add", "[b]cam[/b]", "--line", "line-a"], "station '[b]cam[/b]'"),
    "publish": (["publish", "[/x]", "{tmp}/none"], "'[/x]' is not declared"),
    "predict": (["predict", "{tmp}/[b]model", "{tmp}/frame.png"], "[b]model/card.json: not a model card"),
}


@pytest.mark.parametrize("command", sorted(BRACKETED))
def test_bracketed_user_text_is_printed_verbatim_on_one_line(
    command: str, params: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from crux.cli import main

    args, expected = BRACKETED[command]
    model = tmp_path / "[b]model"
    model.mkdir()
    (model / "card.json").write_text('{"kind": "[/x]"}')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal still gets one line
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    monkeypatch.setattr("sys.argv", ["crux", *argv, "--params", str(params)])
    with pytest.raises(SystemExit) as exited:
        main()
    output = capfd.readouterr()
    assert exited.value.code == 1, output
    lines = [line for line in (output.out + output.err).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert expected in lines[0], lines[0]


def test_json_outputs_are_strict_json() -> None:
    import json
    import math

    from crux.cli.terminal import json_text

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON output"))

    doc = {"score": math.nan, "scores": {"a": math.inf, "b": 0.5}, "boxes": [[-math.inf, 1.0]], "path": Path("p")}
    assert strict(json_text(doc)) == {
        "score": None,
        "scores": {"a": None, "b": 0.5},
        "boxes": [[None, 1.0]],
        "path": "p",
    }


def test_predict_json_stays_valid_when_the_model_outputs_nan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import hashlib
    import json

    import numpy as np
    from edge_support import onnx_graph_model
    from PIL import Image

    from crux.cli import main

    folder = tmp_path / "model"
    folder.mkdir()
    model = onnx_graph_model(folder / "model.onnx", 1, 32, [1.0, 0.0], nan_above=-9.0).read_bytes()
    card = {
        "format": "crux-model-card/1",
        "kind": "classify",
        "classes": ["ok", "ng"],
        "ok_class": "ok",
        "input": {"image_size": 32, "channels": 1, "mean": 0.5, "std": 0.25},
        "onnx": {"file": "model.onnx", "sha256": hashlib.sha256(model).hexdigest()},
    }
    (folder / "card.json").write_text(json.dumps(card))
    frame = tmp_path / "frame.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(frame)
    monkeypatch.setattr("sys.argv", ["crux", "predict", str(folder), str(frame), "--json"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0
    lines = capfd.readouterr().out.splitlines()
    record = json.loads(lines[0], parse_constant=lambda name: pytest.fail(f"{name} in JSON output"))
    assert record["image"] == str(frame) and "non-finite" in record["error"] and "label" not in record  # never OK


def _cli(params: Path, tmp_path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch, capfd) -> tuple[int, str]:
    from crux.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["crux", *args, "--params", str(params)])
    with pytest.raises(SystemExit) as exited:
        main()
    output = capfd.readouterr()
    text = " ".join((output.out + output.err).split())
    assert "Traceback" not in text, text
    return int(exited.value.code or 0), text


def test_keys_init_twice_says_a_key_exists_and_how_to_rotate(
    params: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    assert _cli(params, tmp_path, ["keys", "init"], monkeypatch, capfd)[0] == 0
    code, text = _cli(params, tmp_path, ["keys", "init"], monkeypatch, capfd)
    assert code == 1 and "publish.key exists" in text and "crux keys rotate" in text


@pytest.mark.parametrize(
    "args",
    [
        ["console", "serve", "--port", "-1"],
        ["ingest", "serve", "--port", "70000"],
        ["labelstudio", "up", "--port", "0"],
    ],
)
def test_ports_out_of_range_are_usage_errors(
    params: Path, tmp_path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    code, text = _cli(params, tmp_path, args, monkeypatch, capfd)
    assert code == 2 and "Invalid value for '--port'" in text, text


@pytest.mark.parametrize(
    ("url", "message"),
    [("mysql://u@h/db", "'mysql' is not supported"), ("garbage", "is not a database URL"),
     ("postgresql+pg8000://u@h/d", "driver 'postgresql+pg8000' is not installed")],
)  # fmt: skip
def test_unsupported_database_urls_are_one_line_errors(
    params: Path, tmp_path: Path, url: str, message: str, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    doc = yaml.safe_load(params.read_text())
    doc["ingest"]["database_url"] = url
    params.write_text(yaml.safe_dump(doc))
    code, text = _cli(params, tmp_path, ["stations", "add", "cam-1", "--line", "line-a"], monkeypatch, capfd)
    assert code == 1 and message in text, text


def test_edge_run_on_a_line_without_any_release_exits_instead_of_waiting(
    params: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load(params.read_text())
    doc["edge"] = {"remote": str(tmp_path / "remote")}
    (tmp_path / "remote" / "other-line").mkdir(parents=True)
    params.write_text(yaml.safe_dump(doc))
    code, text = _cli(params, tmp_path, ["edge", "run", "line-a", "--glob", "*.png"], monkeypatch, capfd)
    assert code == 1 and "no model of line 'line-a' published" in text and "(lines there: none)" in text
    code, text = _cli(params, tmp_path, ["edge", "run", "line-b", "--glob", "*.png"], monkeypatch, capfd)
    assert code == 1 and "line 'line-b' is not declared" in text and "did you mean 'line-a'?" in text
