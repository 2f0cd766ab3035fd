"""Import images and existing labels into an inspection project, in bulk.

Two phases, so that nothing is half imported: `scan_source` reads, decodes and validates every
image and label of the source and raises one error listing every problem (file and line);
only then does `import_items` write to Label Studio, through the bulk task endpoint with the
annotations and predictions embedded (one request per batch, never one per annotation).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crux.errors import CruxError
from crux.geometry import PixelBox, yolo_to_pixel
from crux.kinds import Label, LabelError, get_kind

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

    from crux.config import ProjectSpec

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# Magnetic Tile keeps a pixel mask NAME.png beside each NAME.jpg; a PNG twin of a photo is a mask.
PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".bmp"})
COORD_TOLERANCE = 1e-6
BATCH_SIZE = 500
VERDICTS = "verdicts.json"  # segment exports: {image file name: class} beside images/


class ImportValidationError(CruxError, ValueError):
    """The source has problems; `problems` names each file (and line) at fault. Nothing was imported."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:25])
        more = f"\n  … and {len(self.problems) - 25} more" if len(self.problems) > 25 else ""
        super().__init__(f"{len(self.problems)} problem(s) in the source, nothing imported:\n  {shown}{more}")


@dataclass(frozen=True)
class SourceItem:
    """One validated image of the source."""

    url: str  # fsspec URL of the image (a local absolute path for folders)
    rel: str  # path relative to the source root, for messages and prediction matching
    sha256: str
    width: int
    height: int
    labels: tuple[Label, ...] | None  # None: the image has no labels yet


@dataclass(frozen=True)
class Prediction:
    """A model pre-annotation, in the `crux predict --json` contract."""

    model_version: str
    score: float
    labels: tuple[Label, ...]
    label_scores: tuple[float, ...]
    where: str = ""  # file:line it came from, for messages


@dataclass
class ScanResult:
    root: str
    items: list[SourceItem]
    duplicates: list[str] = field(default_factory=list)  # rel paths whose bytes repeat an earlier image


@dataclass(frozen=True)
class ImportReport:
    project_id: int
    scanned: int
    created: int
    already_present: int
    duplicates_in_source: int
    annotations: int
    predictions: int
    task_ids: tuple[int, ...]
    # Images the project already holds with other labels than the source's: "file: …, kept the project's labels".
    conflicts: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------
# Reading the source


def _open_fs(source: str) -> tuple[Any, str]:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(source)
        found = fs.exists(root) and fs.isdir(root)
    except Exception as exc:  # fsspec backends raise their own types (botocore, aiohttp, ValueError for a protocol)
        raise ImportValidationError([f"{source}: cannot open the source ({type(exc).__name__}: {exc})"]) from exc
    if not found:
        raise ImportValidationError([f"{source}: source folder does not exist"])
    return fs, root.rstrip("/")


def _read_text(fs: Any, path: str, problems: list[str]) -> str | None:
    """A UTF-8 text file of the source (classes.txt), or None after naming the problem."""
    try:
        return str(fs.cat_file(path).decode("utf-8"))
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: not UTF-8 text ({exc})")
        return None


def _class_names(fs: Any, path: str, problems: list[str]) -> list[str] | None:
    """classes.txt: one class a line (blank lines skipped); a name given twice is a problem (ids would be ambiguous)."""
    text = _read_text(fs, path, problems)
    if text is None:
        return None
    names = [c.strip() for c in text.splitlines() if c.strip()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"{path}: class(es) {', '.join(repeated)} listed more than once")
    return names


def _protocol(fs: Any) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "file" if protocol in ("file", "local") else protocol


def _url(fs: Any, path: str) -> str:
    protocol = _protocol(fs)
    return path if protocol == "file" else f"{protocol}://{path}"


