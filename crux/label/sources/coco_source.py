"""`--labels coco`: `annotations.json` at the root or in each split folder (boxes, whole-image categories, or
segmentations for segment projects; an image's `verdict`, which `crux export-dataset` adds for segment datasets)."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from crux.geometry import PixelBox
from crux.kinds import Label, get_kind
from crux.label.sources.source_files import COORD_TOLERANCE, class_for, finite, verdict_label
from crux.label.sources.source_items import Reader

if TYPE_CHECKING:
    from crux.config import ProjectSpec


def scan_coco(fs: Any, root: str, spec: ProjectSpec, problems: list[str]) -> dict[str, Reader]:
    """COCO: `annotations.json` at the root or in each split folder; file_name relative to the json."""
    files = (
        [f"{root}/annotations.json"]
        if fs.exists(f"{root}/annotations.json")
        else [f"{d}/annotations.json" for d in sorted(fs.ls(root, detail=False)) if fs.exists(f"{d}/annotations.json")]
    )
    if not files:
        problems.append(f"{root}/annotations.json: missing (COCO layout)")
    readers: dict[str, Reader] = {}
    for ann_path in files:
        try:
            coco = json.loads(fs.cat_file(ann_path))
            if not isinstance(coco, dict):
                raise TypeError("the file is not a JSON object")
            category_rows = _coco_table(coco["categories"], "categories", "name", ann_path, problems)
            image_rows = _coco_table(coco["images"], "images", "file_name", ann_path, problems)
            images = {image_id: str(row["file_name"]) for image_id, row in image_rows.items()}
            # `verdict`: the image's class, which `crux export-dataset` adds for segment datasets.
            verdicts = {i: row["verdict"] for i, row in image_rows.items() if row.get("verdict") is not None}
            annotations = coco.get("annotations", [])
            if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
                raise TypeError("annotations is not a list of objects")
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            problems.append(f"{ann_path}: not a COCO annotation file ({type(exc).__name__}: {exc})")
            continue
        named: dict[str, int] = {}
        for image_id, file_name in images.items():
            if file_name in named:  # two ids, one file: whose labels it has would be a guess
                problems.append(f"{ann_path}: file_name {file_name!r} is listed twice (images {named[file_name]} "
                                f"and {image_id})")  # fmt: skip
            named.setdefault(file_name, image_id)
        categories = {cat_id: str(row["name"]) for cat_id, row in category_rows.items()}
        for cat_id, name in categories.items():
            if class_for(name, spec) is None:
                problems.append(f"{ann_path}: category {cat_id} {name!r} is not a class of project {spec.title!r}")
        by_image: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in images}
        for index, ann in enumerate(annotations):
            image_id, category_id = ann.get("image_id"), ann.get("category_id")
            if (
                type(image_id) is not int  # not isinstance: True is an int, and would name image 1
                or image_id not in by_image
                or type(category_id) is not int
                or category_id not in categories
            ):
                problems.append(f"{ann_path}: annotations[{index}] names an unknown image or category")
                continue
            by_image[image_id].append(ann)
        folder = posixpath.dirname(ann_path)
        for image_id, file_name in images.items():
            path = posixpath.normpath(f"{folder}/{file_name}")
            if not path.startswith(folder + "/"):
                problems.append(f"{ann_path}: image {image_id} file_name {file_name!r} leaves the dataset folder")
                continue
            if not fs.exists(path):
                problems.append(f"{path}: listed in {ann_path} (image {image_id}) but missing")
                continue
            anns = by_image[image_id]
            where = f"{ann_path} image {image_id}"
            verdict = verdicts.get(image_id)
            if verdict is not None and class_for(str(verdict), spec) is None:
                problems.append(f"{where}: verdict {verdict!r} is not a class of project {spec.title!r}")
                verdict = None
            verdict = None if verdict is None else class_for(str(verdict), spec)
            readers[path] = partial(
                _coco_labels, anns, categories, spec, where=where, problems=problems, verdict=verdict
            )
    return readers


def _coco_table(rows: Any, table: str, name_key: str, ann_path: str, problems: list[str]) -> dict[int, Any]:
    """A COCO `images` or `categories` list keyed by id: ids are integers (not booleans, not strings) and unique; a
    repeated id is a problem (the later row would silently replace the earlier one)."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"{table} is not a list of objects")
    out: dict[int, Any] = {}
    for index, row in enumerate(rows):
        row_id = row["id"]
        if type(row_id) is not int:
            problems.append(f"{ann_path}: {table}[{index}] id {row_id!r} is not an integer")
        elif not isinstance(row[name_key], str) or not row[name_key]:
            problems.append(f"{ann_path}: {table}[{index}] {name_key} {row[name_key]!r} is not a name")
        elif row_id in out:
            problems.append(f"{ann_path}: {table}[{index}] repeats id {row_id}")
        else:
            out[row_id] = {**row, name_key: row[name_key]}
    return out


def _coco_labels(
    anns: Sequence[dict[str, Any]],
    categories: Mapping[int, str],
    spec: ProjectSpec,
    width: int,
    height: int,
    *,
    where: str,
    problems: list[str],
    verdict: str | None = None,
) -> tuple[Label, ...]:
    if get_kind(spec.kind).geometry == "mask":
        return _coco_regions(anns, categories, spec, width, height, where, problems) + verdict_label(verdict, spec)
    labels = []
    for ann in anns:
        cls = class_for(categories[ann["category_id"]], spec) or categories[ann["category_id"]]
        bbox = ann.get("bbox")
        if get_kind(spec.kind).geometry == "image" or bbox is None:
            labels.append(Label(cls=cls))
            continue
        try:
            x, y, w, h = (finite(v) for v in bbox)
        except (TypeError, ValueError):
            problems.append(f"{where} annotation {ann.get('id')}: bbox {bbox} is not 4 finite numbers")
            continue
        tol = COORD_TOLERANCE * max(width, height) + 1e-3
        if w <= 0 or h <= 0 or x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            problems.append(f"{where}: bbox {bbox} is empty or outside the {width}x{height} image")
            continue
        labels.append(Label(cls=cls, box=PixelBox(x, y, x + w, y + h)))
    return tuple(labels)


def _coco_regions(
    anns: Sequence[dict[str, Any]],
    categories: Mapping[int, str],
    spec: ProjectSpec,
    width: int,
    height: int,
    where: str,
    problems: list[str],
) -> tuple[Label, ...]:
    """COCO `segmentation` (RLE or polygons) → one region per annotation."""
    from crux.masks import MaskError, bbox, coco_segmentation

    labels = []
    for ann in anns:
        cls = class_for(categories[ann["category_id"]], spec) or categories[ann["category_id"]]
        at = f"{where} annotation {ann.get('id')}"
        if cls == spec.ok_class:
            problems.append(f"{at}: class {cls!r} is the OK class, which marks no pixels")
            continue
        if ann.get("segmentation") is None:
            problems.append(f"{at}: no segmentation (a segment project needs masks or polygons, not only boxes)")
            continue
        try:
            region = coco_segmentation(ann["segmentation"], width, height)
        except (MaskError, ValueError, TypeError, KeyError) as exc:
            problems.append(f"{at}: bad segmentation ({exc})")
            continue
        box = bbox(region)
        if box is None:
            problems.append(f"{at}: the segmentation covers no pixel: nothing to label")
            continue
        labels.append(Label(cls=cls, box=PixelBox(*box), mask=region))
    return tuple(labels)
