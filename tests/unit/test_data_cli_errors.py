"""Issue #23: `crux data check` and `crux export-dataset` against a real dataset repository (git + DVC): a bad or
too-early --rev, a damaged dataset folder and a DEST that is a file are one-line errors, never tracebacks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from console_support import LINE, dataset_versions, git


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data-cli")
    repo = root / "repo"
    dataset_versions(repo, root / "files")
    classes = {"scratch": "#ff0000", "spot": "#00ff00"}
    doc = {"labelstudio": {"projects": {LINE: {"title": "A", "kind": "detect", "classes": classes}}}}
    (repo / "params.yaml").write_text(yaml.safe_dump(doc))
    return repo


def run(repo: Path, args: list[str], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> str:
    """The CLI in-process; returns its one-line error (asserting exit 1, no traceback)."""
    from crux.cli import main

    monkeypatch.chdir(repo)
    monkeypatch.setattr("sys.argv", ["crux", *args, "--params", str(repo / "params.yaml")])
    with pytest.raises(SystemExit) as exited:
        main()  # anything but a CruxError propagates and fails the test
    output = capfd.readouterr()
    text = " ".join((output.out + output.err).split())
    assert exited.value.code == 1, text
    assert "Traceback" not in text and text.startswith("error:"), text
    return text


@pytest.mark.parametrize(
    "command", [["data", "check", LINE], ["export-dataset", LINE, "{tmp}/out", "--format", "coco"]]
)
@pytest.mark.parametrize(
    ("rev", "message"),
    [
        ("[/x]", "'[/x]' is not a git revision"),
        ("nosuchrev", "'nosuchrev' is not a git revision"),
        ("--help", "'--help' is not a git revision"),
        ("{first}", "has no dataset version"),
    ],
    ids=["markup", "missing", "option", "before-data"],
)
def test_bad_revisions_are_one_line_errors(
    repo: Path,
    tmp_path: Path,
    command: list[str],
    rev: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    first = git(repo, "rev-list", "--max-parents=0", "HEAD").strip()
    args = [a.replace("{tmp}", str(tmp_path)) for a in command] + [f"--rev={rev.replace('{first}', first)}"]
    assert message in run(repo, args, monkeypatch, capfd)


@pytest.fixture
def damaged(repo: Path, tmp_path: Path) -> Path:
    """A copy of the repository whose workspace dataset the test damages."""
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, symlinks=True)
    return copy


@pytest.mark.parametrize(
    "command", [["data", "check", LINE], ["export-dataset", LINE, "{tmp}/out", "--format", "coco"]]
)
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "manifest.jsonl").write_bytes(b"\xff\xfe\x00binary"), "manifest.jsonl: not UTF-8 text"),
        (lambda d: (d / "classes.json").unlink(), "classes.json: missing"),
        (lambda d: (d / "classes.json").write_text("[1, 2]"), "classes.json: not a classes object"),
        (lambda d: (d / "classes.json").write_bytes(b"\xff"), "classes.json: not JSON"),
    ],
    ids=["binary-manifest", "no-classes", "list-classes", "binary-classes"],
)
def test_damaged_dataset_folders_are_one_line_errors(
    damaged: Path,
    tmp_path: Path,
    command: list[str],
    damage,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    folder = damaged / "data" / LINE
    for path in (folder / "manifest.jsonl", folder / "classes.json"):
        if path.is_symlink() or path.exists():
            data = path.read_bytes()
            path.unlink()
            path.write_bytes(data)  # DVC may link the cache read-only: damage a copy, never the cache
    damage(folder)
    assert message in run(damaged, [a.replace("{tmp}", str(tmp_path)) for a in command], monkeypatch, capfd)


def test_export_into_a_file_is_refused(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "dest"
    dest.write_text("not a folder")
    text = run(repo, ["export-dataset", LINE, str(dest), "--format", "yolo"], monkeypatch, capfd)
    assert "dest is a file" in text


def test_data_check_names_undeclared_projects_with_a_suggestion(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    text = run(repo, ["data", "check", "line-aa"], monkeypatch, capfd)
    assert "project 'line-aa' is not declared" in text and "did you mean 'line-a'?" in text