def _decode(fs: Any, path: str) -> tuple[str, int, int]:
    from crux.postprocess import open_image

    data = fs.cat_file(path)
    with open_image(io.BytesIO(data), name=path) as image:
        image.load()  # a full decode: truncated or corrupt files fail here, not at training time
        width, height = image.size
    return hashlib.sha256(data).hexdigest(), width, height


def _list_images(fs: Any, root: str, problems: list[str]) -> list[str]:
    files = sorted(p for p in fs.find(root) if not posixpath.basename(p).startswith("."))
    by_stem: dict[str, set[str]] = {}
    for path in files:
        stem, ext = posixpath.splitext(path)
        by_stem.setdefault(stem, set()).add(ext.lower())
    images = []
    for path in files:
        stem, ext = posixpath.splitext(path)
        ext = ext.lower()
        if ext == ".png" and by_stem[stem] & PHOTO_EXTENSIONS:
            continue  # a mask beside its photo
        if ext not in IMAGE_EXTENSIONS:
            problems.append(f"{path}: not an image file (extension {ext or 'none'})")
            continue
        images.append(path)
    return images


def _decode_all(fs: Any, paths: Sequence[str], problems: list[str], progress: Callable[[int], None] | None) -> dict:
    decoded: dict[str, tuple[str, int, int]] = {}

    def work(path: str) -> tuple[str, tuple[str, int, int] | Exception]:
        try:
            return path, _decode(fs, path)
        except Exception as exc:  # Pillow raises many types for bad files
            return path, exc

    with ThreadPoolExecutor(max_workers=4) as pool:
        for path, outcome in pool.map(work, paths):
            if isinstance(outcome, Exception):
                problems.append(f"{path}: not a readable image ({type(outcome).__name__}: {outcome})")
            else:
                decoded[path] = outcome
            if progress:
                progress(1)
    return decoded


def _finite(value: Any) -> float:
    """float(value), refusing NaN and ±inf (every range check would let NaN through: NaN < 0 is False)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _class_name(value: Any) -> str:
    """A class name in a JSON record: a non-empty string (a list or number would pass `in classes` checks oddly and
    break set operations later)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"label {value!r} is not a class name")
    return value


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
            cx, cy, w, h = (_finite(v) for v in fields[1:])
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
            coords = [_finite(v) for v in fields[1:]]
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
    return tuple(labels) + _verdict_label(verdict, spec)


def _verdict_label(verdict: str | None, spec: ProjectSpec) -> tuple[Label, ...]:
    """The whole-image verdict as a label, where the project has the Choices for it (an ok_class)."""
    return (Label(cls=verdict),) if verdict is not None and spec.ok_class is not None else ()


def _read_verdicts(fs: Any, folder: str, spec: ProjectSpec, problems: list[str]) -> dict[str, str]:
    """`verdicts.json` ({image file name: class}) that `crux export-dataset` writes beside segment exports."""
    path = f"{folder}/{VERDICTS}"
    if not fs.exists(path):
        return {}
    try:
        data = json.loads(fs.cat_file(path))
        if not isinstance(data, dict):
            raise TypeError("not an object")
    except (ValueError, TypeError) as exc:
        problems.append(f"{path}: not a JSON object of image name → class ({exc})")
        return {}
    out = {}
    for name, cls in data.items():
        mapped = _class_for(str(cls), spec)
        if mapped is None:
            problems.append(f"{path}: {name}: class {cls!r} is not a class of project {spec.title!r}")
        else:
            out[str(name)] = mapped
    return out


def _class_for(name: str, spec: ProjectSpec) -> str | None:
    if name in spec.aliases:
        return spec.aliases[name]
    return name if name in spec.classes else None


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


