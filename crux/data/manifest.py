"""The dataset version on disk: manifest.jsonl, classes.json and dataset.json.

Everything here is deterministic: keys sorted, manifest lines sorted by (sha256, task_id), no
wall-clock fields, floats rounded, a trailing newline. Two snapshots of an unchanged Label Studio
project therefore give byte-identical files, and DVC sees no change.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from crux.errors import CruxError

MANIFEST = "manifest.jsonl"
CLASSES = "classes.json"
DATASET = "dataset.json"
IMAGES = "images"
SPLITS: tuple[str, ...] = ("train", "val", "test")
BOX_DECIMALS = 3

Split = Literal["train", "val", "test"]


class ManifestError(CruxError, ValueError):
    """A manifest, classes.json or dataset.json is malformed; the message says where."""


@dataclass(frozen=True, order=True)
class ItemLabel:
    """One label of a manifest item: a class and, for detection, a pixel box (x1, y1, x2, y2)."""

    cls: str
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        # Rounded at construction, so equality and the written JSON agree on what "the same box" is.
        if self.box is not None:
            object.__setattr__(self, "box", round_box(self.box))

    def to_json(self) -> dict[str, Any]:
        return {"box": None if self.box is None else list(self.box), "class": self.cls}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ItemLabel:
        box = data.get("box")
        return ItemLabel(cls=str(data["class"]), box=None if box is None else round_box(box))


def round_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ManifestError(f"a box has 4 coordinates, got {list(box)!r}")
    # +0.0 turns -0.0 into 0.0 so that the JSON text does not depend on the sign of a rounded zero.
    x1, y1, x2, y2 = (round(float(v), BOX_DECIMALS) + 0.0 for v in box)
    return (x1, y1, x2, y2)


# Where an item's label came from (`ManifestItem.provenance`): imported from a dataset under the import identity;
# drawn by a person from scratch; a model pre-annotation a person submitted unchanged; or one a person edited.
PROVENANCES: tuple[str, ...] = ("imported", "human", "accepted", "edited")


@dataclass(frozen=True)
class AnnotatorLabels:
    """One person's labels of an image with several annotators (their latest annotation), for agreement."""

    annotator: str
    labels: tuple[ItemLabel, ...] = ()
    mask: str | None = None  # segment: this person's class mask (content-addressed like the item's)
    verdict: str | None = None  # segment: this person's image class

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "annotator": self.annotator,
            "labels": [label.to_json() for label in sorted(self.labels, key=_label_sort_key)],
        }
        if self.mask is not None:
            data["mask"] = self.mask
        if self.verdict is not None:
            data["verdict"] = self.verdict
        return data

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> AnnotatorLabels:
        return AnnotatorLabels(
            annotator=str(data["annotator"]),
            labels=tuple(ItemLabel.from_json(lb) for lb in data["labels"]),
            mask=None if data.get("mask") is None else str(data["mask"]),
            verdict=None if data.get("verdict") is None else str(data["verdict"]),
        )


@dataclass(frozen=True)
class ItemPrediction:
    """The model pre-annotation an item's label was made from (provenance accepted / edited): kept so that
    `crux project restore` can put the prediction and its link back, and restored labels keep their provenance."""

    model_version: str
    score: float | None = None
    labels: tuple[ItemLabel, ...] = ()
    mask: str | None = None  # segment: the predicted class mask (content-addressed like the item's)
    verdict: str | None = None  # segment: the predicted image class

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "labels": [label.to_json() for label in sorted(self.labels, key=_label_sort_key)],
            "model_version": self.model_version,
            "score": None if self.score is None else round(self.score, 6),
        }
        if self.mask is not None:
            data["mask"] = self.mask
        if self.verdict is not None:
            data["verdict"] = self.verdict
        return data

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ItemPrediction:
        return ItemPrediction(
            model_version=str(data["model_version"]),
            score=None if data.get("score") is None else float(data["score"]),
            labels=tuple(ItemLabel.from_json(lb) for lb in data["labels"]),
            mask=None if data.get("mask") is None else str(data["mask"]),
            verdict=None if data.get("verdict") is None else str(data["verdict"]),
        )


