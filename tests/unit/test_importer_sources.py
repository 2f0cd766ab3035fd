"""Source scanning (no server): COCO and split-folder YOLO layouts, and their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crux.config import ProjectSpec, from_mapping
from crux.label.importer import ImportValidationError, scan_source

SPEC = from_mapping(
    ProjectSpec, {"title": "t", "kind": "detect", "classes": {"dent": "#000000", "rust": "#ffffff"}}, "p"
)


def jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def coco(root: Path, images: list[dict], annotations: list[dict], categories: list[dict] | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    cats = categories or [{"id": 1, "name": "dent"}, {"id": 2, "name": "rust"}]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": cats}))  # fmt: skip


def test_coco_boxes_become_pixel_labels(tmp_path: Path) -> None:
    jpeg(tmp_path / "images" / "a.jpg", 1)
    coco(tmp_path, [{"id": 7, "file_name": "images/a.jpg", "width": 40, "height": 30}],
         [{"id": 1, "image_id": 7, "category_id": 2, "bbox": [1.5, 2, 10, 20]}])  # fmt: skip
    scan = scan_source(str(tmp_path), SPEC, "coco")
    (item,) = scan.items
    assert (item.width, item.height) == (40, 30)
    assert [(lb.cls, lb.box.as_list()) for lb in item.labels] == [("rust", [1.5, 2.0, 11.5, 22.0])]


def test_split_folders_are_scanned_for_yolo_and_coco(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("dent\nrust\n")
    for split, seed in (("train", 1), ("val", 2)):
        jpeg(tmp_path / split / "images" / f"{split}.jpg", seed)
        (tmp_path / split / "labels").mkdir()
        (tmp_path / split / "labels" / f"{split}.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    scan = scan_source(str(tmp_path), SPEC, "yolo")
    assert sorted(item.rel for item in scan.items) == ["train/images/train.jpg", "val/images/val.jpg"]
    assert all(item.labels[0].cls == "rust" for item in scan.items)


@pytest.mark.parametrize(
    ("images", "annotations", "categories", "message"),
    [
        ([{"id": 1, "file_name": "images/nope.jpg"}], [], None, r"images/nope.jpg: listed in .* but missing"),
        ([{"id": 1, "file_name": "../../etc/passwd"}], [], None, r"leaves the dataset folder"),
        (
            [{"id": 1, "file_name": "images/a.jpg"}],
            [{"image_id": 1, "category_id": 1, "bbox": [30, 0, 20, 5]}],
            None,
            r"bbox \[30, 0, 20, 5\] is empty or outside the 40x30 image",
        ),
        (
            [{"id": 1, "file_name": "images/a.jpg"}],
            [{"image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1]}],
            None,
            r"annotations\[0\] names an unknown image",
        ),
        (
            [{"id": 1, "file_name": "images/a.jpg"}],
            [],
            [{"id": 1, "name": "scratch"}],
            r"category 1 'scratch' is not a class",
        ),
    ],
    ids=["missing-file", "path-traversal", "bbox-outside", "unknown-image", "unknown-category"],
)
def test_bad_coco_sources_name_the_problem(tmp_path: Path, images, annotations, categories, message: str) -> None:
    jpeg(tmp_path / "images" / "a.jpg", 1)
    coco(tmp_path, images, annotations, categories)
    with pytest.raises(ImportValidationError, match=message):
        scan_source(str(tmp_path), SPEC, "coco")


def test_unknown_label_format_and_empty_source(tmp_path: Path) -> None:
    with pytest.raises(ImportValidationError, match="choose one of yolo, coco, folders, masks, none"):
        scan_source(str(tmp_path), SPEC, "voc")
    with pytest.raises(ImportValidationError, match="no images found"):
        scan_source(str(tmp_path), SPEC, "none")
