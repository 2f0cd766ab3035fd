"""Against a real Label Studio server: lifecycle, projects from config, annotators, imports."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import MAGNETIC_TILE, NEU, copy_neu_subset, free_port, neu_stems

from crux.config import ProjectSpec, from_mapping
from crux.geometry import yolo_to_pixel
from crux.kinds import get_kind
from crux.label import importer, server
from crux.label.annotators import add_annotators, invite_link
from crux.label.projects import ProjectSyncError, find_project, sync_project

pytestmark = pytest.mark.integration

NEU_CLASSES = {
    "crazing": "#e6194b",
    "inclusion": "#3cb44b",
    "patches": "#ffe119",
    "pitted_surface": "#4363d8",
    "rolled-in_scale": "#f58231",
    "scratches": "#911eb4",
}
TILE_CLASSES = {
    "OK": "#3cb44b",
    "Blowhole": "#e6194b",
    "Break": "#f58231",
    "Crack": "#911eb4",
    "Fray": "#4363d8",
    "Uneven": "#ffe119",
}
TILE_ALIASES = {f"MT_{c}": c for c in TILE_CLASSES if c != "OK"} | {"MT_Free": "OK"}


def neu_spec() -> ProjectSpec:
    return from_mapping(ProjectSpec, {"title": "NEU test", "kind": "detect", "classes": NEU_CLASSES}, "p")


def tile_spec() -> ProjectSpec:
    data = {
        "title": "Tiles test",
        "kind": "classify",
        "classes": TILE_CLASSES,
        "aliases": TILE_ALIASES,
        "ok_class": "OK",
    }
    return from_mapping(ProjectSpec, data, "p")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def all_tasks(client, project_id: int) -> list:
    return list(client.tasks.list(project=project_id, fields="all", page_size=1000))


# --------------------------------------------------------------------------------------------------
# Server lifecycle


def test_session_server_is_healthy_and_start_is_idempotent(ls_server: tuple) -> None:
    settings, credentials = ls_server
    state = server.status(settings)
    assert state.running and state.healthy and state.url == settings.url
    again = server.start(settings, credentials, os.environ)
    assert again.pid == state.pid  # no second server
    assert settings.url.startswith("http://127.0.0.1:")


def test_up_status_down_through_the_cli(tmp_path: Path) -> None:
    """A second, CLI-driven server: its own state folder, loopback, and `down` stops only it."""
    from typer.testing import CliRunner

    from crux.cli import app

    port = free_port()
    params = tmp_path / "params.yaml"
    params.write_text(f"labelstudio:\n  port: {port}\n  state_dir: state\n  files_root: .\n")
    venv = str(Path(__file__).resolve().parents[2] / ".venv-ls")
    env = {"CRUX_LS_VENV": venv, "CRUX_LS_PORT": ""}
    runner = CliRunner()
    try:
        up = runner.invoke(app, ["labelstudio", "up", "--params", str(params)], env=env)
        assert up.exit_code == 0, up.output
        assert f"http://127.0.0.1:{port}" in up.output
        credentials_file = tmp_path / "state" / "credentials.env"
        password = server.read_env_file(credentials_file)["CRUX_LS_PASSWORD"]
        assert password not in up.output  # the password is stored, never printed
        assert oct(credentials_file.stat().st_mode & 0o777) == "0o600"
        status = runner.invoke(app, ["labelstudio", "status", "--params", str(params)], env=env)
        assert status.exit_code == 0 and "healthy" in status.output
        url = runner.invoke(app, ["labelstudio", "url", "--params", str(params)], env=env)
        assert url.output.strip() == f"http://127.0.0.1:{port}"
        with socket_to(port) as address:
            assert address == "127.0.0.1"  # bound to loopback, as the default promises
    finally:
        down = runner.invoke(app, ["labelstudio", "down", "--params", str(params)], env=env)
    assert down.exit_code == 0 and "stopped" in down.output
    after = runner.invoke(app, ["labelstudio", "status", "--params", str(params)], env=env)
    assert after.exit_code == 1 and "not running" in after.output


class socket_to:
    """Which local address the server socket on `port` listens on, read from /proc/net/tcp."""

    def __init__(self, port: int) -> None:
        self.port = port

    def __enter__(self) -> str:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.split(":")
            if int(port, 16) == self.port and state == "0A":  # LISTEN
                return ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
        raise AssertionError(f"nothing listens on port {self.port}")

    def __exit__(self, *exc: object) -> None:
        return None


# --------------------------------------------------------------------------------------------------
# Projects


def test_project_sync_creates_then_changes_nothing(ls_client) -> None:
    name = unique("neu")
    first = sync_project(ls_client, name, neu_spec())
    assert first.action == "created"
    second = sync_project(ls_client, name, neu_spec())
    assert (second.action, second.project_id) == ("unchanged", first.project_id)
    project = ls_client.projects.get(id=first.project_id)
    assert project.title == "NEU test" and "RectangleLabels" in project.label_config


def test_adding_a_class_updates_the_project(ls_client) -> None:
    name = unique("neu")
    sync_project(ls_client, name, neu_spec())
    bigger = from_mapping(
        ProjectSpec, {"title": "NEU test", "kind": "detect", "classes": {**NEU_CLASSES, "oil": "#000000"}}, "p"
    )
    result = sync_project(ls_client, name, bigger)
    assert result.action == "updated" and result.changed_fields == ("label_config",)
    assert 'value="oil"' in ls_client.projects.get(id=result.project_id).label_config


def test_removing_a_class_in_use_is_refused_unless_forced(ls_client, ls_files_root: Path) -> None:
    name = unique("neu")
    project_id = sync_project(ls_client, name, neu_spec()).project_id
    source = copy_neu_subset(ls_files_root / name, neu_stems(1))
    scan = importer.scan_source(str(source), neu_spec(), "yolo")
    importer.import_items(ls_client, project_id, neu_spec(), scan, ls_files_root)
    renamed = {("craze" if k == "crazing" else k): v for k, v in NEU_CLASSES.items()}
    smaller = from_mapping(ProjectSpec, {"title": "NEU test", "kind": "detect", "classes": renamed}, "p")
    with pytest.raises(ProjectSyncError, match=r"crazing \(\d+ annotation results\).*--force"):
        sync_project(ls_client, name, smaller)
    assert 'value="crazing"' in ls_client.projects.get(id=project_id).label_config  # untouched
    forced = sync_project(ls_client, name, smaller, force=True)
    assert forced.action == "updated"


def test_removing_an_unused_class_is_allowed(ls_client) -> None:
    name = unique("neu")
    sync_project(ls_client, name, neu_spec())
    fewer = {k: v for k, v in NEU_CLASSES.items() if k != "scratches"}
    spec = from_mapping(ProjectSpec, {"title": "NEU test", "kind": "detect", "classes": fewer}, "p")
    assert sync_project(ls_client, name, spec).action == "updated"


# --------------------------------------------------------------------------------------------------
# Annotators


def test_annotators_can_log_in_and_see_the_projects(ls_server: tuple, ls_client) -> None:
    settings, credentials = ls_server
    sync_project(ls_client, unique("neu"), neu_spec())
    emails = [f"{unique('ann')}@plant.example", f"{unique('ann')}@plant.example"]
    accounts, path = add_annotators(settings, credentials, emails, os.environ)
    assert [a.email for a in accounts] == emails and all(a.created for a in accounts)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    passwords = server.read_env_file(path)
    again, _ = add_annotators(settings, credentials, emails[:1], os.environ)
    assert not again[0].created and server.read_env_file(path)[emails[0]] == passwords[emails[0]]
    for email in emails:  # several people, each with a session of their own
        with httpx.Client(base_url=settings.url) as browser:
            browser.get("/user/login/")
            response = browser.post(
                "/user/login/",
                data={
                    "email": email,
                    "password": passwords[email],
                    "csrfmiddlewaretoken": browser.cookies.get("csrftoken"),
                },
                headers={"Referer": f"{settings.url}/user/login/"},
            )
            assert response.status_code == 302
            projects = browser.get("/api/projects").json()["results"]
            assert any(p["title"] == "NEU test" for p in projects)
    assert "/user/signup/?token=" in invite_link(settings.url, credentials.token)


# --------------------------------------------------------------------------------------------------
# Import


def test_yolo_import_converts_every_box_exactly_and_dedups(ls_server: tuple, ls_client, ls_files_root: Path) -> None:
    name = unique("neu")
    spec = neu_spec()
    project_id = sync_project(ls_client, name, spec).project_id
    stems = neu_stems(3)
    source = copy_neu_subset(ls_files_root / name, stems)
    report = importer.import_items(
        ls_client, project_id, spec, importer.scan_source(str(source), spec, "yolo"), ls_files_root
    )
    assert (report.created, report.annotations, report.already_present) == (len(stems), len(stems), 0)
    classes = (NEU / "classes.txt").read_text().split()
    tasks = all_tasks(ls_client, project_id)
    assert len(tasks) == len(stems)
    kind = get_kind("detect")
    for task in tasks:
        stem = Path(task.data["source"]).stem
        annotation = task.annotations[0]
        annotation = annotation if isinstance(annotation, dict) else annotation.dict()
        got = kind.from_results(annotation["result"], task.data["width"], task.data["height"])
        want = []
        for line in (NEU / "labels" / f"{stem}.txt").read_text().splitlines():
            c, cx, cy, w, h = line.split()
            want.append((classes[int(c)], yolo_to_pixel(float(cx), float(cy), float(w), float(h), 200, 200)))
        assert [g.cls for g in got] == [w[0] for w in want]
        for label, (_, box) in zip(got, want, strict=True):
            assert label.box.as_list() == pytest.approx(box.as_list(), abs=1e-6)
    # The image is served to annotators' browsers through the local-files storage.
    settings, credentials = ls_server
    image = httpx.get(settings.url + tasks[0].data["image"], headers={"Authorization": f"Token {credentials.token}"})
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    # Same import again: nothing new. A renamed copy of an image is still the same image.
    shutil.copy(source / "images" / f"{stems[0]}.jpg", source / "images" / "renamed.jpg")
    shutil.copy(source / "labels" / f"{stems[0]}.txt", source / "labels" / "renamed.txt")
    again = importer.import_items(
        ls_client, project_id, spec, importer.scan_source(str(source), spec, "yolo"), ls_files_root
    )
    assert (again.created, again.already_present, again.duplicates_in_source) == (0, len(stems), 1)
    assert len(all_tasks(ls_client, project_id)) == len(stems)


def test_folder_import_maps_aliases_skips_masks_and_attaches_predictions(ls_client, ls_files_root: Path) -> None:
    name = unique("tiles")
    spec = tile_spec()
    project_id = sync_project(ls_client, name, spec).project_id
    source = ls_files_root / name
    for folder in ("MT_Free", "MT_Crack"):
        (source / folder).mkdir(parents=True)
        for jpg in sorted((MAGNETIC_TILE / folder).glob("*.jpg"))[:3]:
            shutil.copy(jpg, source / folder / jpg.name)
            shutil.copy(jpg.with_suffix(".png"), source / folder / jpg.with_suffix(".png").name)  # its mask
    scan = importer.scan_source(str(source), spec, "folders")
    assert len(scan.items) == 6 and all(item.rel.endswith(".jpg") for item in scan.items)
    assert sorted(importer.count_labels(scan.items).items()) == [("Crack", 3), ("OK", 3)]
    first = scan.items[0]
    predictions_file = ls_files_root / f"{name}.jsonl"
    predictions_file.write_text(
        json.dumps(
            {
                "image": first.rel,
                "label": "Crack",
                "score": 0.55,
                "scores": {"Crack": 0.55, "OK": 0.45},
                "boxes": [],
                "model_version": "tiles-v7",
            }
        )
        + "\n"
    )
    matched = importer.match_predictions(scan, importer.read_predictions(predictions_file, spec))
    report = importer.import_items(ls_client, project_id, spec, scan, ls_files_root, matched)
    assert (report.created, report.annotations, report.predictions) == (6, 6, 1)
    by_source = {t.data["source"]: t for t in all_tasks(ls_client, project_id)}
    task = by_source[first.rel]
    prediction = ls_client.predictions.list(task=task.id)[0]
    assert prediction.model_version == "tiles-v7" and prediction.score == pytest.approx(0.55)
    assert prediction.result[0]["value"]["choices"] == ["Crack"]
    annotation = task.annotations[0]
    annotation = annotation if isinstance(annotation, dict) else annotation.dict()
    expected = "OK" if first.rel.startswith("MT_Free") else "Crack"
    assert annotation["result"][0]["value"]["choices"] == [expected]
    # A new model's predictions for images the project already has are attached to those tasks.
    predictions_file.write_text(
        json.dumps(
            {
                "image": scan.items[1].rel,
                "label": "OK",
                "score": 0.9,
                "scores": {},
                "boxes": [],
                "model_version": "tiles-v8",
            }
        )
        + "\n"
    )
    matched = importer.match_predictions(scan, importer.read_predictions(predictions_file, spec))
    late = importer.import_items(ls_client, project_id, spec, scan, ls_files_root, matched)
    assert (late.created, late.predictions) == (0, 1)
    versions = [p.model_version for p in ls_client.predictions.list(task=by_source[scan.items[1].rel].id)]
    assert versions == ["tiles-v8"]


# --------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the file (and line), and nothing imported


def first_label(source: Path) -> Path:
    return sorted((source / "labels").glob("crazing_*.txt"))[0]


def _bad_neu(root: Path, name: str) -> Path:
    return copy_neu_subset(root / name, neu_stems(1))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda s: first_label(s).write_text("9 0.5 0.5 0.1 0.1\n"), r"crazing_\d+.txt:1: unknown class id 9"),
        (
            lambda s: first_label(s).write_text("0 0.5 0.5 0.1 0.1\n0 1.2 0.5 0.1 0.1\n"),
            r"crazing_\d+.txt:2: box 1.2 0.5 0.1 0.1 is empty or outside 0..1",
        ),
        (lambda s: first_label(s).write_text("0 0.5 0.5\n"), r"crazing_\d+.txt:1: expected 'class cx cy w h'"),
        (lambda s: (s / "images" / "notes.txt").write_text("hello"), r"notes.txt: not an image file"),
        (
            lambda s: (s / "images" / "broken.jpg").write_bytes(
                sorted((NEU / "images").glob("crazing_*.jpg"))[0].read_bytes()[:300]
            ),
            r"broken.jpg: not a readable image",
        ),
        (
            lambda s: (s / "classes.txt").write_text((NEU / "classes.txt").read_text() + "rust\n"),
            r"classes.txt:7: class 'rust' is not a class of project",
        ),
    ],
    ids=["unknown-class-id", "outside-0-1", "short-line", "non-image", "corrupt-jpeg", "class-not-in-project"],
)
def test_bad_yolo_sources_import_nothing(ls_client, ls_files_root: Path, breakage, message: str) -> None:
    name = unique("bad")
    project_id = sync_project(ls_client, name, neu_spec()).project_id
    source = _bad_neu(ls_files_root, name)
    breakage(source)
    with pytest.raises(importer.ImportValidationError, match=message):
        importer.scan_source(str(source), neu_spec(), "yolo")
    assert all_tasks(ls_client, project_id) == []


def test_missing_source_and_unknown_folder_are_named(ls_files_root: Path) -> None:
    with pytest.raises(importer.ImportValidationError, match="does not exist"):
        importer.scan_source(str(ls_files_root / "nope"), neu_spec(), "yolo")
    source = ls_files_root / unique("tiles")
    (source / "MT_Rust").mkdir(parents=True)
    shutil.copy(sorted((MAGNETIC_TILE / "MT_Free").glob("*.jpg"))[0], source / "MT_Rust" / "a.jpg")
    with pytest.raises(importer.ImportValidationError, match=r"MT_Rust/a.jpg: folder 'MT_Rust' is not a class"):
        importer.scan_source(str(source), tile_spec(), "folders")


def test_a_source_outside_the_served_root_is_refused_before_writing(ls_client, tmp_path: Path) -> None:
    name = unique("neu")
    project_id = sync_project(ls_client, name, neu_spec()).project_id
    source = copy_neu_subset(tmp_path / "elsewhere", neu_stems(1))
    scan = importer.scan_source(str(source), neu_spec(), "yolo")
    served_root = tmp_path / "served"
    served_root.mkdir()
    with pytest.raises(importer.ImportValidationError, match="outside Label Studio's files root"):
        importer.import_items(ls_client, project_id, neu_spec(), scan, served_root)
    assert all_tasks(ls_client, project_id) == []
    assert find_project(ls_client, name) is not None


def test_s3_import_serves_images_through_a_label_studio_s3_storage(ls_server: tuple, ls_client, moto_s3: str) -> None:
    import s3fs

    settings, credentials = ls_server
    bucket = unique("line")
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    stems = neu_stems(1)[:3]
    fs.put_file(str(NEU / "classes.txt"), f"{bucket}/neu/classes.txt")
    for stem in stems:
        fs.put_file(str(NEU / "images" / f"{stem}.jpg"), f"{bucket}/neu/images/{stem}.jpg")
        fs.put_file(str(NEU / "labels" / f"{stem}.txt"), f"{bucket}/neu/labels/{stem}.txt")
    spec = neu_spec()
    project_id = sync_project(ls_client, unique("neu"), spec).project_id
    scan = importer.scan_source(f"s3://{bucket}/neu", spec, "yolo")
    options = {
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "region_name": "us-east-1",
        "s3endpoint": moto_s3,
    }
    report = importer.import_items(ls_client, project_id, spec, scan, settings.files_root, s3_options=options)
    assert (report.created, report.annotations) == (3, 3)
    again = importer.import_items(ls_client, project_id, spec, scan, settings.files_root, s3_options=options)
    assert again.created == 0 and len(ls_client.import_storage.s3.list(project=project_id)) == 1
    headers = {"Authorization": f"Token {credentials.token}"}
    task = httpx.get(f"{settings.url}/api/tasks/{report.task_ids[0]}?resolve_uri=true", headers=headers).json()
    image = httpx.get(task["data"]["image"], headers=headers, follow_redirects=True)
    assert image.status_code == 200
    assert hashlib.sha256(image.content).hexdigest() == task["data"]["sha256"]


def test_project_sync_cli_is_idempotent_and_registers_the_webhook(ls_server: tuple, ls_client, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from crux.cli import app

    settings, credentials = ls_server
    name = unique("cli")
    params = tmp_path / "params.yaml"
    params.write_text(
        "labelstudio:\n  projects:\n"
        f"    {name}:\n      title: CLI test\n      kind: classify\n      classes: {{OK: '#00ff00', NG: '#ff0000'}}\n"
        "webhooks:\n  port: 8791\n"
    )
    env = {"CRUX_LS_URL": settings.url, "CRUX_LS_TOKEN": credentials.token, "CRUX_WEBHOOK_SECRET": "s" * 32}
    runner = CliRunner()
    first = runner.invoke(app, ["project", "sync", "--params", str(params)], env=env)
    assert first.exit_code == 0 and f"{name}: created" in first.output, first.output
    second = runner.invoke(app, ["project", "sync", "--params", str(params)], env=env)
    assert second.exit_code == 0 and f"{name}: unchanged" in second.output, second.output
    project_id = find_project(ls_client, name).id
    hooks = [h for h in ls_client.webhooks.list(project=project_id) if h.url.endswith(":8791/webhooks/labelstudio")]
    assert len(hooks) == 1  # registered once, not once per sync