@dataclass(frozen=True)
class ManifestItem:
    """One labeled Label Studio task (one image) of a dataset version."""

    sha256: str
    task_id: int
    image: str  # relative to the dataset folder: images/ab/<sha256>.<ext>
    width: int
    height: int
    original_name: str
    split: str
    labels: tuple[ItemLabel, ...] = ()
    annotators: tuple[str, ...] = ()
    annotation_ids: tuple[int, ...] = ()
    conflicted: bool = False
    # Segment items only (None elsewhere, and then not written, so other manifests keep their bytes):
    # the class mask, relative to the dataset folder (masks/ab/<sha256 of the PNG>.png), and the image's class.
    mask: str | None = None
    verdict: str | None = None
    # Images labelled by two or more people only (else empty/None and not written, so single-annotator manifests
    # keep their bytes): each person's labels and the worst pair's agreement (crux.data.agreement).
    by_annotator: tuple[AnnotatorLabels, ...] = ()
    agreement: float | None = None
    # Where the label came from (PROVENANCES); None in manifests written before provenance was recorded.
    provenance: str | None = None
    # The pre-annotation the label was made from (accepted / edited items whose prediction the export held); None
    # elsewhere and then not written, so manifests of projects without pre-annotations keep their bytes.
    prediction: ItemPrediction | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        """Distinct classes of the item (its labels' and, for segmentation, its verdict), sorted."""
        found = {label.cls for label in self.labels}
        if self.verdict is not None:
            found.add(self.verdict)
        return tuple(sorted(found))

    @property
    def sort_key(self) -> tuple[str, int]:
        return (self.sha256, self.task_id)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "annotation_ids": list(self.annotation_ids),
            "annotators": list(self.annotators),
            "conflicted": self.conflicted,
            "height": self.height,
            "image": self.image,
            # Label order is kept as annotated but made canonical so that re-ordering regions in Label
            # Studio is not a change.
            "labels": [label.to_json() for label in sorted(self.labels, key=_label_sort_key)],
            "original_name": self.original_name,
            "sha256": self.sha256,
            "split": self.split,
            "task_id": self.task_id,
            "width": self.width,
        }
        if self.mask is not None:
            data["mask"] = self.mask
        if self.verdict is not None:
            data["verdict"] = self.verdict
        if self.by_annotator:
            data["by_annotator"] = [a.to_json() for a in sorted(self.by_annotator, key=lambda a: a.annotator)]
        if self.agreement is not None:
            data["agreement"] = round(self.agreement, 4)
        if self.provenance is not None:
            data["provenance"] = self.provenance
        if self.prediction is not None:
            data["prediction"] = self.prediction.to_json()
        return data

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ManifestItem:
        try:
            return ManifestItem(
                sha256=str(data["sha256"]),
                task_id=int(data["task_id"]),
                image=str(data["image"]),
                width=int(data["width"]),
                height=int(data["height"]),
                original_name=str(data["original_name"]),
                split=str(data["split"]),
                labels=tuple(ItemLabel.from_json(lb) for lb in data["labels"]),
                annotators=tuple(str(a) for a in data.get("annotators", ())),
                annotation_ids=tuple(int(a) for a in data.get("annotation_ids", ())),
                conflicted=bool(data.get("conflicted", False)),
                mask=None if data.get("mask") is None else str(data["mask"]),
                verdict=None if data.get("verdict") is None else str(data["verdict"]),
                by_annotator=tuple(AnnotatorLabels.from_json(a) for a in data.get("by_annotator", ())),
                agreement=None if data.get("agreement") is None else float(data["agreement"]),
                provenance=None if data.get("provenance") is None else str(data["provenance"]),
                prediction=None if data.get("prediction") is None else ItemPrediction.from_json(data["prediction"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            # AttributeError: a label that is not an object; OverflowError: int() of an infinite number.
            raise ManifestError(f"manifest item {data!r}: {exc!r}") from exc


def _label_sort_key(label: ItemLabel) -> tuple[str, tuple[float, ...]]:
    return (label.cls, label.box or ())


def dumps_line(data: Mapping[str, Any]) -> str:
    # ensure_ascii keeps the bytes independent of the locale and of the platform's default encoding.
    return json.dumps(data, sort_keys=True, ensure_ascii=True, separators=(", ", ": "))


def write_manifest(path: Path, items: Iterable[ManifestItem]) -> None:
    lines = sorted((item.sort_key, dumps_line(item.to_json())) for item in items)
    seen: set[tuple[str, int]] = set()
    for key, _ in lines:
        if key in seen:
            raise ManifestError(f"duplicate manifest item sha256={key[0]} task_id={key[1]}")
        seen.add(key)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for _, line in lines:
            f.write(line + "\n")


def iter_manifest_lines(lines: Iterable[str], where: str = MANIFEST) -> Iterator[ManifestItem]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{where}:{n}: not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ManifestError(f"{where}:{n}: not a JSON object")
        try:
            yield ManifestItem.from_json(data)
        except ManifestError as exc:
            raise ManifestError(f"{where}:{n}: {exc}") from exc


def read_manifest(path: Path) -> list[ManifestItem]:
    try:
        with path.open(encoding="utf-8") as f:
            return list(iter_manifest_lines(f, str(path)))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text (a binary file?): {exc}") from exc
    except OSError as exc:
        raise ManifestError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def parse_manifest(text: str, where: str = MANIFEST) -> list[ManifestItem]:
    return list(iter_manifest_lines(text.splitlines(), where))


@dataclass(frozen=True)
class ClassesInfo:
    kind: str
    classes: tuple[str, ...]
    ok_class: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "kind": self.kind, "ok_class": self.ok_class}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> ClassesInfo:
        try:
            return ClassesInfo(
                kind=str(data["kind"]), classes=tuple(str(c) for c in data["classes"]), ok_class=data.get("ok_class")
            )
        except (KeyError, TypeError, AttributeError) as exc:  # AttributeError: a list or a string, not an object
            raise ManifestError(f"{CLASSES}: not a classes object ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class ExcludedItem:
    task_id: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "task_id": self.task_id}


@dataclass(frozen=True)
class DatasetInfo:
    """dataset.json: what a version holds and what was left out, with reasons."""

    project: str
    counts: Mapping[str, Any]
    excluded: tuple[ExcludedItem, ...] = ()
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    format_version: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            **dict(self.extra),
            "counts": dict(self.counts),
            "excluded": [e.to_json() for e in sorted(self.excluded, key=lambda e: (e.task_id, e.reason))],
            "format_version": self.format_version,
            "project": self.project,
            "split_ratios": list(self.split_ratios),
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> DatasetInfo:
        known = {"counts", "excluded", "format_version", "project", "split_ratios"}
        try:
            ratios = tuple(float(r) for r in data.get("split_ratios", (0.8, 0.1, 0.1)))
            return DatasetInfo(
                project=str(data["project"]),
                counts=dict(data["counts"]),
                excluded=tuple(ExcludedItem(int(e["task_id"]), str(e["reason"])) for e in data.get("excluded", ())),
                split_ratios=(ratios[0], ratios[1], ratios[2]),
                format_version=int(data.get("format_version", 1)),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ManifestError(f"{DATASET}: {exc!r}") from exc


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, sort_keys=True, ensure_ascii=True, indent=2)
    path.write_text(text + "\n", encoding="utf-8", newline="\n")


def write_classes(path: Path, info: ClassesInfo) -> None:
    write_json(path, info.to_json())


def read_classes(path: Path) -> ClassesInfo:
    return ClassesInfo.from_json(_read_json(path))


def write_dataset_info(path: Path, info: DatasetInfo) -> None:
    write_json(path, info.to_json())


def read_dataset_info(path: Path) -> DatasetInfo:
    return DatasetInfo.from_json(_read_json(path))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: missing (a dataset folder holds manifest.jsonl and {path.name})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not JSON ({exc})") from exc
    except OSError as exc:
        raise ManifestError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def count_items(items: Sequence[ManifestItem], classes: Sequence[str]) -> dict[str, Any]:
    """Per-class and per-split counts of images and boxes, with every class and split present (zeros too)."""
    per_class_images = dict.fromkeys(classes, 0)
    per_class_boxes = dict.fromkeys(classes, 0)
    per_split = dict.fromkeys(SPLITS, 0)
    per_class_split = {c: dict.fromkeys(SPLITS, 0) for c in classes}
    empty = conflicted = 0
    for item in items:
        per_split[item.split] = per_split.get(item.split, 0) + 1
        if not item.classes:
            empty += 1
        conflicted += item.conflicted
        for cls in item.classes:
            per_class_images[cls] = per_class_images.get(cls, 0) + 1
            per_class_split.setdefault(cls, dict.fromkeys(SPLITS, 0))[item.split] += 1
        for label in item.labels:
            if label.box is not None:
                per_class_boxes[label.cls] = per_class_boxes.get(label.cls, 0) + 1
    return {
        "boxes_per_class": per_class_boxes,
        "conflicted": conflicted,
        "empty": empty,
        "images": len(items),
        "images_per_class": per_class_images,
        "images_per_class_split": per_class_split,
        "images_per_split": per_split,
    }