def _scan_yolo(fs: Any, root: str, spec: ProjectSpec, problems: list[str]) -> dict[str, Callable[..., Any]]:
    classes_path = f"{root}/classes.txt"
    roots = _yolo_roots(fs, root)
    if not roots:
        problems.append(f"{root}/images: missing (the YOLO layout is images/, labels/, classes.txt)")
    if not fs.exists(classes_path):
        problems.append(f"{classes_path}: missing")
        return {}
    names = _class_names(fs, classes_path, problems)
    if names is None:
        return {}
    for number, name in enumerate(names, start=1):
        if _class_for(name, spec) is None:
            problems.append(f"{classes_path}:{number}: class {name!r} is not a class of project {spec.title!r}")
    names = [_class_for(n, spec) or n for n in names]
    if problems:
        return {}
    readers: dict[str, Callable[..., Any]] = {}
    for image_root, label_root in roots:
        verdicts = _read_verdicts(fs, posixpath.dirname(image_root), spec, problems)
        for path in _list_images(fs, image_root, problems):
            rel = posixpath.relpath(path, image_root)
            stem = posixpath.splitext(rel)[0]
            label_path = f"{label_root}/{stem}.txt"
            verdict = verdicts.get(rel)
            readers[path] = partial(_yolo_labels, fs, label_path, names, problems=problems, spec=spec, verdict=verdict)
    return readers


def _scan_coco(fs: Any, root: str, spec: ProjectSpec, problems: list[str]) -> dict[str, Callable[..., Any]]:
    """COCO: `annotations.json` at the root or in each split folder; file_name relative to the json."""
    files = (
        [f"{root}/annotations.json"]
        if fs.exists(f"{root}/annotations.json")
        else [f"{d}/annotations.json" for d in sorted(fs.ls(root, detail=False)) if fs.exists(f"{d}/annotations.json")]
    )
    if not files:
        problems.append(f"{root}/annotations.json: missing (COCO layout)")
    readers: dict[str, Callable[..., Any]] = {}
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
            if _class_for(name, spec) is None:
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
            if verdict is not None and _class_for(str(verdict), spec) is None:
                problems.append(f"{where}: verdict {verdict!r} is not a class of project {spec.title!r}")
                verdict = None
            verdict = None if verdict is None else _class_for(str(verdict), spec)
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
        return _coco_regions(anns, categories, spec, width, height, where, problems) + _verdict_label(verdict, spec)
    labels = []
    for ann in anns:
        cls = _class_for(categories[ann["category_id"]], spec) or categories[ann["category_id"]]
        bbox = ann.get("bbox")
        if get_kind(spec.kind).geometry == "image" or bbox is None:
            labels.append(Label(cls=cls))
            continue
        try:
            x, y, w, h = (_finite(v) for v in bbox)
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
        cls = _class_for(categories[ann["category_id"]], spec) or categories[ann["category_id"]]
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


def _scan_folders(fs: Any, root: str, spec: ProjectSpec, problems: list[str]) -> dict[str, Callable[..., Any]]:
    if get_kind(spec.kind).geometry != "image":  # classify, and anomaly (OK / NG) lines
        problems.append(f"{root}: --labels folders gives whole-image classes; project {spec.title!r} is {spec.kind!r}")
        return {}
    readers: dict[str, Callable[..., Any]] = {}
    for path in _list_images(fs, root, problems):
        parts = posixpath.relpath(path, root).split("/")
        cls = _class_for(parts[0], spec) if len(parts) > 1 else None
        if len(parts) < 2:
            problems.append(f"{path}: images must sit in a folder named after their class")
        elif cls is None:
            problems.append(f"{path}: folder {parts[0]!r} is not a class (or alias) of project {spec.title!r}")
        else:
            readers[path] = partial(_constant_labels, (Label(cls=cls),))
    return readers


def _scan_masks(fs: Any, root: str, spec: ProjectSpec, problems: list[str]) -> dict[str, Callable[..., Any]]:
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


