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
