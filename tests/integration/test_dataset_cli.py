"""The reviewer's workflow through the CLI, in a temporary git repo with real DVC and Label Studio:
snapshot --commit, no-op when nothing changed, relabel → a version whose diff names the task."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_neu_subset, neu_stems
from typer.testing import CliRunner

from crux.cli import app
from crux.config import LabelStudioConfig, from_mapping
from crux.label import importer
from crux.label.projects import sync_project

pytestmark = pytest.mark.integration


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "ci@crux.example")
    git(repo, "config", "user.name", "CI")
    subprocess.run([str(REPO / ".venv" / "bin" / "dvc"), "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(REPO / ".venv" / "bin" / "dvc"), "remote", "add", "-d", "local", str(tmp_path / "remote")],
                   cwd=repo, check=True)  # fmt: skip
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    return repo


def test_snapshot_commit_diff_check_export(ls_server: tuple, ls_client, ls_files_root: Path, repo: Path) -> None:
    settings, credentials = ls_server
    cfg = from_mapping(LabelStudioConfig, yaml.safe_load((repo / "params.yaml").read_text())["labelstudio"], "ls")
    spec = cfg.project("neu-det")
    project_id = sync_project(ls_client, "neu-det", spec).project_id
    source = copy_neu_subset(ls_files_root / "cli-neu", neu_stems(2))
    importer.import_items(ls_client, project_id, spec, importer.scan_source(str(source), spec, "yolo"), ls_files_root)

    env = {"CRUX_LS_URL": settings.url, "CRUX_LS_TOKEN": credentials.token}
    runner = CliRunner()

    def crux(*args: str) -> str:
        result = runner.invoke(app, [*args, "--params", str(repo / "params.yaml")], env=env)
        assert result.exit_code == 0, result.output
        return result.output

    assert "New dataset version" in crux("snapshot", "neu-det", "--commit")
    assert git(repo, "log", "-1", "--format=%s").startswith("data(neu-det): 12 items, +12 −0 ~0")
    assert "No change" in crux("snapshot", "neu-det", "--commit")
    assert git(repo, "rev-list", "--count", "HEAD") == "2\n"

    task = next(t for t in ls_client.tasks.list(project=project_id, fields="all") if "crazing" in t.data["source"])
    annotation = task.annotations[0]
    annotation = annotation if isinstance(annotation, dict) else annotation.dict()
    result = annotation["result"]
    for region in result:
        region["value"]["rectanglelabels"] = ["scratches"]
    ls_client.annotations.update(id=annotation["id"], result=result)
    assert "New dataset version" in crux("snapshot", "neu-det", "--commit")
    message = git(repo, "log", "-1", "--format=%B")
    assert "+0 −0 ~1" in message and "crazing: +0 −0 ~1" in message

    diff = json.loads(crux("data", "diff", "HEAD~1", "HEAD", "--json"))["neu-det"]
    assert [item["task_id"] for item in diff["relabelled"]] == [task.id]
    markdown = crux("data", "diff")  # workspace == HEAD: shows HEAD~1 → HEAD
    assert f"task {task.id}" in markdown and "crazing→scratches" in markdown

    check = runner.invoke(app, ["data", "check", "neu-det", "--params", str(repo / "params.yaml")], env=env)
    # Two images per class is below the minimum count: warnings, not errors, so exit 0.
    assert check.exit_code == 0, check.output
    assert "WARNING" in check.output and "crazing" in check.output
    export = repo.parent / "coco-v1"
    crux("export-dataset", "neu-det", str(export), "--format", "coco", "--rev", "HEAD~1")
    v1 = json.loads((export / "train" / "annotations.json").read_text())
    assert sum(len(json.loads((export / s / "annotations.json").read_text())["images"]) for s in
               ("train", "val", "test")) == 12  # fmt: skip
    assert v1["categories"][0]["name"] == "crazing"