def _scan_folder_masks(fs: Any, root: str, spec: ProjectSpec, problems: list[str]) -> dict[str, Callable[..., Any]]:
    files = sorted(p for p in fs.find(root) if not posixpath.basename(p).startswith("."))
    stems: dict[str, set[str]] = {}
    for path in files:
        stem, ext = posixpath.splitext(path)
        stems.setdefault(stem, set()).add(ext.lower())
    readers: dict[str, Callable[..., Any]] = {}
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
        cls = _class_for(parts[0], spec) if len(parts) > 1 else None
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
        regions = get_kind(spec.kind).regions_from_mask(region.astype("uint8"), [cls])
    return tuple(regions) + _verdict_label(cls, spec)


def _scan_class_masks(
    fs: Any, root: str, roots: Sequence[tuple[str, str]], spec: ProjectSpec, problems: list[str]
) -> dict[str, Callable[..., Any]]:
    classes_path = f"{root}/classes.txt"
    if not fs.exists(classes_path):
        problems.append(f"{classes_path}: missing (mask value v is the class on line v)")
        return {}
    names = _class_names(fs, classes_path, problems)
    if names is None:
        return {}
    mapped: list[str] = []
    for number, name in enumerate(names, start=1):
        cls = _class_for(name, spec)
        if cls is None:
            problems.append(f"{classes_path}:{number}: class {name!r} is not a class of project {spec.title!r}")
        mapped.append(cls or name)
    readers: dict[str, Callable[..., Any]] = {}
    for image_root, mask_root in roots:
        verdicts = _read_verdicts(fs, posixpath.dirname(image_root), spec, problems)
        images = _list_images(fs, image_root, problems)
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
    return tuple(get_kind(spec.kind).regions_from_mask(lut[array], classes)) + _verdict_label(verdict, spec)


def _scan_unlabeled(fs: Any, root: str, spec: ProjectSpec, problems: list[str]) -> dict[str, Callable[..., Any]]:
    return {path: partial(_constant_labels, None) for path in _list_images(fs, root, problems)}


def _constant_labels(labels: tuple[Label, ...] | None, width: int, height: int) -> tuple[Label, ...] | None:
    return labels


# Each reader maps an image path to a function (width, height) -> labels | None, adding to `problems`.
SOURCE_FORMATS: dict[str, Callable[[Any, str, ProjectSpec, list[str]], dict[str, Callable[..., Any]]]] = {
    "yolo": _scan_yolo,
    "coco": _scan_coco,
    "folders": _scan_folders,
    "masks": _scan_masks,
    "none": _scan_unlabeled,
}
LABEL_FORMATS = tuple(SOURCE_FORMATS)


def _as_kind(labels: tuple[Label, ...] | None, spec: ProjectSpec, where: str, problems: list[str]) -> Any:
    """Boxes given for a classification project: the image's class is its boxes' (single) class."""
    if labels is None or get_kind(spec.kind).geometry != "image" or all(label.box is None for label in labels):
        return labels
    classes = {label.cls for label in labels}
    if len(classes) != 1:
        problems.append(f"{where}: a classification image needs one class, got {sorted(classes)}")
        return None
    return (Label(cls=classes.pop()),)


def scan_source(
    source: str, spec: ProjectSpec, label_format: str, progress: Callable[[int], None] | None = None
) -> ScanResult:
    """Read and validate everything; raise ImportValidationError listing every problem found."""
    if label_format not in SOURCE_FORMATS:
        raise ImportValidationError([f"--labels {label_format}: choose one of {', '.join(LABEL_FORMATS)}"])
    fs, root = _open_fs(source)
    problems: list[str] = []
    readers = SOURCE_FORMATS[label_format](fs, root, spec, problems)
    if problems:
        raise ImportValidationError(problems)
    if not readers:
        raise ImportValidationError([f"{root}: no images found"])
    paths = sorted(readers)
    decoded = _decode_all(fs, paths, problems, progress)
    items: list[SourceItem] = []
    seen: dict[str, int] = {}  # sha256 → index in items
    duplicates: list[str] = []
    for path in paths:
        if path not in decoded:
            continue
        sha256, width, height = decoded[path]
        rel = posixpath.relpath(path, root)
        labels = _as_kind(readers[path](width, height), spec, path, problems)
        _check_verdict(labels, spec, path, problems)
        if sha256 in seen:
            first = items[seen[sha256]]
            if not same_labels(first.labels, labels):  # which of the two is right is the source owner's call
                problems.append(f"{path}: same image bytes as {first.rel}, with other labels ({describe(labels)} vs "
                                f"{describe(first.labels)})")  # fmt: skip
            duplicates.append(f"{rel} (same bytes as {first.rel})")
            continue
        seen[sha256] = len(items)
        items.append(SourceItem(_url(fs, path), rel, sha256, width, height, labels))
    if problems:
        raise ImportValidationError(problems)
    return ScanResult(root=_url(fs, root), items=items, duplicates=duplicates)


