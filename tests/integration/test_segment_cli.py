"""A segment project through the CLI with real DVC and Label Studio: snapshot --commit, a repainted mask shows
up in `crux data diff` with its IoU, `crux data check`, and `crux export-dataset --format masks` of an older rev."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import MAGNETIC_TILE, REPO
from PIL import Image
from typer.testing import CliRunner

from crux.cli import app
from crux.config import LabelStudioConfig, from_mapping
from crux.kinds import Label, get_kind
from crux.label import importer
from crux.label.projects import sync_project

pytestmark = pytest.mark.integration


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "ci@crux.example")
    git(repo, "config", "user.name", "CI")
    dvc = str(REPO / ".venv" / "bin" / "dvc")
    subprocess.run([dvc, "init", "-q"], cwd=repo, check=True)
    subprocess.run([dvc, "remote", "add", "-d", "local", str(tmp_path / "remote")], cwd=repo, check=True)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    return repo


def test_segment_versions_diff_check_and_export(ls_server: tuple, ls_client, ls_files_root: Path, repo: Path) -> None:
    if not MAGNETIC_TILE.exists():
        pytest.skip(f"{MAGNETIC_TILE} not present")
    settings, credentials = ls_server
    spec = from_mapping(LabelStudioConfig, yaml.safe_load((repo / "params.yaml").read_text())["labelstudio"], "ls")
    spec = spec.project("magnetic-tile")
    assert spec.kind == "segment"
    project_id = sync_project(ls_client, "magnetic-tile", spec).project_id
    source = ls_files_root / "cli-tiles"
    for folder in sorted(p.name for p in MAGNETIC_TILE.iterdir() if p.is_dir()):
        (source / folder).mkdir(parents=True)
        jpg = sorted((MAGNETIC_TILE / folder).glob("*.jpg"))[0]
        shutil.copy(jpg, source / folder / jpg.name)
        shutil.copy(jpg.with_suffix(".png"), source / folder / jpg.with_suffix(".png").name)
    scan = importer.scan_source(str(source), spec, "masks")
    importer.import_items(ls_client, project_id, spec, scan, ls_files_root)

    env = {"CRUX_LS_URL": settings.url, "CRUX_LS_TOKEN": credentials.token}
    runner = CliRunner()

    def crux(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*args, "--params", str(repo / "params.yaml")], env=env)
        assert result.exit_code == code, result.output
        return result.output

    assert "New dataset version" in crux("snapshot", "magnetic-tile", "--commit")
    v1 = [json.loads(line) for line in (repo / "data" / "magnetic-tile" / "manifest.jsonl").read_text().splitlines()]
    assert len(v1) == 6 and all(item["mask"].startswith("masks/") and item["verdict"] for item in v1)

    # An annotator repaints the crack somewhere else.
    task = next(t for t in ls_client.tasks.list(project=project_id, fields="all") if "MT_Crack" in t.data["source"])
    w, h = task.data["width"], task.data["height"]
    elsewhere = np.zeros((h, w), bool)
    elsewhere[5:25, 5:25] = True
    annotation = task.annotations[0]
    annotation = annotation if isinstance(annotation, dict) else annotation.dict()
    results = get_kind("segment").to_results([Label("Crack", mask=elsewhere), Label("Crack")], w, h)
    ls_client.annotations.update(id=annotation["id"], result=results)
    assert "New dataset version" in crux("snapshot", "magnetic-tile", "--commit")
    assert "~1" in git(repo, "log", "-1", "--format=%s")

    diff = json.loads(crux("data", "diff", "HEAD~1", "HEAD", "--json", "--project", "magnetic-tile"))
    (changed,) = diff["magnetic-tile"]["relabelled"]
    assert changed["task_id"] == task.id and changed["mask_iou"] < 0.9
    assert f"task {task.id}" in crux("data", "diff", "--project", "magnetic-tile")

    check = crux("data", "check", "magnetic-tile")  # one tile per class: warnings only
    assert "rare_class" in check and "ERROR" not in check

    export = repo.parent / "masks-v1"
    crux("export-dataset", "magnetic-tile", str(export), "--format", "masks", "--rev", "HEAD~1")
    assert (export / "classes.txt").read_text().splitlines() == list(spec.classes)
    exported = sorted(export.glob("*/masks/*.png"))
    assert len(exported) == 6
    crack_v1 = next(i for i in v1 if i["task_id"] == task.id)
    mine = next(p for p in exported if p.stem == Path(crack_v1["original_name"]).stem)
    # The v1 mask itself (content-addressed: its name is its sha256), not the repainted one.
    assert hashlib.sha256(mine.read_bytes()).hexdigest() == Path(crack_v1["mask"]).stem
    with Image.open(mine) as m:
        assert m.mode == "L" and m.size == (w, h) and not np.asarray(m)[5:25, 5:25].all()
