"""Round trip through every path a dataset travels: import → snapshot → export (YOLO, COCO) →
import into a fresh project → snapshot → the very same boxes."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import copy_neu_subset, neu_stems

from crux.config import ProjectSpec, from_mapping
from crux.data.formats import export_dataset
from crux.data.manifest import ManifestItem, read_classes, read_manifest
from crux.data.snapshot import build_dataset, export_snapshot_to_file
from crux.data.store import make_fetcher
from crux.label import importer
from crux.label.projects import sync_project

pytestmark = pytest.mark.integration

CLASSES = {"crazing": "#e6194b", "inclusion": "#3cb44b", "patches": "#ffe119", "pitted_surface": "#4363d8",
           "rolled-in_scale": "#f58231", "scratches": "#911eb4"}  # fmt: skip
SPEC = from_mapping(ProjectSpec, {"title": "round trip", "kind": "detect", "classes": CLASSES}, "p")


def snapshot(client, project_id: int, files_root: Path, out: Path) -> list[ManifestItem]:
    export = export_snapshot_to_file(client, project_id, out.parent / f"{out.name}.json")
    build_dataset(export, out, "detect", SPEC.class_names, None, make_fetcher(files_root=files_root), (0.6, 0.2, 0.2))
    return read_manifest(out / "manifest.jsonl")


def boxes_by_image(items: list[ManifestItem]) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    return {item.sha256: sorted((label.cls, tuple(label.box)) for label in item.labels) for item in items}


def import_into_new_project(client, source: Path, label_format: str, files_root: Path) -> int:
    project_id = sync_project(client, f"rt-{uuid.uuid4().hex[:8]}", SPEC).project_id
    scan = importer.scan_source(str(source), SPEC, label_format)
    importer.import_items(client, project_id, SPEC, scan, files_root)
    return project_id


@pytest.mark.parametrize("fmt", ["yolo", "coco"])
def test_export_then_import_gives_the_same_boxes(ls_client, ls_files_root: Path, tmp_path: Path, fmt: str) -> None:
    work = ls_files_root / f"rt-{uuid.uuid4().hex[:8]}"
    source = copy_neu_subset(work / "source", neu_stems(2))
    first_id = import_into_new_project(ls_client, source, "yolo", ls_files_root)
    first = snapshot(ls_client, first_id, ls_files_root, tmp_path / "v1")

    exported = work / fmt
    export_dataset(tmp_path / "v1", first, read_classes(tmp_path / "v1" / "classes.json"), exported, fmt)
    if fmt == "coco":
        from pycocotools.coco import COCO

        assert len(COCO(str(exported / "train" / "annotations.json")).getImgIds()) > 0
    second_id = import_into_new_project(ls_client, exported, fmt, ls_files_root)
    second = snapshot(ls_client, second_id, ls_files_root, tmp_path / "v2")

    assert len(second) == len(first) == 12
    want, got = boxes_by_image(first), boxes_by_image(second)
    assert want.keys() == got.keys()  # the same images, by content
    for sha256, boxes in want.items():
        assert [c for c, _ in got[sha256]] == [c for c, _ in boxes]
        for (_, a), (_, b) in zip(got[sha256], boxes, strict=True):
            assert a == pytest.approx(b, abs=0.5)
    assert {i.sha256: i.split for i in second} == {i.sha256: i.split for i in first}  # the split follows the image
