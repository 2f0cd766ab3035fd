"""Export a dataset version to the formats other tools read: yolo, coco, folders, ls-json, voc, masks.

Every export holds the images (copied out of the content-addressed store under readable names) and
one sub-folder per split, so `train/`, `val/`, `test/` carry the same frozen split everywhere.

Segment datasets: regions are read back from each item's class mask (one per 8-connected part of a class):
COCO gets RLE segmentation (pycocotools) and each image's `verdict`; yolo gets YOLO-seg polygons (the
contours of each region: holes and some one-pixel spurs are lost); masks writes `images/` + `masks/` (the class
masks as they are) with `classes.txt` (mask value v = line v). yolo and masks add `verdicts.json` per split.
All three import back with `crux import --labels coco|yolo|masks`.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from crux.data.manifest import SPLITS, ClassesInfo, ManifestItem
from crux.errors import CruxError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from crux.kinds import Label

FORMATS: tuple[str, ...] = ("yolo", "coco", "folders", "ls-json", "voc", "masks")
EMPTY_FOLDER = "_empty"  # folders format: detection images without any box
VERDICTS = "verdicts.json"  # segment exports (yolo, masks): {image file name: class}, per split


class FormatError(CruxError, ValueError):
    pass


@dataclass(frozen=True)
class ExportSummary:
    dest: Path
    fmt: str
    images: int
    per_split: dict[str, int]


def export_names(items: Sequence[ManifestItem]) -> dict[int, str]:
    """task id → file name: the original name where unique, else `<stem>_t<task id>`; extension from the store."""

    def candidate(item: ManifestItem) -> tuple[str, str]:
        stem = PurePosixPath(item.original_name.replace("\\", "/")).stem or item.sha256[:16]
        return stem, PurePosixPath(item.image).suffix

    counts = Counter("".join(candidate(i)) for i in items)
    names = {}
    for item in items:
        stem, ext = candidate(item)
        names[item.task_id] = f"{stem}{ext}" if counts[stem + ext] == 1 else f"{stem}_t{item.task_id}{ext}"
    return names


def _copy(src_root: Path, item: ManifestItem, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    src = src_root / item.image
    if not src.is_file():
        raise FormatError(f"task {item.task_id}: image {item.image} is missing from the dataset")
    shutil.copyfile(src, dst)


def _fmt(v: float) -> str:
    return f"{v:.6f}".rstrip("0").rstrip(".") if v else "0"


def export_dataset(src: Path, items: Sequence[ManifestItem], info: ClassesInfo, dest: Path, fmt: str) -> ExportSummary:
    """Write `items` of the dataset folder `src` to the empty (or new) folder `dest` in format `fmt`."""
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt == "voc" and info.kind != "detect":
        raise FormatError("voc holds boxes; export a classification dataset as folders, yolo, coco or ls-json")
    if fmt == "masks" and _geometry(info) != "mask":
        raise FormatError("masks holds pixel masks; only a segment dataset has them")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise FormatError(f"{dest} is a file; export into a new folder")
    if dest.exists() and any(dest.iterdir()):
        raise FormatError(f"{dest} is not empty; export into a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    names = export_names(items)
    by_split = {s: [i for i in items if i.split == s] for s in SPLITS}
    writer = {"yolo": _yolo, "coco": _coco, "folders": _folders, "ls-json": _ls_json, "voc": _voc, "masks": _masks}[fmt]
    for split, split_items in by_split.items():
        (dest / split).mkdir(exist_ok=True)
        writer(src, split_items, info, dest / split, names)
    if fmt in ("yolo", "masks"):
        (dest / "classes.txt").write_text("".join(c + "\n" for c in info.classes), encoding="utf-8")
        if fmt == "yolo" and _geometry(info) in ("box", "mask"):
            lines = ["path: .", *(f"{s}: {s}/images" for s in SPLITS), "names:"]
            lines += [f"  {n}: {json.dumps(c)}" for n, c in enumerate(info.classes)]
            (dest / "data.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ExportSummary(dest=dest, fmt=fmt, images=len(items), per_split={s: len(v) for s, v in by_split.items()})


def _geometry(info: ClassesInfo) -> str:
    from crux.kinds import get_kind

    return get_kind(info.kind).geometry


def _class_folder(item: ManifestItem) -> list[str]:
    if item.verdict is not None:
        return [item.verdict]  # segmentation: the image's class
    return list(item.classes) or [EMPTY_FOLDER]


def _class_mask(src: Path, item: ManifestItem) -> Any:
    from crux.masks import MaskError, decode_png

    if item.mask is None:
        raise FormatError(f"task {item.task_id}: a segment item without a mask")
    try:
        mask = decode_png((src / item.mask).read_bytes())
    except (OSError, MaskError) as exc:
        raise FormatError(f"task {item.task_id}: mask {item.mask}: {exc}") from exc
    if mask.shape != (item.height, item.width):
        raise FormatError(f"task {item.task_id}: mask {item.mask} is not the image's size")
    return mask


def _regions(src: Path, item: ManifestItem, info: ClassesInfo) -> list[Label]:
    """The item's regions (kinds.Label with a mask), one per 8-connected part of each class of its mask."""
    from crux.kinds import SegmentKind, get_kind

    kind = get_kind(info.kind)
    if not isinstance(kind, SegmentKind):
        raise FormatError(f"task {item.task_id}: mask {item.mask}: a {info.kind} line has no class masks to export")
    return kind.regions_from_mask(_class_mask(src, item), info.classes)


