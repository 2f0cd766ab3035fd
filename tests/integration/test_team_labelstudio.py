"""Labelling as a team against the real Label Studio (fixtures from tests/conftest.py): overlap settings, two
annotators' agreement, provenance of imported / drawn / accepted / edited labels, the review tab, and
`crux project sync --check` catching a label config edited through the API."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import copy_neu_subset, neu_stems
from typer.testing import CliRunner

from crux.cli import app
from crux.config import DatasetConfig, LabelStudioConfig, from_mapping
from crux.data.agreement import AgreementError
from crux.data.diff import diff_manifests
from crux.data.manifest import read_manifest
from crux.data.provenance import IMPORT_IDENTITY
from crux.geometry import PixelBox
from crux.kinds import Label, get_kind
from crux.label import importer
from crux.label.annotators import invite_link
from crux.label.projects import check_project, sync_project
from crux.label.review import publish_view
from crux.label.team import ensure_member
from crux.loop.steps import LabelStudioAccess, ProjectDriftError, snapshot_project

pytestmark = pytest.mark.integration

CLASSES = {"crazing": "#e6194b", "patches": "#ffe119"}
PUBLIC = "https://label.plant.example"


def write_params(root: Path, files_root: Path, projects: dict[str, Any]) -> Path:
    params = {
        "labelstudio": {"files_root": str(files_root), "public_url": PUBLIC, "projects": projects},
        "dataset": {"root": "data", "split": [0.6, 0.2, 0.2]},
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def choice(cls: str) -> list[dict[str, Any]]:
    return get_kind("classify").to_results([Label(cls)], 200, 200)


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else value.dict()


def user_id(annotation: dict[str, Any]) -> int:
    who = annotation["completed_by"]
    return int(who["id"] if isinstance(who, dict) else who)


@pytest.fixture
def team_project(ls_server: tuple, ls_client: Any, ls_files_root: Path, tmp_path: Path) -> dict[str, Any]:
    """A classify project with overlap 2 over 12 NEU images (6 crazing, 6 patches), no labels yet."""
    name = f"team-{uuid.uuid4().hex[:6]}"
    entry = {
        "title": f"Team {name}",
        "kind": "classify",
        "classes": CLASSES,
        "instructions": "Pick the defect.",
        "overlap": {"annotators": 2, "share": 1.0},
    }
    params = write_params(tmp_path, ls_files_root, {name: entry})
    cfg = from_mapping(LabelStudioConfig, yaml.safe_load(params.read_text())["labelstudio"], "labelstudio")
    spec = cfg.project(name)
    project_id = sync_project(ls_client, name, spec).project_id
    stems = [s for s in neu_stems(6) if s.startswith(("crazing", "patches"))]
    source = copy_neu_subset(ls_files_root / name, stems)
    scan = importer.scan_source(str(source / "images"), spec, "none")
    importer.import_items(ls_client, project_id, spec, scan, ls_files_root)
    tasks = sorted(ls_client.tasks.list(project=project_id, fields="all"), key=lambda t: t.data["original_name"])
    settings, credentials = ls_server
    return {
        "name": name,
        "spec": spec,
        "project_id": project_id,
        "tasks": tasks,
        "params": params,
        "root": tmp_path,
        "env": {"CRUX_LS_URL": settings.url, "CRUX_LS_TOKEN": credentials.token},
        "access": LabelStudioAccess(settings.url, credentials.token, ls_files_root),
    }


def crux(project: dict[str, Any], *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, [*args, "--params", str(project["params"])], env=project["env"])
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


def test_two_annotators_agreement_as_constructed(
    ls_server: tuple, ls_client: Any, team_project: dict[str, Any]
) -> None:
    p = team_project
    project = ls_client.projects.get(id=p["project_id"])
    assert (project.maximum_annotations, project.overlap_cohort_percentage) == (2, 100)  # Label Studio's own overlap
    assert all(t.overlap == 2 for t in p["tasks"])  # its queue hands every task to two people

    settings, credentials = ls_server
    link = invite_link(settings.url, credentials.token, PUBLIC)  # asked of the server, written for the browsers
    assert link.startswith(f"{PUBLIC}/user/signup/?token=")
    ann = ensure_member(ls_client, f"ann-{p['name']}@plant.example")
    bob = ensure_member(ls_client, f"bob-{p['name']}@plant.example")
    disagree = {p["tasks"][0].id, p["tasks"][7].id}  # one crazing, one patches image
    for task in p["tasks"]:
        truth = "crazing" if task.data["original_name"].startswith("crazing") else "patches"
        other = "patches" if truth == "crazing" else "crazing"
        ls_client.annotations.create(id=task.id, result=choice(truth), completed_by=ann)
        ls_client.annotations.create(
            id=task.id, result=choice(other if task.id in disagree else truth), completed_by=bob
        )

    outcome = snapshot_project(
        p["access"], p["name"], p["spec"], DatasetConfig(split=(0.6, 0.2, 0.2)), p["root"], commit=False
    )
    assert (outcome.summary.items, outcome.summary.conflicted) == (12, 2)
    items = read_manifest(p["root"] / "data" / p["name"] / "manifest.jsonl")
    assert {i.task_id for i in items if i.conflicted} == disagree
    assert all(len(i.by_annotator) == 2 and i.agreement == (0.0 if i.task_id in disagree else 1.0) for i in items)
    assert all(i.provenance == "human" for i in items)

    report = json.loads(crux(p, "data", "agreement", p["name"], "--json", "--out", str(p["root"] / "agreement")))
    assert (report["overlapped"], report["mean"]) == (12, round(10 / 12, 4))
    assert {f["task_id"] for f in report["flagged"]} == disagree
    (pair,) = report["per_pair"]
    assert pair["images"] == 12 and pair["agreeing_share"] == round(10 / 12, 4)
    # crazing: ann gave 6, bob 5 + 1 wrong on a patches image -> 2x5 agreeing of 12 given; the same for patches.
    assert report["per_class"] == {
        "crazing": {"agreement": round(10 / 12, 4), "given": 12.0},
        "patches": {"agreement": round(10 / 12, 4), "given": 12.0},
    }
    assert "| crazing | 83.3% |" in (p["root"] / "agreement" / "agreement.md").read_text()
    # Bad input: a clear message, exit 1 through `crux`'s main (CliRunner shows the CruxError as the exception).
    for args, message in (
        (["--threshold", "1.5"], "threshold: 1.5 is not a number in 0..1"),
        (["--annotator", "eve@plant.example"], "'eve@plant.example' labelled nothing"),
    ):
        result = CliRunner().invoke(app, ["data", "agreement", p["name"], *args, "--params", str(p["params"])])
        assert isinstance(result.exception, AgreementError) and message in str(result.exception)

    # The review queue: the two disagreements first, as a Label Studio tab opened with one public link.
    queue = json.loads(crux(p, "review", p["name"], "--json", "--folds", "3"))
    assert queue["link"].startswith(f"{PUBLIC}/projects/{p['project_id']}/data?tab=")
    assert {e["task_id"] for e in queue["queue"][:2]} == disagree
    assert all(e["reason"] == "low agreement" for e in queue["queue"][:2])
    view_id = int(queue["link"].rsplit("=", 1)[1])
    shown = {t.id for t in ls_client.tasks.list(project=p["project_id"], view=view_id)}
    assert shown == {e["task_id"] for e in queue["queue"]}
    # A reviewer resolves one disagreement (bob's label corrected): the next snapshot agrees, and the dataset diff
    # lists the image as relabelled.
    fixed = p["tasks"][0]
    bobs = next(a for a in map(as_dict, ls_client.annotations.list(id=fixed.id)) if user_id(a) == bob)
    ls_client.annotations.update(id=bobs["id"], result=choice("crazing"))
    snapshot_project(p["access"], p["name"], p["spec"], DatasetConfig(split=(0.6, 0.2, 0.2)), p["root"], commit=False)
    after = read_manifest(p["root"] / "data" / p["name"] / "manifest.jsonl")
    assert {i.task_id for i in after if i.conflicted} == disagree - {fixed.id}
    diff = diff_manifests(items, after, list(CLASSES))
    assert [c.task_id for c in diff.relabelled] == [fixed.id]

    # Publishing again replaces CRUX's tab instead of adding one.
    assert publish_view(ls_client, p["project_id"], [p["tasks"][3].id]) == view_id
    assert [t.id for t in ls_client.tasks.list(project=p["project_id"], view=view_id)] == [p["tasks"][3].id]


def test_provenance_of_imported_drawn_accepted_and_edited(
    ls_server: tuple, ls_client: Any, ls_files_root: Path, tmp_path: Path
) -> None:
    name = f"prov-{uuid.uuid4().hex[:6]}"
    neu_classes = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
    entry = {"title": f"Provenance {name}", "kind": "detect", "classes": dict.fromkeys(neu_classes, "#e6194b")}
    params = write_params(tmp_path, ls_files_root, {name: entry})
    spec = from_mapping(LabelStudioConfig, yaml.safe_load(params.read_text())["labelstudio"], "ls").project(name)
    project_id = sync_project(ls_client, name, spec).project_id
    stems = neu_stems(1)  # one image per class
    labelled = copy_neu_subset(ls_files_root / name / "labelled", stems[:2])
    importer.import_items(ls_client, project_id, spec, importer.scan_source(str(labelled), spec, "yolo"), ls_files_root)
    bare = copy_neu_subset(ls_files_root / name / "bare", stems[2:])
    importer.import_items(
        ls_client, project_id, spec, importer.scan_source(str(bare / "images"), spec, "none"), ls_files_root
    )
    tasks = {t.data["original_name"]: t for t in ls_client.tasks.list(project=project_id, fields="all")}
    kind = get_kind("detect")

    def boxes(cls: str, x: float) -> list[dict[str, Any]]:
        return kind.to_results([Label(cls, PixelBox(x, 10.0, x + 40.0, 60.0))], 200, 200)

    # Imported: credited to the import identity, not the admin; then a person edits one imported label.
    imported = [tasks[f"{s}.jpg"] for s in stems[:2]]
    assert all(as_dict(t.annotations[0])["completed_by"] != 1 for t in imported)
    first = as_dict(imported[1].annotations[0])
    ls_client.annotations.update(id=first["id"], result=boxes("inclusion", 5.0))
    # Drawn by a person; a pre-annotation accepted unchanged; one edited.
    drawn, accepted, edited = (tasks[f"{s}.jpg"] for s in stems[2:5])
    ls_client.annotations.create(id=drawn.id, result=boxes("patches", 20.0))
    for task, result in ((accepted, boxes("pitted_surface", 30.0)), (edited, boxes("rolled-in_scale", 45.0))):
        prediction = ls_client.predictions.create(task=task.id, result=boxes(kind_cls(task), 30.0), model_version="v1")
        ls_client.annotations.create(id=task.id, result=result, parent_prediction=prediction.id)

    settings, credentials = ls_server
    access = LabelStudioAccess(settings.url, credentials.token, ls_files_root)
    snapshot_project(access, name, spec, DatasetConfig(), tmp_path, commit=False)
    items = {i.original_name: i for i in read_manifest(tmp_path / "data" / name / "manifest.jsonl")}
    assert items[f"{stems[0]}.jpg"].provenance == "imported"
    assert items[f"{stems[0]}.jpg"].annotators == (IMPORT_IDENTITY,)
    assert items[f"{stems[1]}.jpg"].provenance == "edited"  # imported, then changed by a person
    assert items[f"{stems[2]}.jpg"].provenance == "human"
    assert items[f"{stems[3]}.jpg"].provenance == "accepted"
    assert items[f"{stems[4]}.jpg"].provenance == "edited"
    assert f"{stems[5]}.jpg" not in items  # no label yet

    env = {"CRUX_LS_URL": access.url, "CRUX_LS_TOKEN": access.token}
    result = CliRunner().invoke(app, ["data", "check", name, "--params", str(params)], env=env)
    assert "Where the labels came from" in result.output
    assert "| class | imported | human | accepted | edited |" in result.output
    assert "| crazing | 1 | 0 | 0 | 0 |" in result.output and "| pitted_surface | 0 | 0 | 1 | 0 |" in result.output


def kind_cls(task: Any) -> str:
    """The pre-annotation's class: the image's own class (from NEU's file name)."""
    return task.data["original_name"].rsplit("_", 1)[0]


def test_sync_check_catches_a_config_edited_through_the_api(ls_client: Any, team_project: dict[str, Any]) -> None:
    p = team_project
    assert "matches params.yaml" in crux(p, "project", "sync", p["name"], "--check")
    project = ls_client.projects.get(id=p["project_id"])
    edited = project.label_config.replace('<Choice value="patches"', '<Choice value="rust"')
    ls_client.projects.update(id=p["project_id"], label_config=edited, maximum_annotations=1)
    assert check_project(ls_client, p["name"], p["spec"])[1]

    output = crux(p, "project", "sync", p["name"], "--check", code=1)
    assert "differs from params.yaml" in output and "label_config" in output
    assert '-    <Choice value="rust"' in output and '+    <Choice value="patches"' in output
    assert "maximum_annotations: Label Studio has 1, params.yaml says 2" in output
    with pytest.raises(ProjectDriftError, match="Not snapshotting labels made under another config"):
        snapshot_project(p["access"], p["name"], p["spec"], DatasetConfig(), p["root"], commit=False)
    assert not (p["root"] / "data" / p["name"]).exists()

    crux(p, "project", "sync", p["name"], "--no-webhook")
    assert "matches params.yaml" in crux(p, "project", "sync", p["name"], "--check")
