"""`--labels yolo`: `images/`, `labels/` and `classes.txt` (at the root or in each split folder, as `crux
export-dataset --format yolo` and Ultralytics write them): `class cx cy w h` lines, or polygons for segment projects."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from crux.geometry import PixelBox, yolo_to_pixel
from crux.kinds import Label, get_kind
from crux.label.sources.source_files import (
    COORD_TOLERANCE,
    class_for,
    class_names,
    finite,
    list_images,
    read_verdicts,
    verdict_label,
)
from crux.label.sources.source_items import Reader

if TYPE_CHECKING:
    from crux.config import ProjectSpec


def _yolo_roots(fs: Any, root: str) -> list[tuple[str, str]]:
    """(images folder, labels folder) pairs: `images/` at the root, or one per split folder
    (`train/images`, …, as `crux export-dataset --format yolo` and Ultralytics write them)."""
    if fs.isdir(f"{root}/images"):
        return [(f"{root}/images", f"{root}/labels")]
    return [
        (f"{d}/images", f"{d}/labels")
        for d in sorted(fs.ls(root, detail=False))
        if fs.isdir(d) and fs.isdir(f"{d}/images")
    ]


def scan_yolo(fs: Any, root: str, spec: ProjectSpec, problems: list[str]) -> dict[str, Reader]:
    classes_path = f"{root}/classes.txt"
    roots = _yolo_roots(fs, root)
    if not roots:
        problems.append(f"{root}/images: missing (the YOLO layout is images/, labels/, classes.txt)")
    if not fs.exists(classes_path):
        problems.append(f"{classes_path}: missing")
        return {}
    names = class_names(fs, classes_path, problems)
    if names is None:
        return {}
    for number, name in enumerate(names, start=1):
        if class_for(name, spec) is None:
            problems.append(f"{classes_path}:{number}: class {name!r} is not a class of project {spec.title!r}")
    names = [class_for(n, spec) or n for n in names]
    if problems:
        return {}
    readers: dict[str, Reader] = {}
    for image_root, label_root in roots:
        verdicts = read_verdicts(fs, posixpath.dirname(image_root), spec, problems)
        for path in list_images(fs, image_root, problems):
            rel = posixpath.relpath(path, image_root)
            stem = posixpath.splitext(rel)[0]
            label_path = f"{label_root}/{stem}.txt"
            verdict = verdicts.get(rel)
            readers[path] = partial(_yolo_labels, fs, label_path, names, problems=problems, spec=spec, verdict=verdict)
    return readers


def _yolo_labels(
    fs: Any,
    label_path: str,
    names: Sequence[str],
    width: int,
    height: int,
    *,
    problems: list[str],
    spec: ProjectSpec | None = None,
    verdict: str | None = None,
) -> tuple[Label, ...] | None:
    if not fs.exists(label_path):
        return None
    if spec is not None and get_kind(spec.kind).geometry == "mask":
        return _yolo_polygons(fs, label_path, names, width, height, spec, verdict, problems)
    labels = []
    for number, line in enumerate(fs.cat_file(label_path).decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label_path}:{number}"
        fields = line.split()
        if len(fields) != 5:
            problems.append(f"{where}: expected 'class cx cy w h', got {line.strip()!r}")
            continue
        try:
            class_id = int(fields[0])
            cx, cy, w, h = (finite(v) for v in fields[1:])
        except ValueError:
            problems.append(f"{where}: not finite numbers: {line.strip()!r}")
            continue
        if not 0 <= class_id < len(names):
            problems.append(f"{where}: unknown class id {class_id} (classes.txt has {len(names)} classes)")
            continue
        edges = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if w <= 0 or h <= 0 or any(v < -COORD_TOLERANCE or v > 1 + COORD_TOLERANCE for v in (cx, cy, w, h, *edges)):
            problems.append(f"{where}: box {cx} {cy} {w} {h} is empty or outside 0..1")
            continue
        box = yolo_to_pixel(cx, cy, w, h, width, height)
        if box.x2 <= box.x1 or box.y2 <= box.y1:  # a width like 1e-308 is positive but no pixel wide
            problems.append(f"{where}: box {cx} {cy} {w} {h} is empty in pixels")
            continue
        labels.append(Label(cls=names[class_id], box=box))
    return tuple(labels)


def _yolo_polygons(
    fs: Any,
    label_path: str,
    names: Sequence[str],
    width: int,
    height: int,
    spec: ProjectSpec,
    verdict: str | None,
    problems: list[str],
) -> tuple[Label, ...]:
    """YOLO segmentation lines `class x1 y1 x2 y2 …` (≥ 3 points, 0..1): one region per line, rasterised."""
    from crux.masks import MaskError, bbox, coco_polygon

    labels = []
    for number, line in enumerate(fs.cat_file(label_path).decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label_path}:{number}"
        fields = line.split()
        if len(fields) < 7 or len(fields) % 2 == 0:
            problems.append(
                f"{where}: expected 'class x1 y1 x2 y2 x3 y3 …' (a polygon of ≥ 3 points), got {line.strip()!r}"
            )
            continue
        try:
            class_id = int(fields[0])
            coords = [finite(v) for v in fields[1:]]
        except ValueError:
            problems.append(f"{where}: not finite numbers: {line.strip()!r}")
            continue
        if not 0 <= class_id < len(names):
            problems.append(f"{where}: unknown class id {class_id} (classes.txt has {len(names)} classes)")
            continue
        if names[class_id] == spec.ok_class:
            problems.append(f"{where}: class {names[class_id]!r} is the OK class, which marks no pixels")
            continue
        if any(v < -COORD_TOLERANCE or v > 1 + COORD_TOLERANCE for v in coords):
            problems.append(f"{where}: polygon point outside 0..1")
            continue
        pixels = [v * (width if i % 2 == 0 else height) for i, v in enumerate(coords)]
        try:
            region = coco_polygon(pixels, width, height)
        except MaskError as exc:
            problems.append(f"{where}: {exc}")
            continue
        box = bbox(region)
        if box is None:
            problems.append(f"{where}: the polygon covers no pixel centre (smaller than a pixel): nothing to label")
            continue
        labels.append(Label(cls=names[class_id], box=PixelBox(*box), mask=region))
    return tuple(labels) + verdict_label(verdict, spec)
