"""The first phase of an import: `scan_source` reads, decodes and validates every image and label of a source with
the scanner of its format, and raises one error listing every problem (file and line). Nothing is written."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crux.kinds import Label, get_kind
from crux.label.sources import LABEL_FORMATS, SCANNERS
from crux.label.sources.source_files import decode_all, open_fs, source_url
from crux.label.sources.source_items import ImportValidationError, ScanResult, SourceItem, describe, same_labels

if TYPE_CHECKING:
    from crux.config import ProjectSpec


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
    if label_format not in SCANNERS:
        raise ImportValidationError([f"--labels {label_format}: choose one of {', '.join(LABEL_FORMATS)}"])
    fs, root = open_fs(source)
    problems: list[str] = []
    readers = SCANNERS[label_format](fs, root, spec, problems)
    if problems:
        raise ImportValidationError(problems)
    if not readers:
        raise ImportValidationError([f"{root}: no images found"])
    paths = sorted(readers)
    decoded = decode_all(fs, paths, problems, progress)
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
        items.append(SourceItem(source_url(fs, path), rel, sha256, width, height, labels))
    if problems:
        raise ImportValidationError(problems)
    return ScanResult(root=source_url(fs, root), items=items, duplicates=duplicates)


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