def _check_verdict(labels: tuple[Label, ...] | None, spec: ProjectSpec, where: str, problems: list[str]) -> None:
    """A segment image whose verdict is the OK class while its mask marks defect pixels contradicts itself: the
    dataset would keep the verdict (crux.kinds SegmentKind.verdict) and train an OK image with a defect mask."""
    if not labels or spec.ok_class is None or get_kind(spec.kind).geometry != "mask":
        return
    verdicts = [lb.cls for lb in labels if lb.mask is None and lb.box is None]
    regions = sorted({lb.cls for lb in labels if lb.mask is not None})
    if verdicts and verdicts[-1] == spec.ok_class and regions:
        marked = ", ".join(regions)
        problems.append(f"{where}: verdict {spec.ok_class!r} (OK) contradicts its mask, which marks {marked}")


def _label_key(label: Label) -> tuple[Any, ...]:
    box = None if label.box is None else tuple(round(v, 3) for v in label.box.as_list())
    mask = None if label.mask is None else hashlib.sha256(label.mask.astype(bool).tobytes()).hexdigest()
    return (label.cls, box or (), mask or "")


def same_labels(a: Sequence[Label] | None, b: Sequence[Label] | None) -> bool:
    """The same labels, in any order (boxes to 1/1000 px: Label Studio's percent coordinates round-trip within that;
    masks pixel for pixel). None (not labelled) equals only None."""
    if a is None or b is None:
        return a is b
    return sorted(map(_label_key, a)) == sorted(map(_label_key, b))


def describe(labels: Sequence[Label] | None) -> str:
    """Labels for a message: classes with their counts ("scratch x2, spot"), or "no labels"."""
    if labels is None:
        return "not labelled"
    counts: dict[str, int] = {}
    for label in labels:
        counts[label.cls] = counts.get(label.cls, 0) + 1
    return ", ".join(f"{c} x{n}" if n > 1 else c for c, n in sorted(counts.items())) or "no labels"


def read_predictions(path: Path, spec: ProjectSpec) -> dict[str, Prediction]:
    """`crux predict --json` lines, keyed by the image path as given (relative to the source root).

    Segment projects: each line names a mask PNG (`"mask"`, relative to the JSONL file's folder) with class
    indices (0 background, v = 1 + index in the project's classes), or 0/255 for the single class `"label"`;
    `"label"` is also the predicted verdict.
    """
    problems: list[str] = []
    predictions: dict[str, Prediction] = {}
    geometry = get_kind(spec.kind).geometry
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ImportValidationError([f"{path}: predictions file not found"]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportValidationError([f"{path}: cannot read the predictions file ({exc})"]) from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
            image = record["image"]
            if not isinstance(image, str) or not image:
                raise ValueError(f"image {image!r} is not a path")
            model_version = str(record["model_version"])
            score = _finite(record["score"])
            if geometry == "box":
                boxes = record.get("boxes") or []
                if not isinstance(boxes, list) or not all(isinstance(b, dict) for b in boxes):
                    raise TypeError("boxes is not a list of objects")
                labels = tuple(
                    Label(cls=_class_name(b["label"]), box=PixelBox(*map(_finite, b["xyxy"]))) for b in boxes
                )
                scores = tuple(_finite(b["score"]) for b in boxes)
            elif geometry == "mask":
                labels = _predicted_regions(path.parent, record, spec, where, problems)
                if labels is None:
                    continue
                scores = (score,) * len(labels)
            else:
                labels, scores = (Label(cls=_class_name(record["label"])),), (score,)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"{where}: not a prediction record ({type(exc).__name__}: {exc})")
            continue
        outside = [v for v in (score, *scores) if not 0.0 <= v <= 1.0]
        if outside:
            problems.append(f"{where}: score(s) {outside} outside 0..1")
            continue
        unknown = sorted({label.cls for label in labels} - set(spec.classes))
        if unknown:
            problems.append(f"{where}: class(es) {', '.join(unknown)} not in project {spec.title!r}")
            continue
        predictions[posixpath.normpath(image)] = Prediction(model_version, score, labels, scores, where)
    if problems:
        raise ImportValidationError(problems)
    return predictions


