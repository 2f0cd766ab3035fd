"""Issue #14, continued: hypothesis fuzzing of more outside-input parsers (COCO annotation files, dataset
manifests, release pointers, ingest metadata). Each either returns a valid value or raises its CruxError naming
the item (for ingest metadata: pydantic's ValidationError, which the server turns into a 422); nothing else."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from crux.collect.ingest_server import capture_metadata
from crux.collect.schemas import CaptureMetadata
from crux.config import ProjectSpec, from_mapping
from crux.data.manifest import ManifestError, ManifestItem, parse_manifest
from crux.data.synthetic_exports import image_bytes
from crux.label.importer import ImportValidationError, scan_source
from crux.ship.fetch import fetch_release
from crux.ship.gate import GateConfig
from crux.ship.publish import publish
from crux.ship.releases import PublishError, ReleaseError
from crux.ship.releases import parse_pointer as _parse_pointer
from crux.ship.signing import generate_private_key, sign

FUZZ = settings(max_examples=150, deadline=None)
SPEC = from_mapping(ProjectSpec, {"title": "t", "kind": "detect", "classes": {"a": "#000000", "b": "#ffffff"}}, "p")
KEY = generate_private_key()
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from([0, 1, 2, "a", "b", "a.jpg", "../x.jpg", "a\x00.jpg", 1e999, -1e999]),
)
JSON = st.recursive(
    SCALAR,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=12,
)


def _mutate(base: Any, draw: st.DrawFn) -> Any:
    """`base` with some of its values (at any depth) replaced by arbitrary JSON: mostly valid, wrong here and there."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    if isinstance(base, dict):
        return {k: _mutate(v, draw) for k, v in base.items() if draw(st.integers(0, 15))}
    if isinstance(base, list):
        return [_mutate(v, draw) for v in base]
    return base


@st.composite
def near(draw: st.DrawFn, base: Any) -> Any:
    return _mutate(base, draw)


COCO = {
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    "images": [{"id": 1, "file_name": "x.jpg", "width": 64, "height": 48}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [5.5, 6, 3, 4]},
    ],
}


@FUZZ
@given(st.one_of(near(COCO), JSON))
def test_coco_annotation_files_give_items_or_problems_naming_the_file(doc: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "x.jpg").write_bytes(image_bytes(1))
        (Path(tmp) / "annotations.json").write_text(json.dumps(doc))
        try:
            result = scan_source(tmp, SPEC, "coco")
        except ImportValidationError as exc:
            named = ("annotations.json", "x.jpg", f"{tmp}: no images found")
            assert exc.problems and all(any(n in p for n in named) for p in exc.problems), exc.problems
            return
        for item in result.items:
            for label in item.labels:
                assert label.cls in ("a", "b")
                if label.box is not None:
                    values = [label.box.x1, label.box.y1, label.box.x2, label.box.y2]
                    assert all(v == v and abs(v) != float("inf") for v in values)


SEGMENT = from_mapping(
    ProjectSpec,
    {"title": "s", "kind": "segment", "classes": {"ok": "#000000", "a": "#ff0000", "b": "#00ff00"}, "ok_class": "ok"},
    "s",
)
COCO_SEGMENT = {
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    "images": [{"id": 1, "file_name": "x.jpg", "width": 64, "height": 48, "verdict": "a"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 2, 30, 2, 30, 40, 1, 40]]},
        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": {"size": [48, 64], "counts": [100, 20, 2952]}},
        {"id": 3, "image_id": 1, "category_id": 2, "segmentation": {"size": [48, 64], "counts": "S?6Z10000000]Y2"}},
    ],
}
COORD = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**40), 2**40),
    st.sampled_from([1e9, -1e9, 64, 48, 64.0000001, True, "1", None]),
)
POLYGON = st.lists(COORD, max_size=10)
RLE = st.fixed_dictionaries(
    {
        "size": st.one_of(st.just([48, 64]), st.lists(COORD, max_size=3)),
        "counts": st.one_of(st.lists(st.one_of(st.integers(-5, 3072), COORD), max_size=6), st.text(max_size=12)),
    }
)


