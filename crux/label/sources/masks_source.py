"""`--labels masks`: pixel masks for a segment project, in class folders with a mask beside each photo (Magnetic
Tile), or in `images/` + `masks/` with class indices (as `crux export-dataset --format masks` writes them)."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from crux.kinds import Label, get_kind
from crux.label.sources.source_files import (
    IMAGE_EXTENSIONS,
    PHOTO_EXTENSIONS,
    class_for,
    class_names,
    list_images,
    mask_regions,
    read_verdicts,
    verdict_label,
)
from crux.label.sources.source_items import Reader

if TYPE_CHECKING:
    from crux.config import ProjectSpec


def scan_masks(fs: Any, root: str, spec: ProjectSpec, problems: list[str]) -> dict[str, Reader]:
    """Pixel masks for a segment project, in one of two layouts:

    - class folders with `NAME.png` beside each photo `NAME.jpg` (Magnetic Tile): white = defect of the folder's
      class (through `aliases`), an all-black mask = no defect; the folder's class is the image's verdict;
    - `images/` + `masks/` (at the root or in each split folder, as `crux export-dataset --format masks` writes):
      `masks/NAME.png` holds class indices (0 background, v = the v-th line of `classes.txt` at the root), and an
      optional `verdicts.json` beside `images/` gives each image's class.
    """
    if get_kind(spec.kind).geometry != "mask":
        problems.append(f"{root}: --labels masks gives pixel masks; project {spec.title!r} is {spec.kind!r}")
        return {}
    roots = _paired_roots(fs, root, "masks")
    return _scan_class_masks(fs, root, roots, spec, problems) if roots else _scan_folder_masks(fs, root, spec, problems)


def _paired_roots(fs: Any, root: str, other: str) -> list[tuple[str, str]]:
    """(images folder, `other` folder) pairs: at the root, or one per split folder."""
    if fs.isdir(f"{root}/images") and fs.isdir(f"{root}/{other}"):
        return [(f"{root}/images", f"{root}/{other}")]
    return [
        (f"{d}/images", f"{d}/{other}")
        for d in sorted(fs.ls(root, detail=False))
        if fs.isdir(d) and fs.isdir(f"{d}/images") and fs.isdir(f"{d}/{other}")
    ]


def _scan_folder_masks(fs: Any, root: str, spec: ProjectSpec, problems: list[str]) -> dict[str, Reader]:
    files = sorted(p for p in fs.find(root) if not posixpath.basename(p).startswith("."))
    stems: dict[str, set[str]] = {}
    for path in files:
        stem, ext = posixpath.splitext(path)
        stems.setdefault(stem, set()).add(ext.lower())
    readers: dict[str, Reader] = {}
    for path in files:
        stem, ext = posixpath.splitext(path)
        ext = ext.lower()
        if ext == ".png":
            if not stems[stem] & PHOTO_EXTENSIONS:
                problems.append(f"{path}: a mask without its image ({posixpath.basename(stem)}.jpg is missing)")
            continue
        if ext not in PHOTO_EXTENSIONS:
            kind = "not an image file" if ext not in IMAGE_EXTENSIONS else "not a photo of the mask layout (.jpg, .bmp)"
            problems.append(f"{path}: {kind} (extension {ext or 'none'})")
            continue
        parts = posixpath.relpath(path, root).split("/")
        cls = class_for(parts[0], spec) if len(parts) > 1 else None
        if len(parts) < 2:
            problems.append(f"{path}: images must sit in a folder named after their class")
        elif cls is None:
            problems.append(f"{path}: folder {parts[0]!r} is not a class (or alias) of project {spec.title!r}")
        elif ".png" not in stems[stem]:
            problems.append(f"{path}: no mask {posixpath.basename(stem)}.png beside it")
        else:
            readers[path] = partial(_folder_mask_labels, fs, f"{stem}.png", cls, spec, problems)
    return readers


def _read_mask_file(fs: Any, path: str, width: int, height: int, problems: list[str]) -> Any:
    """A mask file as (array, mode), or None after naming the problem: unreadable, or not the image's size."""
    from crux.masks import MaskError, read_image_array

    try:
        array, mode = read_image_array(fs.cat_file(path))
    except MaskError as exc:
        problems.append(f"{path}: {exc}")
        return None
    if array.shape[:2] != (height, width):
        problems.append(f"{path}: mask is {array.shape[1]}x{array.shape[0]} px, its image {width}x{height}")
        return None
    return array, mode