def _predicted_regions(
    folder: Path, record: Mapping[str, Any], spec: ProjectSpec, where: str, problems: list[str]
) -> tuple[Label, ...] | None:
    """A segment prediction's mask PNG → regions, plus its `label` as the verdict (with an ok_class)."""
    import numpy as np

    from crux.masks import MaskError, read_image_array

    label = record.get("label")
    if label is not None and not (isinstance(label, str) and label in spec.classes):
        problems.append(f"{where}: class {label!r} not in project {spec.title!r}")
        return None
    if not record.get("mask"):
        return _verdict_label(label, spec)  # "no defect found" is a prediction too
    mask_path = (folder / str(record["mask"])).resolve()
    at = f"{where}: mask {mask_path}"
    try:
        array, mode = read_image_array(mask_path.read_bytes())
    except (OSError, MaskError) as exc:
        problems.append(f"{at}: {exc}")
        return None
    if mode != "L" or array.ndim != 2:
        problems.append(f"{at}: not an 8-bit single-channel mask (mode {mode})")
        return None
    classes = list(spec.classes)
    values = [int(v) for v in np.unique(array) if v]
    if values == [255]:  # a binary mask of the one class `label`
        if label is None or label == spec.ok_class:
            problems.append(f'{at}: a 0/255 mask needs a defect class in "label"')
            return None
        array = np.where(array == 255, classes.index(label) + 1, 0).astype(np.uint8)
        values = [classes.index(label) + 1]
    if any(v > len(classes) for v in values):
        problems.append(f"{at}: pixel values {values} are neither 0/255 nor class indices 1..{len(classes)}")
        return None
    if spec.ok_class is not None and classes.index(spec.ok_class) + 1 in values:
        problems.append(f"{at}: pixels of the OK class {spec.ok_class!r}, which marks no pixels")
        return None
    return tuple(get_kind(spec.kind).regions_from_mask(array, classes)) + _verdict_label(label, spec)


def match_predictions(scan: ScanResult, predictions: Mapping[str, Prediction]) -> dict[str, Prediction]:
    """Key predictions by image sha256; a prediction for an image not in the source, or with a mask of another
    size than its image, is an error."""
    root = scan.root.split("://", 1)[-1]
    by_rel = {item.rel: item for item in scan.items}
    matched: dict[str, Prediction] = {}
    unmatched = []
    for image, prediction in predictions.items():
        rel = posixpath.relpath(image, root) if posixpath.isabs(image) else image
        item = by_rel.get(rel)
        if item is None:
            unmatched.append(f"prediction for {image}: no such image in {scan.root}")
            continue
        sizes = {lb.mask.shape for lb in prediction.labels if lb.mask is not None}
        if sizes - {(item.height, item.width)}:
            h, w = next(iter(sizes - {(item.height, item.width)}))
            unmatched.append(f"{prediction.where}: mask is {w}x{h} px, the image {image} {item.width}x{item.height}")
            continue
        matched[item.sha256] = prediction
    if unmatched:
        raise ImportValidationError(unmatched)
    return matched