@FUZZ
@given(st.one_of(near(COCO_SEGMENT), st.lists(st.one_of(st.lists(POLYGON, max_size=3), RLE), min_size=1, max_size=3)))
def test_coco_segment_files_give_regions_inside_the_image_or_problems_naming_the_file(doc: Any) -> None:
    """COCO segment paths (polygons, RLE lists, compressed RLE): regions of the image's size or named problems, quickly
    (a coordinate of 1e9 used to walk a billion pixel centres)."""
    import time

    if isinstance(doc, list):  # segmentations drawn directly, put into the valid document
        doc = {**COCO_SEGMENT, "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": seg}
                                               for i, seg in enumerate(doc)]}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "x.jpg").write_bytes(image_bytes(1))  # 64x48
        (Path(tmp) / "annotations.json").write_text(json.dumps(doc))
        started = time.monotonic()
        try:
            result = scan_source(tmp, SEGMENT, "coco")
        except ImportValidationError as exc:
            named = ("annotations.json", "x.jpg", f"{tmp}: no images found")
            assert exc.problems and all(any(n in p for n in named) for p in exc.problems), exc.problems
            return
        finally:
            assert time.monotonic() - started < 10
        for item in result.items:
            for label in item.labels or ():
                assert label.cls in ("ok", "a", "b")
                if label.mask is not None:
                    assert label.mask.shape == (48, 64) and label.mask.any()


ITEM = ManifestItem(
    sha256="ab" * 32, task_id=3, image="images/ab/x.jpg", width=64, height=48, original_name="x.jpg", split="train"
).to_json()
ITEM["labels"] = [{"class": "a", "box": [1.0, 2.0, 3.0, 4.0]}]
ITEM["annotation_ids"] = [7]


@FUZZ
@given(st.lists(st.one_of(near(ITEM).map(json.dumps), JSON.map(json.dumps), st.text(max_size=30)), max_size=4))
def test_manifest_lines_give_items_or_a_manifest_error_naming_the_line(lines: list[str]) -> None:
    try:
        items = parse_manifest("\n".join(lines), where="m.jsonl")
    except ManifestError as exc:
        assert str(exc).startswith("m.jsonl:"), str(exc)
        return
    assert all(isinstance(i, ManifestItem) and isinstance(i.task_id, int) for i in items)


POINTER = sign(
    {"format": "crux-pointer/1", "line": "l", "version": 2, "sequence": 3, "action": "publish", "at": "x"}, KEY
)


@FUZZ
@given(st.one_of(near(POINTER), JSON), st.booleans())
def test_pointers_give_a_verified_pointer_or_a_release_error(doc: Any, verify_sig: bool) -> None:
    raw = json.dumps(doc).encode()
    try:
        pointer = _parse_pointer(raw, [KEY.public_key()], verify_sig)
    except ReleaseError as exc:
        assert "pointer" in str(exc) or "current.json" in str(exc), str(exc)
        return
    assert isinstance(pointer, dict)


@FUZZ
@given(st.one_of(near(capture_metadata("cam-1", "line-a", original_name="c.jpg", reason="ng")), JSON))
def test_ingest_metadata_validates_or_gives_a_validation_error(doc: Any) -> None:
    try:
        meta = CaptureMetadata.model_validate_json(json.dumps(doc))
    except ValidationError:
        return
    assert meta.captured_at.tzinfo is not None
    assert all(0 <= s <= 1 for s in meta.scores.values())
    # What validated round-trips: the server stores it and reads it back.
    assert CaptureMetadata.model_validate_json(meta.model_dump_json(by_alias=True)) == meta


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"[]", b"1e999", b'{"format": "crux-pointer/1"}'])
def test_pointer_bytes_that_are_no_pointer(raw: bytes) -> None:
    with pytest.raises(ReleaseError):
        _parse_pointer(raw, [KEY.public_key()], True)


def _tiny_model() -> bytes:
    """A real, tiny ONNX classifier (two constant logits) the fuzzed cards describe, built once."""
    global _MODEL
    if _MODEL is None:
        from edge_support import onnx_graph_model

        with tempfile.TemporaryDirectory() as tmp:
            _MODEL = onnx_graph_model(Path(tmp) / "m.onnx", 1, 32, [2.0, 0.0]).read_bytes()
    return _MODEL


_MODEL: bytes | None = None


def _card() -> dict[str, Any]:
    import hashlib

    model = _tiny_model()
    return {
        "format": "crux-model-card/1",
        "kind": "classify",
        "classes": ["ok", "scratch"],
        "ok_class": "ok",
        "metrics": {"accuracy": 0.9, "macro_f1": 0.8, "ok_recall": 0.95, "ng_recall": 0.9},
        "lineage": {"dataset": "abc", "git": "def"},
        "input": {"image_size": 32, "channels": 1, "mean": 0.5, "std": 0.25},
        "postprocess": {"ng_threshold": 0.5, "box_threshold": 0.3},
        "onnx": {"file": "model.onnx", "sha256": hashlib.sha256(model).hexdigest(), "bytes": len(model)},
    }