def _folder_mask_labels(
    fs: Any, mask_path: str, cls: str, spec: ProjectSpec, problems: list[str], width: int, height: int
) -> tuple[Label, ...] | None:
    from crux.masks import MaskError, binary_source_mask

    read = _read_mask_file(fs, mask_path, width, height, problems)
    if read is None:
        return None
    try:
        region = binary_source_mask(*read)
    except MaskError as exc:
        problems.append(f"{mask_path}: {exc}")
        return None
    regions: list[Label] = []
    if region.any():
        if cls == spec.ok_class:
            problems.append(f"{mask_path}: marks defect pixels, but its folder is the OK class {cls!r}")
            return None
        regions = mask_regions(spec, region.astype("uint8"), [cls])
    return tuple(regions) + verdict_label(cls, spec)


def _scan_class_masks(
    fs: Any, root: str, roots: Sequence[tuple[str, str]], spec: ProjectSpec, problems: list[str]
) -> dict[str, Reader]:
    classes_path = f"{root}/classes.txt"
    if not fs.exists(classes_path):
        problems.append(f"{classes_path}: missing (mask value v is the class on line v)")
        return {}
    names = class_names(fs, classes_path, problems)
    if names is None:
        return {}
    mapped: list[str] = []
    for number, name in enumerate(names, start=1):
        cls = class_for(name, spec)
        if cls is None:
            problems.append(f"{classes_path}:{number}: class {name!r} is not a class of project {spec.title!r}")
        mapped.append(cls or name)
    readers: dict[str, Reader] = {}
    for image_root, mask_root in roots:
        verdicts = read_verdicts(fs, posixpath.dirname(image_root), spec, problems)
        images = list_images(fs, image_root, problems)
        image_stems = {posixpath.splitext(posixpath.relpath(p, image_root))[0] for p in images}
        for mask in sorted(fs.find(mask_root)):
            stem, ext = posixpath.splitext(posixpath.relpath(mask, mask_root))
            if ext.lower() != ".png":
                problems.append(f"{mask}: masks are PNG files")
            elif stem not in image_stems:
                problems.append(f"{mask}: a mask without its image (no {stem}.* in {image_root})")
        for path in images:
            rel = posixpath.relpath(path, image_root)
            mask = f"{mask_root}/{posixpath.splitext(rel)[0]}.png"
            if not fs.exists(mask):
                problems.append(f"{path}: no mask {mask}")
                continue
            readers[path] = partial(_class_mask_labels, fs, mask, mapped, spec, verdicts.get(rel), problems)
    return readers


def _class_mask_labels(
    fs: Any,
    mask_path: str,
    names: Sequence[str],
    spec: ProjectSpec,
    verdict: str | None,
    problems: list[str],
    width: int,
    height: int,
) -> tuple[Label, ...] | None:
    import numpy as np

    read = _read_mask_file(fs, mask_path, width, height, problems)
    if read is None:
        return None
    array, mode = read
    if mode != "L" or array.ndim != 2:
        problems.append(f"{mask_path}: not an 8-bit single-channel class mask (mode {mode})")
        return None
    present = [int(v) for v in np.unique(array) if v]
    unknown = [v for v in present if v > len(names)]
    if unknown:
        problems.append(f"{mask_path}: pixel value(s) {unknown} name no class (classes.txt has {len(names)})")
        return None
    if any(names[v - 1] == spec.ok_class for v in present):
        problems.append(f"{mask_path}: pixels of the OK class {spec.ok_class!r}, which marks no pixels")
        return None
    classes = list(spec.classes)
    lut = np.zeros(256, dtype=np.uint8)
    for v in present:
        lut[v] = classes.index(names[v - 1]) + 1
    return tuple(mask_regions(spec, lut[array], classes)) + verdict_label(verdict, spec)