# --------------------------------------------------------------------------------------------------
# Writing to Label Studio


def local_files_url(path: str, files_root: Path) -> str:
    """The URL Label Studio serves a local file under; refuses paths outside its document root."""
    resolved = Path(path).resolve()
    root = files_root.resolve()
    if not resolved.is_relative_to(root):
        raise ImportValidationError(
            [f"{path}: outside Label Studio's files root {root}; move the data below it or set labelstudio.files_root"]
        )
    return "/data/local-files/?d=" + urllib.parse.quote(resolved.relative_to(root).as_posix())


def ensure_storage(client: LabelStudio, project_id: int, source_root: str, s3_options: Mapping[str, Any]) -> None:
    """A Label Studio storage that lets annotators' browsers load the source's images (not synced:
    CRUX imports the tasks itself, with their labels)."""
    if source_root.startswith("s3://"):
        bucket, _, prefix = source_root[len("s3://") :].partition("/")
        existing = client.import_storage.s3.list(project=project_id)
        if any(s.bucket == bucket and (s.prefix or "") == prefix for s in existing):
            return
        client.import_storage.s3.create(
            project=project_id,
            bucket=bucket,
            prefix=prefix,
            title=f"crux: {source_root}",
            use_blob_urls=True,
            **s3_options,
        )
        return
    path = str(Path(source_root).resolve())
    existing = client.import_storage.local.list(project=project_id)
    if any(s.path == path for s in existing):
        return
    client.import_storage.local.create(project=project_id, path=path, title=f"crux: {path}", use_blob_urls=True)


def existing_hashes(client: LabelStudio, project_id: int) -> dict[str, int]:
    """sha256 → task id of the tasks already in a project (dedup by content, not by file name)."""
    hashes: dict[str, int] = {}
    for task in client.tasks.list(project=project_id, fields="task_only", page_size=1000):
        sha256 = (task.data or {}).get("sha256")
        if sha256:
            hashes.setdefault(sha256, task.id)
    return hashes


def _prediction_payload(kind_name: str, prediction: Prediction, width: int, height: int) -> dict[str, Any]:
    kind = get_kind(kind_name)
    results = []
    for label, score in zip(prediction.labels, prediction.label_scores, strict=True):
        results.extend(kind.to_results([label], width, height, score=score))
    for i, result in enumerate(results):
        if "id" in result:  # regions (boxes, masks): unique ids within the prediction
            result["id"] = f"p{i}"
    return {"model_version": prediction.model_version, "score": prediction.score, "result": results}


def build_task(
    item: SourceItem,
    spec: ProjectSpec,
    image_url: str,
    prediction: Prediction | None,
    credit_to: str | None = None,
) -> dict[str, Any]:
    kind = get_kind(spec.kind)
    task: dict[str, Any] = {
        "data": {
            "image": image_url,
            "sha256": item.sha256,
            "original_name": posixpath.basename(item.rel),
            "source": item.rel,
            "width": item.width,
            "height": item.height,
        }
    }
    if item.labels is not None:
        task["annotations"] = [{"result": kind.to_results(list(item.labels), item.width, item.height)}]
        if credit_to is not None:  # the import identity, not the admin who ran the import (provenance)
            task["annotations"][0]["completed_by"] = {"email": credit_to}
    if prediction is not None:
        task["predictions"] = [_prediction_payload(spec.kind, prediction, item.width, item.height)]
    return task