@FUZZ
@given(st.data())
def test_model_cards_publish_or_give_a_publish_error_naming_the_card(data: st.DataObject) -> None:
    card = data.draw(st.one_of(near(_card()), JSON))
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        export.mkdir()
        (export / "model.onnx").write_bytes(_tiny_model())
        (export / "card.json").write_text(json.dumps(card))
        try:
            result = publish(str(Path(tmp) / "remote"), "line-a", export, KEY, GateConfig(), force=True, reason="f")
        except PublishError as exc:
            # The card, or the model it names (a file, the network, its output), is named.
            assert "card.json" in str(exc) or str(export) in str(exc), str(exc)
            return
        release = fetch_release(
            str(Path(tmp) / "remote" / "line-a"), Path(tmp) / "edge", [KEY.public_key()], installed=None
        )
        assert release is not None and release.version == result.version == 1


TASK = {
    "id": 5,
    "data": {"image": "/data/local-files/?d=x.jpg", "sha256": "ab" * 32, "width": 64, "height": 48},
    "annotations": [
        {
            "id": 9,
            "completed_by": {"id": 1, "email": "a@x"},
            "updated_at": "2025-01-01T00:00:00Z",
            "result": [
                {
                    "type": "rectanglelabels",
                    "original_width": 64,
                    "original_height": 48,
                    "value": {"x": 10, "y": 10, "width": 20, "height": 30, "rectanglelabels": ["a"]},
                }
            ],
        },
        {"id": 10, "completed_by": 2, "result": [], "was_cancelled": False},
    ],
}


@FUZZ
@given(st.one_of(near(TASK), JSON))
def test_label_studio_export_tasks_parse_or_give_a_snapshot_error_naming_the_task(task: Any) -> None:
    from crux.data.snapshot import ParsedTask, SnapshotError, parse_task

    try:
        parsed = parse_task(task, 3, "detect", ["a", "b"])
    except SnapshotError as exc:
        assert "task" in str(exc) or "export item #3" in str(exc), str(exc)
        return
    assert parsed in ("skipped", "unlabeled") or isinstance(parsed, ParsedTask)


HEARTBEAT = {"model_version": 3, "frames": 10, "ng": 1, "errors": 0, "fps": 2.5, "latency_p50_ms": 3.0,
             "ng_rate": 0.1, "outbox_pending": 0, "outbox_bytes": 0, "interval_s": 30, "model_errors": 0}  # fmt: skip
BIG = st.one_of(
    st.integers(-(2**80), 2**80), st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0", "1" * 31, "true"])
)


@pytest.fixture(scope="module")
def ingest_client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from fastapi.testclient import TestClient

    from crux.collect import IngestSettings, add_station, create_app, create_db_engine, migrate

    tmp = tmp_path_factory.mktemp("ingest-fuzz")
    settings = IngestSettings(database_url=f"sqlite:///{tmp}/i.db", storage_url=str(tmp / "images"))
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    token = add_station(engine, "cam-1", "line-a")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, {"Authorization": f"Bearer {token}"}


@FUZZ
@given(
    st.dictionaries(st.sampled_from(sorted(HEARTBEAT)), BIG.map(str), max_size=4),
    # One path segment: no separators or dots a client would normalise into another route.
    st.one_of(
        BIG.map(str),
        st.text(
            st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%.\\"), min_size=1, max_size=12
        ),
    ),
)
def test_ingest_fields_are_a_2xx_or_a_4xx_never_a_500(ingest_client: Any, fields: dict[str, str], capture: str) -> None:
    """Heartbeat fields and capture ids as a hostile client sends them (raw JSON numbers: NaN, 31 digits, 1e400):
    the service answers 204/404/422, and its error bodies are strict JSON."""
    client, auth = ingest_client
    body = (
        "{"
        + ", ".join(f'"{k}": {v}' for k, v in {**{k: json.dumps(v) for k, v in HEARTBEAT.items()}, **fields}.items())
        + "}"
    )
    r = client.post("/v1/heartbeat", content=body, headers={**auth, "content-type": "application/json"})
    assert r.status_code in (204, 400, 422), (body, r.status_code, r.text)
    if r.content:
        json.loads(r.text)
    r = client.get(f"/v1/captures/{capture}", headers=auth)
    assert r.status_code in (404, 422), (capture, r.status_code, r.text)
