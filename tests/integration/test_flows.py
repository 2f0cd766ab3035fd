"""The Prefect cycle end to end (prefect_test_harness, real Label Studio, real DVC in a temporary git repo,
quick profile): new labels → a dataset version and a published model; no new labels → nothing; relabelling →
a new version and a new model; a failing training leaves production untouched and fails the flow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_neu_subset, neu_stems

from crux.config import ProjectSpec, from_mapping
from crux.label import importer
from crux.label.projects import sync_project

pytestmark = pytest.mark.integration

LINE = "flow-neu"


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ls_server: tuple) -> Path:
    settings, credentials = ls_server
    repo = tmp_path / "repo"
    repo.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["labelstudio"]["projects"] = {LINE: params["labelstudio"]["projects"]["neu-det"]}
    params["pipeline"]["lines"] = [LINE]
    # Per-line entries may only name declared lines: the shipped lines' overrides and gate bars go with them.
    params["pipeline"]["overrides"] = {}
    params["gate"]["lines"] = {}
    # Quick-profile models are noise: let every candidate through the gate (no floor, any change vs production).
    params["gate"]["tolerance"] = 1.0
    params["gate"]["min"] = {"detect": {"map50": 0.0}}
    params["export"]["parity_images"] = 4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    shutil.copytree(REPO / "crux", repo / "crux", ignore=shutil.ignore_patterns("__pycache__"))
    dvc = str(Path(sys.executable).parent / "dvc")
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "ci@crux.example")
    git(repo, "config", "user.name", "CI")
    subprocess.run([dvc, "init", "-q"], cwd=repo, check=True)
    subprocess.run([dvc, "remote", "add", "-d", "local", str(tmp_path / "dvc-remote")], cwd=repo, check=True)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    from crux.ship.signing import init_keys

    init_keys(repo / ".crux" / "keys" / "publish.key", repo / ".crux" / "keys" / "publish.pub")
    monkeypatch.setenv("CRUX_LS_URL", settings.url)
    monkeypatch.setenv("CRUX_LS_TOKEN", credentials.token)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return repo


def current(repo: Path) -> dict:
    return json.loads((repo / ".crux" / "model-remote" / LINE / "current.json").read_text())


@pytest.mark.slow  # ~85 s: `make demo` runs the same cycle; CI runs the slow set after `make test`
def test_cycle_end_to_end(prefect_api: None, repo: Path, ls_client, ls_files_root: Path) -> None:
    from flows.cycle import cycle

    params = str(repo / "params.yaml")
    params_text = (repo / "params.yaml").read_text()
    spec = from_mapping(ProjectSpec, yaml.safe_load(params_text)["labelstudio"]["projects"][LINE], "p")
    project_id = sync_project(ls_client, LINE, spec).project_id
    source = copy_neu_subset(ls_files_root / LINE, neu_stems(3))
    importer.import_items(ls_client, project_id, spec, importer.scan_source(str(source), spec, "yolo"), ls_files_root)

    first = cycle(LINE, params_path=params, quick=True)
    assert first["dataset"]["items"] == 18 and first["published"]["version"] == 1
    assert current(repo)["version"] == 1
    assert (repo / "models" / LINE / "export" / "model.onnx").is_file()
    assert git(repo, "log", "-1", "--format=%s").startswith(f"data({LINE}): 18 items")
    assert (repo / "params.yaml").read_text() == params_text  # put back after the quick `dvc exp run`

    second = cycle(LINE, params_path=params, quick=True)
    assert second == {"project": LINE, "dataset": None, "published": None, "git": None}
    assert current(repo)["version"] == 1

    task = next(iter(ls_client.tasks.list(project=project_id, fields="all")))
    annotation = task.annotations[0]
    annotation = annotation if isinstance(annotation, dict) else annotation.dict()
    result = annotation["result"]
    old_class = result[0]["value"]["rectanglelabels"][0]
    result[0]["value"]["rectanglelabels"] = ["crazing" if old_class == "scratches" else "scratches"]
    ls_client.annotations.update(id=annotation["id"], result=result)
    third = cycle(LINE, params_path=params, quick=True)
    assert third["dataset"] is not None and "~1" in third["dataset"]["message"]
    assert third["published"]["version"] == 2 and current(repo)["version"] == 2

    # A training that cannot run: the flow fails with DVC's message and production stays at v2.
    broken = yaml.safe_load((repo / "params.yaml").read_text())
    broken["augment"]["transforms"] = [{"name": "NoSuchTransform", "args": {}}]
    (repo / "params.yaml").write_text(yaml.safe_dump(broken, sort_keys=False))
    result[0]["value"]["rectanglelabels"] = [old_class]
    ls_client.annotations.update(id=annotation["id"], result=result)
    from crux.loop.steps import PipelineError

    with pytest.raises(PipelineError, match="NoSuchTransform"):
        cycle(LINE, params_path=params, quick=True)
    assert current(repo)["version"] == 2


@pytest.mark.slow  # one quick-profile cycle, ~90 s
def test_cycle_pulls_and_pushes_through_a_shared_git_remote(
    prefect_api: None, repo: Path, ls_client, ls_files_root: Path, tmp_path: Path
) -> None:
    """Issue 24: with git.remote set, the cycle rebases onto the remote before its snapshot and pushes its dataset
    version and the line's dvc.lock after training; only that line's files are in its commits."""
    from flows.cycle import cycle

    bare = tmp_path / "shared.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    git(repo, "branch", "-M", "main")
    git(repo, "push", "-q", str(bare), "main")
    other = tmp_path / "other"  # another machine moves the remote on before this worker's cycle
    subprocess.run(["git", "clone", "-q", str(bare), str(other)], check=True)
    (other / "NOTES.md").write_text("a reviewer's note\n")
    git(other, "add", "NOTES.md")
    git(other, "-c", "user.email=o@crux.local", "-c", "user.name=o", "commit", "-qm", "note")
    git(other, "push", "-q", "origin", "main")

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["git"] = {"remote": str(bare), "branch": "main"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "commit", "-qam", "git.remote")
    spec = from_mapping(ProjectSpec, params["labelstudio"]["projects"][LINE], "p")
    project_id = sync_project(ls_client, f"{LINE}", spec).project_id
    source = copy_neu_subset(ls_files_root / f"{LINE}-git", neu_stems(2))
    importer.import_items(ls_client, project_id, spec, importer.scan_source(str(source), spec, "yolo"), ls_files_root)

    result = cycle(LINE, params_path=str(repo / "params.yaml"), quick=True)
    assert result["dataset"] is not None and result["git"]["attempts"] == 1
    subjects = git(bare, "log", "--format=%s", "main").splitlines()
    assert subjects[0].startswith(f"train({LINE}): dvc.lock of ") and subjects[1].startswith(f"data({LINE}): ")
    assert "note" in subjects and "git.remote" in subjects  # rebased onto the other machine's commit, then pushed
    assert git(bare, "rev-list", "--min-parents=2", "main") == ""
    assert git(bare, "show", "--name-only", "--format=", "main").split() == ["dvc.lock"]
    assert git(bare, "show", "--name-only", "--format=", "main~1").split() == [f"data/{LINE}.dvc"]
    lock = yaml.safe_load(git(bare, "show", "main:dvc.lock"))
    assert {f"prepare@{LINE}", f"train@{LINE}", f"evaluate@{LINE}", f"export@{LINE}"} <= set(lock["stages"])