def import_items(
    client: LabelStudio,
    project_id: int,
    spec: ProjectSpec,
    scan: ScanResult,
    files_root: Path,
    predictions: Mapping[str, Prediction] | None = None,
    s3_options: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    predictions = predictions or {}
    is_s3 = scan.root.startswith("s3://")
    urls = {item.sha256: item.url if is_s3 else local_files_url(item.url, files_root) for item in scan.items}
    present = existing_hashes(client, project_id)
    ensure_storage(client, project_id, scan.root, s3_options or {})
    new_items = [item for item in scan.items if item.sha256 not in present]
    conflicts = project_conflicts(client, project_id, spec, [i for i in scan.items if i.sha256 in present], present)
    credit_to = None
    if any(item.labels is not None for item in new_items):
        from crux.data.provenance import IMPORT_IDENTITY
        from crux.label.team import ensure_member

        ensure_member(client, IMPORT_IDENTITY, "CRUX import")
        credit_to = IMPORT_IDENTITY
    tasks = [build_task(item, spec, urls[item.sha256], predictions.get(item.sha256), credit_to) for item in new_items]
    task_ids: list[int] = []
    for start in range(0, len(tasks), BATCH_SIZE):
        batch = tasks[start : start + BATCH_SIZE]
        response = client.projects.import_tasks(id=project_id, request=batch, return_task_ids=True)
        task_ids.extend(response.task_ids or [])
        if progress:
            progress(len(batch))
    # Pre-annotations for images the project already has: the new model's view of old tasks.
    late = [
        {
            "task": present[item.sha256],
            **_prediction_payload(spec.kind, predictions[item.sha256], item.width, item.height),
        }
        for item in scan.items
        if item.sha256 in present and item.sha256 in predictions
    ]
    if late:
        client.projects.import_predictions(id=project_id, request=late)
    return ImportReport(
        project_id=project_id,
        scanned=len(scan.items),
        created=len(tasks),
        already_present=len(scan.items) - len(new_items),
        duplicates_in_source=len(scan.duplicates),
        annotations=sum(1 for task in tasks if "annotations" in task),
        predictions=sum(1 for task in tasks if "predictions" in task) + len(late),
        task_ids=tuple(task_ids),
        conflicts=tuple(conflicts),
    )


def _latest_labels(spec: ProjectSpec, task: Any, width: int, height: int) -> tuple[Label, ...] | None:
    """The labels a snapshot would take of a task (its latest live annotation); None when it has none."""
    annotations = [a if isinstance(a, Mapping) else a.dict() for a in task.annotations or []]
    live = [a for a in annotations if not a.get("was_cancelled")]
    if not live:
        return None
    latest = max(live, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), int(a.get("id") or 0)))
    return tuple(get_kind(spec.kind).from_results(latest.get("result") or [], width, height))


def project_conflicts(
    client: LabelStudio, project_id: int, spec: ProjectSpec, items: Sequence[SourceItem], present: Mapping[str, int]
) -> list[str]:
    """Source images the project already holds (same bytes) whose labels differ from the project's. The project's
    labels are kept (people may have corrected them there), and each such image is named with that choice: a
    re-import never overwrites nor silently drops a label. Identical labels are a plain duplicate."""
    labelled = {present[item.sha256]: item for item in items if item.labels is not None}
    if not labelled:
        return []
    conflicts = []
    task: Any
    for task in client.tasks.list(project=project_id, fields="all", page_size=500):
        item = labelled.get(task.id)
        if item is None:
            continue
        try:
            held = _latest_labels(spec, task, item.width, item.height)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, LabelError) as exc:
            conflicts.append(f"{item.rel}: task {task.id} holds labels that do not read ({exc!r}); kept them")
            continue
        if held is None:
            conflicts.append(
                f"{item.rel}: task {task.id} already holds this image without labels; the source's "
                f"({describe(item.labels)}) were not added: label it in Label Studio"
            )
        elif not same_labels(held, item.labels):
            conflicts.append(
                f"{item.rel}: task {task.id} already holds this image with other labels ({describe(held)} vs the "
                f"source's {describe(item.labels)}); kept the project's labels"
            )
    return sorted(conflicts)


def count_labels(items: Iterable[SourceItem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        for label in item.labels or ():
            counts[label.cls] = counts.get(label.cls, 0) + 1
    return counts
