"""Issue #14: NaN and inf coming from outside (YOLO, COCO, predictions files) are refused, naming file:line, before
anything is imported; a missing predictions file is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crux.config import ProjectSpec, from_mapping
from crux.label.importer import ImportValidationError, read_predictions, scan_source

SPEC = from_mapping(
    ProjectSpec, {"title": "t", "kind": "detect", "classes": {"dent": "#000000", "rust": "#ffffff"}}, "p"
)


def jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path)


@pytest.mark.parametrize("line", ["0 nan 0.5 0.2 0.2", "0 0.5 0.5 inf 0.2", "1 0.5 -inf 0.2 0.2", "0 0.5 0.5 NaN NaN"])
def test_yolo_non_finite_coordinates_are_refused_with_file_and_line(tmp_path: Path, line: str) -> None:
    (tmp_path / "classes.txt").write_text("dent\nrust\n")
    jpeg(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text(f"1 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(ImportValidationError, match=r"labels/a\.txt:2: not finite numbers"):
        scan_source(str(tmp_path), SPEC, "yolo")


def test_coco_non_finite_bbox_is_refused(tmp_path: Path) -> None:
    jpeg(tmp_path / "images" / "a.jpg")
    doc = {
        "images": [{"id": 7, "file_name": "images/a.jpg"}],
        "annotations": [{"id": 3, "image_id": 7, "category_id": 1, "bbox": [1, float("nan"), 5, 5]}],
        "categories": [{"id": 1, "name": "dent"}],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(doc))  # json writes NaN, and reads it back
    with pytest.raises(ImportValidationError, match=r"annotations\.json image 7 annotation 3: bbox .* not 4 finite"):
        scan_source(str(tmp_path), SPEC, "coco")


def test_coco_non_finite_polygon_is_a_mask_error() -> None:
    from crux.masks import MaskError, coco_segmentation

    with pytest.raises(MaskError, match="finite"):
        coco_segmentation([[1, 1, float("nan"), 1, 5, 5]], 10, 10)


@pytest.mark.parametrize(
    "record",
    [
        {"image": "a.jpg", "model_version": "1", "score": float("nan"), "boxes": []},
        {"image": "a.jpg", "model_version": "1", "score": 0.9,
         "boxes": [{"label": "dent", "xyxy": [0, 0, float("inf"), 5], "score": 0.9}]},
        {"image": "a.jpg", "model_version": "1", "score": 0.9,
         "boxes": [{"label": "dent", "xyxy": [0, 0, 5, 5], "score": float("nan")}]},
    ],
)  # fmt: skip
def test_predictions_with_nan_or_inf_are_refused_with_file_and_line(tmp_path: Path, record: dict) -> None:
    path = tmp_path / "preds.jsonl"
    good = {"image": "b.jpg", "model_version": "1", "score": 0.5, "boxes": []}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ImportValidationError, match=r"preds\.jsonl:2: not a prediction record .*not a finite number"):
        read_predictions(path, SPEC)


def test_missing_predictions_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ImportValidationError, match=r"missing\.jsonl: predictions file not found"):
        read_predictions(tmp_path / "missing.jsonl", SPEC)
