"""Issue #23 §5 against the real Label Studio: an annotator deletes a labelled project (any member of Label Studio
Community can), `crux project restore` recreates it from the last dataset version, and the next snapshot holds the
same labels per image: every annotator's, provenance and the pre-annotations included."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import copy_neu_subset, neu_stems
from typer.testing import CliRunner

from crux.cli import app
from crux.config import DatasetConfig, LabelStudioConfig, from_mapping
from crux.data import versioning
from crux.data.manifest import read_manifest
from crux.data.provenance import IMPORT_IDENTITY
from crux.geometry import PixelBox
from crux.kinds import Label, get_kind
from crux.label import importer
from crux.label.annotators import add_annotators
from crux.label.projects import find_project, sync_project
from crux.label.server import server_environment
from crux.loop.steps import LabelStudioAccess, ProjectLostError, snapshot_project

pytestmark = pytest.mark.integration

NEU_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
TOKEN_SCRIPT = """
import os, sys, label_studio
sys.path.insert(0, os.path.dirname(label_studio.__file__))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings.label_studio")
import django
django.setup()
from rest_framework.authtoken.models import Token
from users.models import User
print(Token.objects.get_or_create(user=User.objects.get(email=sys.argv[1]))[0].key)
"""


def annotator_client(settings: Any, credentials: Any, email: str) -> Any:
    """An SDK client logged in as the annotator `email` (their own API token), not as the admin."""
    from label_studio_sdk import LabelStudio

    token = subprocess.run(
        [str(settings.venv / "bin" / "python"), "-c", TOKEN_SCRIPT, email],
        env=server_environment(settings, credentials, os.environ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return LabelStudio(base_url=settings.url, api_key=token)


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else value.dict()


def comparable(item: Any) -> dict[str, Any]:
    """What must survive a restore: everything but the task and annotation ids."""
    data = item.to_json()
    for key in ("task_id", "annotation_ids"):
        data.pop(key)
    return data


def test_a_deleted_project_is_restored_with_every_label(
    ls_server: tuple, ls_client: Any, ls_files_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, credentials = ls_server
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "site-cache"))
    name = f"restore-{uuid.uuid4().hex[:6]}"
    repo = tmp_path / "repo"
    repo.mkdir()
    entry = {"title": f"Restore {name}", "kind": "detect", "classes": dict.fromkeys(NEU_CLASSES, "#e6194b")}
    params = repo / "params.yaml"
    params.write_text(yaml.safe_dump({"labelstudio": {"files_root": str(ls_files_root), "projects": {name: entry}}}))
    spec = from_mapping(LabelStudioConfig, yaml.safe_load(params.read_text())["labelstudio"], "ls").project(name)
    for args in (["init", "-q"], ["config", "user.email", "t@crux.local"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    versioning.init_repo(repo)
    versioning.set_remote(repo, str(tmp_path / "remote"))

    # A small labelled set: two images imported with their labels (one edited by a person since), one image labelled
    # by two annotators, one pre-annotation accepted unchanged and one edited.
    project_id = sync_project(ls_client, name, spec).project_id
    stems = neu_stems(1)
    labelled = copy_neu_subset(ls_files_root / name / "labelled", stems[:2])
    importer.import_items(ls_client, project_id, spec, importer.scan_source(str(labelled), spec, "yolo"), ls_files_root)
    bare = copy_neu_subset(ls_files_root / name / "bare", stems[2:5])
    importer.import_items(
        ls_client, project_id, spec, importer.scan_source(str(bare / "images"), spec, "none"), ls_files_root
    )
    ann, bob = f"ann-{name}@plant.example", f"bob-{name}@plant.example"
    accounts, _ = add_annotators(settings, credentials, [ann, bob], os.environ)
    ids = {a.email: a.user_id for a in accounts}
    tasks = {t.data["original_name"]: t for t in ls_client.tasks.list(project=project_id, fields="all")}
    kind = get_kind("detect")

    def boxes(cls: str, x: float) -> list[dict[str, Any]]:
        return kind.to_results([Label(cls, PixelBox(x, 10.0, x + 40.0, 60.0))], 200, 200)

    first = as_dict(tasks[f"{stems[1]}.jpg"].annotations[0])
    ls_client.annotations.update(id=first["id"], result=boxes("inclusion", 5.0))
    two, accepted, edited = (tasks[f"{s}.jpg"] for s in stems[2:5])
    ls_client.annotations.create(id=two.id, result=boxes("patches", 20.0), completed_by=ids[ann])
    ls_client.annotations.create(id=two.id, result=boxes("patches", 22.0), completed_by=ids[bob])
    for task, result, who in ((accepted, boxes("crazing", 30.0), ann), (edited, boxes("scratches", 45.0), bob)):
        prediction = ls_client.predictions.create(
            task=task.id, result=boxes("crazing", 30.0), model_version="v1", score=0.75
        )
        ls_client.annotations.create(id=task.id, result=result, parent_prediction=prediction.id, completed_by=ids[who])

    access = LabelStudioAccess(settings.url, credentials.token, ls_files_root)
    dataset = DatasetConfig(split=(0.6, 0.2, 0.2))
    before_version = snapshot_project(access, name, spec, dataset, repo, commit=True).version
    assert before_version is not None
    manifest = repo / "data" / name / "manifest.jsonl"
    before = {i.sha256: i for i in read_manifest(manifest)}
    by_name = {i.original_name: i for i in before.values()}
    assert [by_name[f"{s}.jpg"].provenance for s in stems[:5]] == ["imported", "edited", "human", "accepted", "edited"]
    assert [a.annotator for a in by_name[f"{stems[2]}.jpg"].by_annotator] == [ann, bob]
    assert by_name[f"{stems[4]}.jpg"].prediction is not None

    # An annotator deletes the project with their own token: nothing in Label Studio Community stops them.
    annotator_client(settings, credentials, ann).projects.delete(id=project_id)
    assert find_project(ls_client, name) is None

    env = {"CRUX_LS_URL": settings.url, "CRUX_LS_TOKEN": credentials.token}
    runner = CliRunner()

    def crux(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*args, "--params", str(params)], env=env)
        assert result.exit_code == code, (result.output, result.exception)
        return result.output

    checked = " ".join(crux("project", "sync", name, "--check", code=1).split())
    assert f"project {name!r} is missing from Label Studio" in checked and f"crux project restore {name}" in checked
    with pytest.raises(ProjectLostError, match=f"crux project restore {name}"):
        snapshot_project(access, name, spec, dataset, repo, commit=True)

    restored = crux("project", "restore", name, "--images", str(ls_files_root / name / "restored"))
    assert "5 task(s) restored" in restored and "6 annotation(s) and 2 prediction(s)" in restored
    # Restoring again over the restored project is refused (it holds tasks) unless --force.
    result = runner.invoke(app, ["project", "restore", name, "--params", str(params)], env=env)
    assert result.exit_code != 0 and f"project {name!r}" in str(result.exception) and "--force" in str(result.exception)

    after_version = snapshot_project(access, name, spec, dataset, repo, commit=True).version
    assert after_version is not None  # new annotation ids: a new version, with the same labels
    after = {i.sha256: i for i in read_manifest(manifest)}
    assert after.keys() == before.keys()
    for sha, item in before.items():
        assert comparable(after[sha]) == comparable(item), item.original_name
    assert after[by_name[f"{stems[0]}.jpg"].sha256].annotators == (IMPORT_IDENTITY,)

    diff = json.loads(crux("data", "diff", before_version.commit, after_version.commit, "-p", name, "--json"))[name]
    assert (diff["relabelled"], diff["added"], diff["removed"]) == ([], [], [])
    # Task ids may come back the same (SQLite reuses them once a project's tasks are gone) or not: either way each
    # image is the same item, never "removed and added".
    assert len(diff["retasked"]) == sum(before[sha].task_id != after[sha].task_id for sha in before)


def test_import_names_images_the_project_holds_with_other_labels(
    ls_client: Any, ls_files_root: Path, tmp_path: Path
) -> None:
    """Issue #23 §4: the same image bytes already in the project with other labels are reported, naming the file
    and the choice (the project's labels kept); identical labels stay a skipped duplicate."""
    name = f"again-{uuid.uuid4().hex[:6]}"
    entry = {"title": f"Again {name}", "kind": "detect", "classes": dict.fromkeys(NEU_CLASSES, "#e6194b")}
    spec = from_mapping(LabelStudioConfig, {"projects": {name: entry}}, "ls").project(name)
    project_id = sync_project(ls_client, name, spec).project_id
    stems = neu_stems(1)[:3]
    source = copy_neu_subset(ls_files_root / name / "v1", stems)
    first = importer.import_items(
        ls_client, project_id, spec, importer.scan_source(str(source), spec, "yolo"), ls_files_root
    )
    assert (first.created, first.conflicts) == (3, ())

    # The source's owner relabels one image (another class) and re-exports: the project keeps its label, and says so.
    label_file = source / "labels" / f"{stems[1]}.txt"
    lines = label_file.read_text().splitlines()
    class_id, *rest = lines[0].split()
    lines[0] = " ".join([str((int(class_id) + 1) % len(NEU_CLASSES)), *rest])
    label_file.write_text("\n".join(lines) + "\n")
    again = importer.import_items(
        ls_client, project_id, spec, importer.scan_source(str(source), spec, "yolo"), ls_files_root
    )
    assert (again.created, again.already_present) == (0, 3)
    (conflict,) = again.conflicts
    assert conflict.startswith(f"images/{stems[1]}.jpg: task ") and "kept the project's labels" in conflict
    assert len(ls_client.tasks.list(project=project_id).items) == 3  # no duplicate task