def _region_masks(src: Path, item: ManifestItem, info: ClassesInfo) -> list[tuple[str, NDArray[Any]]]:
    """(class, mask) of each of the item's regions (`regions_from_mask` gives every region its mask)."""
    return [(r.cls, r.mask) for r in _regions(src, item, info) if r.mask is not None]


def _write_verdicts(items: Sequence[ManifestItem], out: Path, names: dict[int, str]) -> None:
    verdicts = {names[i.task_id]: i.verdict for i in items if i.verdict is not None}
    (out / VERDICTS).write_text(json.dumps(verdicts, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _yolo(src: Path, items: Sequence[ManifestItem], info: ClassesInfo, out: Path, names: dict[int, str]) -> None:
    if _geometry(info) == "mask":
        _yolo_seg(src, items, info, out, names)
        return
    if info.kind != "detect":
        # Ultralytics' classification layout: split/class/image.
        _folders(src, items, info, out, names)
        return
    index = {c: n for n, c in enumerate(info.classes)}
    (out / "images").mkdir(exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    for item in items:
        name = names[item.task_id]
        _copy(src, item, out / "images" / name)
        lines = []
        for label in item.labels:
            assert label.box is not None
            x1, y1, x2, y2 = label.box
            cx, cy = (x1 + x2) / 2 / item.width, (y1 + y2) / 2 / item.height
            w, h = (x2 - x1) / item.width, (y2 - y1) / item.height
            lines.append(f"{index[label.cls]} {_fmt(cx)} {_fmt(cy)} {_fmt(w)} {_fmt(h)}\n")
        (out / "labels" / f"{PurePosixPath(name).stem}.txt").write_text("".join(lines), encoding="utf-8")


def _yolo_seg(src: Path, items: Sequence[ManifestItem], info: ClassesInfo, out: Path, names: dict[int, str]) -> None:
    """YOLO segmentation: `class x1 y1 x2 y2 …` per region contour, normalised to 0..1."""
    from crux.masks import polygons

    index = {c: n for n, c in enumerate(info.classes)}
    (out / "images").mkdir(exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    for item in items:
        name = names[item.task_id]
        _copy(src, item, out / "images" / name)
        lines = []
        for cls, mask in _region_masks(src, item, info):
            for poly in polygons(mask):
                coords = " ".join(f"{_fmt(x / item.width)} {_fmt(y / item.height)}" for x, y in poly)
                lines.append(f"{index[cls]} {coords}\n")
        (out / "labels" / f"{PurePosixPath(name).stem}.txt").write_text("".join(lines), encoding="utf-8")
    _write_verdicts(items, out, names)


def _masks(src: Path, items: Sequence[ManifestItem], info: ClassesInfo, out: Path, names: dict[int, str]) -> None:
    """Semantic masks: images/NAME and masks/STEM.png (0 background, v = 1 + class index = line v of classes.txt)."""
    (out / "images").mkdir(exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    for item in items:
        name = names[item.task_id]
        _copy(src, item, out / "images" / name)
        _class_mask(src, item)  # checks it is there and fits
        assert item.mask is not None
        shutil.copyfile(src / item.mask, out / "masks" / f"{PurePosixPath(name).stem}.png")
    _write_verdicts(items, out, names)


def _coco(src: Path, items: Sequence[ManifestItem], info: ClassesInfo, out: Path, names: dict[int, str]) -> None:
    cat = {c: n + 1 for n, c in enumerate(info.classes)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for item in items:
        name = names[item.task_id]
        _copy(src, item, out / "images" / name)
        image: dict[str, Any] = {
            "id": item.task_id,
            "file_name": f"images/{name}",
            "width": item.width,
            "height": item.height,
        }
        if item.verdict is not None:
            image["verdict"] = item.verdict
        images.append(image)
        if _geometry(info) == "mask":
            annotations.extend(_coco_regions(src, item, info, cat, len(annotations)))
            continue
        for label in item.labels:
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": item.task_id,
                "category_id": cat[label.cls],
                "iscrowd": 0,
            }
            if label.box is not None:
                x1, y1, x2, y2 = label.box
                ann["bbox"] = [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]
                ann["area"] = round((x2 - x1) * (y2 - y1), 3)
            annotations.append(ann)
    coco = {
        "info": {"description": "CRUX dataset export", "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": c, "supercategory": "defect"} for c, i in cat.items()],
    }
    (out / "annotations.json").write_text(json.dumps(coco, indent=1) + "\n", encoding="utf-8")


def _coco_regions(
    src: Path, item: ManifestItem, info: ClassesInfo, cat: dict[str, int], start: int
) -> list[dict[str, Any]]:
    """One COCO annotation per region, with compressed RLE segmentation."""
    from crux.masks import bbox, coco_rle

    out: list[dict[str, Any]] = []
    for cls, mask in _region_masks(src, item, info):
        x1, y1, x2, y2 = bbox(mask) or (0.0, 0.0, 0.0, 0.0)
        out.append(
            {
                "id": start + len(out) + 1,
                "image_id": item.task_id,
                "category_id": cat[cls],
                "iscrowd": 0,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": int(mask.sum()),
                "segmentation": coco_rle(mask),
            }
        )
    return out


def _folders(src: Path, items: Sequence[ManifestItem], info: ClassesInfo, out: Path, names: dict[int, str]) -> None:
    for cls in info.classes:
        (out / cls).mkdir(exist_ok=True)
    for item in items:
        # A detection image with several classes is copied into each of its class folders.
        for cls in _class_folder(item):
            _copy(src, item, out / cls / names[item.task_id])


def _ls_json(src: Path, items: Sequence[ManifestItem], info: ClassesInfo, out: Path, names: dict[int, str]) -> None:
    from crux.geometry import PixelBox
    from crux.kinds import Label, get_kind

    kind = get_kind(info.kind)
    tasks = []
    for item in items:
        name = names[item.task_id]
        _copy(src, item, out / "images" / name)
        if kind.geometry == "mask":
            labels = _regions(src, item, info)
            if item.verdict is not None and info.ok_class is not None:
                labels.append(Label(item.verdict))
        else:
            labels = [Label(lb.cls, None if lb.box is None else PixelBox(*lb.box)) for lb in item.labels]
        results = kind.to_results(labels, item.width, item.height) if labels else []
        tasks.append(
            {
                "data": {
                    "image": f"images/{name}",
                    "sha256": item.sha256,
                    "original_name": item.original_name,
                    "width": item.width,
                    "height": item.height,
                },
                "annotations": [{"result": results}],
                "meta": {"crux_task_id": item.task_id, "split": item.split},
            }
        )
    (out / "tasks.json").write_text(json.dumps(tasks, indent=1) + "\n", encoding="utf-8")


def _voc(src: Path, items: Sequence[ManifestItem], info: ClassesInfo, out: Path, names: dict[int, str]) -> None:
    (out / "JPEGImages").mkdir(exist_ok=True)
    (out / "Annotations").mkdir(exist_ok=True)
    (out / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    stems = []
    for item in items:
        name = names[item.task_id]
        stem = PurePosixPath(name).stem
        stems.append(stem)
        _copy(src, item, out / "JPEGImages" / name)
        objects = "".join(
            "  <object>\n"
            f"    <name>{escape(lb.cls)}</name>\n    <pose>Unspecified</pose>\n"
            "    <truncated>0</truncated>\n    <difficult>0</difficult>\n"
            f"    <bndbox><xmin>{_fmt(lb.box[0])}</xmin><ymin>{_fmt(lb.box[1])}</ymin>"
            f"<xmax>{_fmt(lb.box[2])}</xmax><ymax>{_fmt(lb.box[3])}</ymax></bndbox>\n"
            "  </object>\n"
            for lb in item.labels
            if lb.box is not None
        )
        xml = (
            "<annotation>\n"
            f"  <folder>JPEGImages</folder>\n  <filename>{escape(name)}</filename>\n"
            f"  <size><width>{item.width}</width><height>{item.height}</height><depth>3</depth></size>\n"
            f"  <segmented>0</segmented>\n{objects}</annotation>\n"
        )
        (out / "Annotations" / f"{stem}.xml").write_text(xml, encoding="utf-8")
    (out / "ImageSets" / "Main" / f"{out.name}.txt").write_text("".join(s + "\n" for s in stems), encoding="utf-8")
