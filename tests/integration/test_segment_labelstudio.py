"""Segment projects against a real Label Studio: Magnetic Tile masks in, the same pixels out of a snapshot;
polygons drawn through the API; mask predictions; bad mask sources import nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MAGNETIC_TILE
from PIL import Image

from crux.config import ProjectSpec, from_mapping
from crux.data.manifest import read_manifest
from crux.data.snapshot import build_dataset, export_snapshot_to_file
from crux.data.store import make_fetcher
from crux.kinds import get_kind
from crux.label import importer
from crux.label.projects import sync_project

pytestmark = pytest.mark.integration

CLASSES = {"OK": "#3cb44b", "Blowhole": "#e6194b", "Break": "#f58231", "Crack": "#911eb4", "Fray": "#4363d8",
           "Uneven": "#ffe119"}  # fmt: skip
ALIASES = {f"MT_{c}": c for c in CLASSES if c != "OK"} | {"MT_Free": "OK"}
RATIOS = (0.8, 0.1, 0.1)


def seg_spec() -> ProjectSpec:
    data = {"title": "Tiles seg", "kind": "segment", "classes": CLASSES, "aliases": ALIASES, "ok_class": "OK"}
    return from_mapping(ProjectSpec, data, "p")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def tile_subset(dest: Path, per_class: int) -> Path:
    """`per_class` tiles of each Magnetic Tile folder, photos and masks (copied, never modified)."""
    if not MAGNETIC_TILE.exists():
        pytest.skip(f"{MAGNETIC_TILE} not present")
    for folder in sorted(p.name for p in MAGNETIC_TILE.iterdir() if p.is_dir()):
        (dest / folder).mkdir(parents=True, exist_ok=True)
        for jpg in sorted((MAGNETIC_TILE / folder).glob("*.jpg"))[:per_class]:
            shutil.copy(jpg, dest / folder / jpg.name)
            shutil.copy(jpg.with_suffix(".png"), dest / folder / jpg.with_suffix(".png").name)
    return dest


def build(client: Any, project_id: int, files_root: Path, out: Path) -> list[Any]:
    export = export_snapshot_to_file(client, project_id, out.parent / f"{out.name}-export.json")
    build_dataset(
        export, out, "segment", tuple(CLASSES), "OK", make_fetcher(files_root=files_root), RATIOS, previous_dir=out
    )
    return read_manifest(out / "manifest.jsonl")


def class_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def all_tasks(client: Any, project_id: int) -> list[Any]:
    return list(client.tasks.list(project=project_id, fields="all", page_size=1000))


def test_magnetic_tile_masks_survive_label_studio_pixel_for_pixel(
    ls_client: Any, ls_files_root: Path, tmp_path: Path
) -> None:
    name = unique("seg")
    spec = seg_spec()
    project_id = sync_project(ls_client, name, spec).project_id
    source = tile_subset(ls_files_root / name, per_class=2)
    scan = importer.scan_source(str(source), spec, "masks")
    report = importer.import_items(ls_client, project_id, spec, scan, ls_files_root)
    assert (report.created, report.annotations) == (12, 12)
    truth = {}
    for jpg in source.glob("*/*.jpg"):
        with Image.open(jpg.with_suffix(".png")) as mask:
            white = np.asarray(mask) >= 128  # the public masks' interpolated edges, binarised
        cls = ALIASES[jpg.parent.name]
        truth[hashlib.sha256(jpg.read_bytes()).hexdigest()] = (cls, white)

    items = build(ls_client, project_id, ls_files_root, tmp_path / "data")
    assert len(items) == 12
    classes = list(CLASSES)
    for item in items:
        cls, white = truth[item.sha256]
        expected = np.where(white, classes.index(cls) + 1, 0).astype(np.uint8)
        assert np.array_equal(class_mask(tmp_path / "data" / item.mask), expected), item.original_name
        assert item.verdict == cls and all(lb.cls == cls for lb in item.labels)
        assert (len(item.labels) == 0) == (not white.any())
    # Nothing changed in Label Studio: the same bytes again.
    again = build(ls_client, project_id, ls_files_root, tmp_path / "again")
    for rel in ("manifest.jsonl", "classes.json", "dataset.json"):
        assert (tmp_path / "data" / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes()
    assert {i.mask for i in again} == {i.mask for i in items}
    # Importing the same source again creates nothing.
    assert importer.import_items(ls_client, project_id, spec, scan, ls_files_root).created == 0


def test_a_polygon_drawn_through_the_api_is_rasterised(ls_client: Any, ls_files_root: Path, tmp_path: Path) -> None:
    name = unique("seg-poly")
    spec = seg_spec()
    project_id = sync_project(ls_client, name, spec).project_id
    source = tile_subset(ls_files_root / name, per_class=1)
    free = next(source.glob("MT_Free/*.jpg"))
    for other in source.glob("*/*"):
        if other.parent.name != "MT_Free":
            other.unlink()
    scan = importer.scan_source(str(source), spec, "none")
    importer.import_items(ls_client, project_id, spec, scan, ls_files_root)
    (task,) = all_tasks(ls_client, project_id)
    with Image.open(free) as image:
        w, h = image.size
    # A triangle, in Label Studio's percent coordinates, as the polygon tool stores it.
    points = [[10.0, 10.0], [60.0, 10.0], [10.0, 80.0]]
    result = {
        "id": "tri1",
        "from_name": "polygon",
        "to_name": "image",
        "type": "polygonlabels",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"points": points, "closed": True, "polygonlabels": ["Crack"]},
    }
    ls_client.annotations.create(id=task.id, result=[result])
    (item,) = build(ls_client, project_id, ls_files_root, tmp_path / "data")
    got = class_mask(tmp_path / "data" / item.mask) == list(CLASSES).index("Crack") + 1  # type: ignore[operator]
    # Expected: pixel centres inside the triangle (x ≥ 0.1 w, y ≥ 0.1 h, and on the hypotenuse's inner side).
    y, x = np.mgrid[0:h, 0:w] + 0.5
    ax, ay, bx, by, cx, cy = 0.1 * w, 0.1 * h, 0.6 * w, 0.1 * h, 0.1 * w, 0.8 * h
    inner = (bx - cx) * (y - cy) - (by - cy) * (x - cx) <= 0
    expected = (x >= ax) & (y >= ay) & inner
    assert (got != expected).sum() <= 0.01 * expected.sum()  # only centres exactly on an edge may differ
    assert item.verdict == "Crack" and [lb.cls for lb in item.labels] == ["Crack"]


def test_mask_predictions_arrive_as_editable_brush_suggestions(ls_client: Any, ls_files_root: Path) -> None:
    name = unique("seg-pred")
    spec = seg_spec()
    project_id = sync_project(ls_client, name, spec).project_id
    source = tile_subset(ls_files_root / name, per_class=1)
    crack = next(source.glob("MT_Crack/*.jpg"))
    with Image.open(crack) as image:
        w, h = image.size
    predicted = np.zeros((h, w), np.uint8)
    predicted[10:30, 20:40] = list(CLASSES).index("Crack") + 1
    Image.fromarray(predicted).save(ls_files_root / f"{name}.png")
    line = {"image": f"MT_Crack/{crack.name}", "model_version": "seg-v1", "score": 0.6, "mask": f"{name}.png",
            "label": "Crack"}  # fmt: skip
    preds_file = ls_files_root / f"{name}.jsonl"
    preds_file.write_text(json.dumps(line) + "\n")
    scan = importer.scan_source(str(source), spec, "none")
    matched = importer.match_predictions(scan, importer.read_predictions(preds_file, spec))
    report = importer.import_items(ls_client, project_id, spec, scan, ls_files_root, matched)
    assert report.predictions == 1
    task = next(t for t in all_tasks(ls_client, project_id) if t.data["source"].startswith("MT_Crack/"))
    (prediction,) = ls_client.predictions.list(task=task.id)
    assert prediction.model_version == "seg-v1"
    labels = get_kind("segment").from_results(prediction.result, w, h)
    regions = [lb for lb in labels if lb.mask is not None]
    assert len(regions) == 1 and np.array_equal(regions[0].mask, predicted > 0)
    assert [lb.cls for lb in labels if lb.mask is None] == ["Crack"]


BREAKAGES = [
    ("size", r"mask is \d+x\d+ px, its image"),
    ("rgb", r"not a single-channel mask \(mode RGB\)"),
    ("no-image", r"a mask without its image"),
    ("unknown-class", r"folder 'MT_Rust' is not a class"),
]


def _break(source: Path, how: str) -> Path:
    crack = next(source.glob("MT_Crack/*.png"))
    if how == "size":
        with Image.open(crack) as mask:
            mask.resize((mask.width + 3, mask.height)).save(crack)
    elif how == "rgb":
        with Image.open(crack) as mask:
            mask.convert("RGB").save(crack)
    elif how == "no-image":
        crack.with_suffix(".jpg").unlink()
    elif how == "unknown-class":
        source.joinpath("MT_Crack").rename(source / "MT_Rust")
        crack = source / "MT_Rust" / crack.with_suffix(".jpg").name
    return crack


@pytest.mark.parametrize(("how", "message"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_bad_mask_sources_import_nothing(ls_client: Any, ls_files_root: Path, how: str, message: str) -> None:
    name = unique("seg-bad")
    spec = seg_spec()
    project_id = sync_project(ls_client, name, spec).project_id
    source = tile_subset(ls_files_root / name, per_class=1)
    broken = _break(source, how)
    with pytest.raises(importer.ImportValidationError, match=message) as err:
        importer.scan_source(str(source), spec, "masks")
    assert broken.name in str(err.value) or broken.stem in str(err.value)
    assert all_tasks(ls_client, project_id) == []
