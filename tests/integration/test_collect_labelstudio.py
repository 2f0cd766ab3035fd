"""The collect step against a real Label Studio and a real SQLite ingest DB with a local image store below the
server's files root: captures uploaded through the ingest API become tasks with the edge prediction, NG and
most-uncertain first; a second run imports nothing; a crash between import and mark_sent is reconciled without
duplicates; a store Label Studio cannot serve fails before anything is written; the Prefect flow runs it all."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

import crux.collect.labeling
from crux.collect import IngestSettings, add_station, create_app, create_db_engine, list_captures, migrate
from crux.collect.ingest_server import capture_metadata, make_jpeg
from crux.collect.labeling import SAMPLING, CollectError, collect
from crux.collect.storage import ImageStore
from crux.config import ProjectSpec
from crux.label.projects import sync_project

pytestmark = pytest.mark.integration

DETECT = ProjectSpec(title="Collect detect", kind="detect", classes={"scratches": "#911eb4", "crazing": "#e6194b"})
CLASSIFY = ProjectSpec(
    title="Collect classify", kind="classify", classes={"OK": "#3cb44b", "Crack": "#911eb4"}, ok_class="OK"
)
BOX = [10.0, 20.0, 60.0, 90.0]

# (verdict, box score): the collect order is NG before OK, lowest score first -> capture numbers 2, 4, 1, 3, 5.
DETECT_CAPTURES = [("ng", 0.9), ("ng", 0.4), ("ok", 0.7), ("ng", 0.6), ("ok", None)]
EXPECTED_ORDER = [2, 4, 1, 3, 5]


class Line:
    """An ingest DB + local image store (below Label Studio's files root) and a Label Studio project for one line."""

    def __init__(
        self, root: Path, name: str, spec: ProjectSpec, client: Any, settings: IngestSettings | None = None
    ) -> None:
        self.name, self.spec, self.client = name, spec, client
        self.settings = settings or IngestSettings(
            database_url=f"sqlite:///{root}/ingest.db", storage_url=str(root / "images")
        )
        self.engine = create_db_engine(self.settings.database_url)
        migrate(self.engine)
        self.store = ImageStore(self.settings.storage_url)
        self.token = add_station(self.engine, f"{name}-cam", name)
        self.project_id = sync_project(client, name, spec).project_id
        self.seed = 0

    def upload(self, **meta: Any) -> int:
        self.seed += 1
        with TestClient(create_app(self.settings)) as api:
            response = api.post(
                "/v1/captures",
                headers={"Authorization": f"Bearer {self.token}"},
                files={"image": (f"f{self.seed}.jpg", make_jpeg(self.seed), "image/jpeg")},
                data={"metadata": json.dumps(capture_metadata(f"{self.name}-cam", self.name, **meta))},
            )
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def tasks(self) -> list[Any]:
        return sorted(self.client.tasks.list(project=self.project_id, fields="all", page_size=1000), key=lambda t: t.id)


def detect_meta(verdict: str, score: float | None) -> dict[str, Any]:
    boxes = [] if score is None else [{"class": "scratches", "box": BOX, "score": score}]
    return {"verdict": verdict, "prediction": "scratches" if boxes else None, "scores": {}, "boxes": boxes}


@pytest.fixture
def line(ls_client: Any, ls_files_root: Path) -> Iterator[Line]:
    name = f"collect-{uuid.uuid4().hex[:8]}"
    made = Line(ls_files_root / name, name, DETECT, ls_client)
    yield made
    made.engine.dispose()


def test_captures_become_tasks_in_priority_order_once(line: Line, ls_server: tuple, ls_files_root: Path) -> None:
    settings, credentials = ls_server
    ids = [line.upload(**detect_meta(v, s)) for v, s in DETECT_CAPTURES]
    other = Line(ls_files_root / f"{line.name}-x", f"{line.name}-x", DETECT, line.client)  # another line: untouched
    other.upload(**detect_meta("ng", 0.1))

    report = collect(line.engine, line.client, line.name, DETECT, line.store, ls_files_root, batch_size=2)

    assert (report.pending, report.created, report.batches, report.reconciled, report.predictions) == (5, 5, 3, 0, 5)
    tasks = line.tasks()
    assert [t.data["capture_id"] for t in tasks] == [ids[i - 1] for i in EXPECTED_ORDER]
    assert list(report.task_ids) == [t.id for t in tasks]
    by_capture = {r.id: r for r in list_captures(line.engine, line=line.name)}
    for task in tasks:
        record = by_capture[task.data["capture_id"]]
        assert record.ls_task_id == task.id and record.ls_project == line.name and record.sent_at is not None
        assert task.data["sha256"] == record.sha256 and task.data["station"] == f"{line.name}-cam"
        assert (task.data["width"], task.data["height"]) == (200, 200)
        (prediction,) = task.predictions
        prediction = prediction if isinstance(prediction, dict) else prediction.dict()
        assert prediction["model_version"] == "neu-det-v3"
        if record.boxes:
            assert prediction["score"] == pytest.approx(record.boxes[0]["score"])
            (region,) = prediction["result"]
            assert region["value"]["rectanglelabels"] == ["scratches"]
            assert region["value"]["x"] == pytest.approx(5.0) and region["value"]["width"] == pytest.approx(25.0)
        else:
            assert prediction["result"] == []
    # Annotators' browsers get the image through the local-files storage over the ingest store.
    image = httpx.get(settings.url + tasks[0].data["image"], headers={"Authorization": f"Token {credentials.token}"})
    assert image.status_code == 200 and image.content == line.store.get(
        by_capture[tasks[0].data["capture_id"]].image_key
    )
    assert line.client.projects.get(id=line.project_id).sampling == SAMPLING
    assert [s.path for s in line.client.import_storage.local.list(project=line.project_id)] == [
        str(Path(line.store.root).resolve())
    ]
    assert list_captures(other.engine, sent=True) == []

    again = collect(line.engine, line.client, line.name, DETECT, line.store, ls_files_root)
    assert (again.pending, again.created, again.reconciled) == (0, 0, 0)
    assert len(line.tasks()) == 5
    assert len(line.client.import_storage.local.list(project=line.project_id)) == 1
    other.engine.dispose()


def test_crash_between_import_and_mark_sent_is_reconciled(
    line: Line, ls_files_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = [line.upload(**detect_meta("ng", s)) for s in (0.8, 0.3, 0.5)]

    def crash(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("killed between import and mark_sent")

    with monkeypatch.context() as patch:
        patch.setattr(crux.collect.labeling, "mark_sent", crash)
        with pytest.raises(RuntimeError, match="killed"):
            collect(line.engine, line.client, line.name, DETECT, line.store, ls_files_root, batch_size=2)
    # The first batch reached Label Studio, nothing was recorded as sent.
    assert len(line.tasks()) == 2
    assert len(list_captures(line.engine, sent=False)) == 3
    late = line.upload(**detect_meta("ok", 0.9))

    report = collect(line.engine, line.client, line.name, DETECT, line.store, ls_files_root, batch_size=2)

    assert (report.pending, report.reconciled, report.created) == (4, 2, 2)
    tasks = line.tasks()
    capture_ids = [t.data["capture_id"] for t in tasks]
    assert sorted(capture_ids) == sorted([*first, late]) and len(set(capture_ids)) == 4
    # The crashed run had imported the two most uncertain NG captures; the rest follow in order.
    assert capture_ids == [first[1], first[2], first[0], late]
    assert {r.id: r.ls_task_id for r in list_captures(line.engine)} == {t.data["capture_id"]: t.id for t in tasks}
    assert collect(line.engine, line.client, line.name, DETECT, line.store, ls_files_root).created == 0


def test_store_outside_files_root_fails_clearly_and_writes_nothing(
    ls_client: Any, ls_files_root: Path, tmp_path: Path
) -> None:
    name = f"collect-{uuid.uuid4().hex[:8]}"
    outside = Line(tmp_path / "outside", name, DETECT, ls_client)
    outside.upload(**detect_meta("ng", 0.5))
    with pytest.raises(CollectError, match="outside Label Studio's files root") as err:
        collect(outside.engine, ls_client, name, DETECT, outside.store, ls_files_root)
    assert "nothing was imported" in str(err.value)
    assert outside.tasks() == []
    assert ls_client.import_storage.local.list(project=outside.project_id) == []
    assert len(list_captures(outside.engine, sent=False)) == 1
    outside.engine.dispose()


# --------------------------------------------------------------------------------------------------
# The Prefect flow


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def test_collect_flow_classify_from_params(
    prefect_api: None, ls_server: tuple, ls_client: Any, ls_files_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.collect import collect as collect_flow

    settings, _ = ls_server
    for var in ("CRUX_LS_URL", "CRUX_LS_TOKEN", "CRUX_LS_PORT", "CRUX_LS_USERNAME", "CRUX_LS_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    name = f"collect-flow-{uuid.uuid4().hex[:6]}"
    # A project folder below the files root, with relative ingest paths as in the shipped params.yaml.
    root = ls_files_root / name
    root.mkdir()
    params = {
        "labelstudio": {
            "host": "127.0.0.1",
            "port": settings.port,
            "files_root": str(ls_files_root),
            "state_dir": str(settings.state_dir),
            "projects": {
                name: {"title": CLASSIFY.title, "kind": "classify", "classes": dict(CLASSIFY.classes), "ok_class": "OK"}
            },
        },
        "ingest": {"database_url": "sqlite:///.crux/ingest/ingest.db", "storage_url": ".crux/ingest/images"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ingest = IngestSettings(
        database_url=f"sqlite:///{root}/.crux/ingest/ingest.db", storage_url=str(root / ".crux/ingest/images")
    )
    line = Line(root, name, CLASSIFY, ls_client, ingest)
    sure_ok = line.upload(verdict="ok", prediction="OK", scores={"OK": 0.97, "Crack": 0.03}, boxes=[])
    unsure_ng = line.upload(verdict="ng", prediction="Crack", scores={"OK": 0.45, "Crack": 0.55}, boxes=[])
    sure_ng = line.upload(verdict="ng", prediction="Crack", scores={"OK": 0.1, "Crack": 0.9}, boxes=[])

    result = collect_flow(name, params_path=str(root / "params.yaml"))

    assert result["created"] == 3 and result["reconciled"] == 0
    tasks = line.tasks()
    assert [t.data["capture_id"] for t in tasks] == [unsure_ng, sure_ng, sure_ok]
    first = tasks[0].predictions[0]
    first = first if isinstance(first, dict) else first.dict()
    assert first["result"][0]["value"] == {"choices": ["Crack"]} and first["score"] == pytest.approx(0.55)
    assert collect_flow(name, params_path=str(root / "params.yaml"))["created"] == 0
    line.engine.dispose()
