"""Issue #23 (sections 3-4): `crux import` sources that hung, crashed or lost a label without saying so. Each is now
an ImportValidationError (a CruxError: one line per problem, naming the file) or a reported choice; none hangs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from crux.config import ProjectSpec, from_mapping
from crux.label.importer import ImportValidationError, read_predictions, scan_source

DETECT = from_mapping(
    ProjectSpec, {"title": "t", "kind": "detect", "classes": {"dent": "#000000", "rust": "#ffffff"}}, "p"
)
SEGMENT = from_mapping(
    ProjectSpec,
    {"title": "s", "kind": "segment", "classes": {"ok": "#000000", "crack": "#ff0000", "fray": "#00ff00"},
     "ok_class": "ok", "aliases": {"MT_Crack": "crack", "MT_Free": "ok"}},
    "s",
)  # fmt: skip
CLASSIFY = from_mapping(
    ProjectSpec, {"title": "c", "kind": "classify", "classes": {"ok": "#000000", "ng": "#ff0000"}}, "c"
)


def jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    return path


def coco(root: Path, images: list[Any], annotations: list[Any], categories: list[Any] | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    cats = categories or [{"id": 1, "name": "crack"}, {"id": 2, "name": "fray"}]
    (root / "annotations.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": cats})
    )


def refused(source: Path | str, spec: ProjectSpec, fmt: str, *expected: str) -> list[str]:
    started = time.monotonic()
    with pytest.raises(ImportValidationError) as err:
        scan_source(str(source), spec, fmt)
    assert time.monotonic() - started < 20, "the scan must not hang"
    text = "\n".join(err.value.problems)
    for part in expected:
        assert part in text, text
    return err.value.problems


IMAGE = [{"id": 1, "file_name": "images/a.jpg", "width": 40, "height": 30}]


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ([[0, 0, 1e9, 0, 1e9, 1e9]], "polygon point (1e+09, 0) is outside the 40x30 image"),
        ([[0, 0, -5, 0, 10, 10]], "outside the 40x30 image"),
        ([[0, 0, "x", 0, 10, 10]], "polygon coordinate 'x' is not a number"),
        ([[True, 0, 10, 0, 10, 10]], "polygon coordinate True is not a number"),
        ([[1.1, 1.1, 1.2, 1.1, 1.2, 1.2]], "covers no pixel"),
        ({"size": [30, 40], "counts": [-3, 1203]}, "RLE counts hold -3"),
        ({"size": [30, 40], "counts": [5, 5]}, "RLE counts sum to 10"),
        ({"size": [30, 40], "counts": "é"}, "must be an ASCII string"),
        ({"size": [30, 40], "counts": "Q"}, "ends in the middle of a value"),
        ({"size": [30, 40], "counts": "zz"}, "the RLE holds 'z'"),
        ({"size": [30, True], "counts": [1200]}, "is not [height, width]"),
        ({"size": [30, 40], "counts": [1200]}, "covers no pixel"),
    ],
    ids=[
        "huge",
        "negative",
        "string",
        "bool",
        "sub-pixel",
        "neg-rle",
        "short-rle",
        "utf8-rle",
        "cut-rle",
        "bad-rle",
        "bool-size",
        "empty-rle",
    ],
)
def test_bad_coco_segmentations_are_refused_quickly(tmp_path: Path, segmentation: Any, message: str) -> None:
    jpeg(tmp_path / "images" / "a.jpg", 1)
    coco(tmp_path, IMAGE, [{"id": 5, "image_id": 1, "category_id": 1, "segmentation": segmentation}])
    refused(tmp_path, SEGMENT, "coco", "annotation 5", message)


def test_yolo_polygons_share_the_range_and_empty_checks(tmp_path: Path) -> None:
    jpeg(tmp_path / "images" / "a.jpg", 1)
    (tmp_path / "classes.txt").write_text("crack\n")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0 0 1e9 0 1 1\n0 0.01 0.01 0.011 0.01 0.011 0.011\n")
    refused(tmp_path, SEGMENT, "yolo", "a.txt:1: polygon point outside 0..1", "a.txt:2: the polygon covers no pixel")


@pytest.mark.parametrize(
    ("images", "annotations", "message"),
    [
        ([*IMAGE, {"id": 1, "file_name": "images/b.jpg"}], [], "images[1] repeats id 1"),
        ([*IMAGE, {"id": 2, "file_name": "images/a.jpg"}], [], "file_name 'images/a.jpg' is listed twice"),
        ([{"id": True, "file_name": "images/a.jpg"}], [], "images[0] id True is not an integer"),
        ([{"id": "1", "file_name": "images/a.jpg"}], [], "images[0] id '1' is not an integer"),
        (IMAGE, [{"image_id": True, "category_id": 1, "bbox": [0, 0, 1, 1]}], "annotations[0] names an unknown image"),
        ([{"id": 1, "file_name": ["a"]}], [], "file_name ['a'] is not a name"),
    ],
    ids=["dup-id", "dup-file", "bool-id", "str-id", "bool-image-id", "list-name"],
)
def test_coco_ids_and_file_names_are_unique_integers(
    tmp_path: Path, images: Any, annotations: Any, message: str
) -> None:
    jpeg(tmp_path / "images" / "a.jpg", 1)
    jpeg(tmp_path / "images" / "b.jpg", 2)
    coco(tmp_path, images, annotations, [{"id": 1, "name": "dent"}])
    refused(tmp_path, DETECT, "coco", message)


def test_coco_boolean_category_id_is_refused(tmp_path: Path) -> None:
    jpeg(tmp_path / "images" / "a.jpg", 1)
    coco(tmp_path, IMAGE, [], [{"id": False, "name": "dent"}])
    refused(tmp_path, DETECT, "coco", "categories[0] id False is not an integer")


def test_non_utf8_classes_txt_is_a_problem(tmp_path: Path) -> None:
    jpeg(tmp_path / "images" / "a.jpg", 1)
    (tmp_path / "classes.txt").write_bytes(b"d\xe9nt\n")
    refused(tmp_path, DETECT, "yolo", "classes.txt: not UTF-8 text")
    (tmp_path / "classes.txt").write_text("dent\ndent\n")
    refused(tmp_path, DETECT, "yolo", "classes.txt: class(es) dent listed more than once")


@pytest.mark.parametrize("url", ["nosuchproto://bucket/x", "http://127.0.0.1:9/x", "memory://nothing/here"])
def test_unreachable_or_unknown_sources_are_one_error(url: str) -> None:
    with pytest.raises(ImportValidationError, match="source"):
        scan_source(url, DETECT, "none")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"image": "a.jpg", "model_version": "1", "score": 0.5, "label": ["ok"]}, "label ['ok'] is not a class name"),
        ({"image": "a.jpg", "model_version": "1", "score": 0.5, "label": 3}, "label 3 is not a class name"),
        ({"image": "a.jpg", "model_version": "1", "score": True, "label": "ok"}, "True is not a number"),
        ([1, 2], "not a prediction record"),
    ],
)
def test_prediction_labels_must_be_class_names(tmp_path: Path, record: Any, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(ImportValidationError) as err:
        read_predictions(path, CLASSIFY)
    assert message in str(err.value)


def test_box_prediction_with_a_list_label_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    box = {"label": ["dent"], "xyxy": [0, 0, 5, 5], "score": 0.5}
    path.write_text(json.dumps({"image": "a.jpg", "model_version": "1", "score": 0.5, "boxes": [box]}) + "\n")
    with pytest.raises(ImportValidationError, match=r"label \['dent'\] is not a class name"):
        read_predictions(path, DETECT)


def test_same_bytes_with_other_labels_are_a_conflict_same_labels_a_duplicate(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        jpeg(tmp_path / "images" / f"{name}.jpg", 1)  # one image, three files
    (tmp_path / "classes.txt").write_text("dent\nrust\n")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "labels" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "labels" / "c.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    problems = refused(
        tmp_path, DETECT, "yolo", "c.jpg: same image bytes as images/a.jpg, with other labels (rust vs dent)"
    )
    assert len(problems) == 1  # b.jpg agrees with a.jpg: a duplicate, not a conflict
    (tmp_path / "labels" / "c.txt").unlink()
    refused(tmp_path, DETECT, "yolo", "(not labelled vs dent)")
    (tmp_path / "images" / "c.jpg").unlink()
    scan = scan_source(str(tmp_path), DETECT, "yolo")
    assert [i.rel for i in scan.items] == ["images/a.jpg"]
    assert scan.duplicates == ["images/b.jpg (same bytes as images/a.jpg)"]


def _mask_pair(folder: Path, name: str, mask: np.ndarray, seed: int) -> None:
    jpeg(folder / f"{name}.jpg", seed, (mask.shape[1], mask.shape[0]))
    Image.fromarray(mask.astype(np.uint8), mode="L").save(folder / f"{name}.png")


def test_a_mask_whose_defect_value_is_not_255_is_refused_not_emptied(tmp_path: Path) -> None:
    mask = np.zeros((30, 40), np.uint8)
    mask[5:10, 5:10] = 7
    _mask_pair(tmp_path / "MT_Crack", "a", mask, 1)
    refused(tmp_path, SEGMENT, "masks", "a.png: a 0/7 mask: defect pixels must be 255")
    mask[5:10, 5:10] = 7
    mask[20, 20] = 3
    _mask_pair(tmp_path / "MT_Crack", "a", mask, 1)
    refused(tmp_path, SEGMENT, "masks", "none >= 128: binarising would drop the defect")
    mask[mask > 0] = 255
    _mask_pair(tmp_path / "MT_Crack", "a", mask, 1)
    (item,) = scan_source(str(tmp_path), SEGMENT, "masks").items
    assert {lb.cls for lb in item.labels or ()} == {"crack"}


def test_an_ok_verdict_contradicting_its_mask_is_refused(tmp_path: Path) -> None:
    jpeg(tmp_path / "images" / "a.jpg", 1)
    (tmp_path / "classes.txt").write_text("crack\n")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.1 0.1 0.9 0.1 0.9 0.9\n")
    (tmp_path / "verdicts.json").write_text(json.dumps({"a.jpg": "ok"}))
    refused(tmp_path, SEGMENT, "yolo", "verdict 'ok' (OK) contradicts its mask, which marks crack")
    (tmp_path / "verdicts.json").write_text(json.dumps({"a.jpg": "crack"}))
    (item,) = scan_source(str(tmp_path), SEGMENT, "yolo").items
    assert sorted(lb.cls for lb in item.labels or ()) == ["crack", "crack"]  # the region and the verdict
