"""What a scan of a source produces: the validated images, the error that lists every problem, and how labels are
compared (a re-import or a repeated image with the same labels is a duplicate, with other labels a conflict)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crux.errors import CruxError
from crux.kinds import Label

if TYPE_CHECKING:
    from crux.config import ProjectSpec

# A reader gives an image's labels once its size is known: (width, height) -> labels, or None (not labelled); it adds
# what is wrong to the scan's problems. A scanner maps each image path of a source to its reader.
Reader = Callable[[int, int], "tuple[Label, ...] | None"]
Scanner = Callable[[Any, str, "ProjectSpec", list[str]], dict[str, Reader]]


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


@dataclass
class ScanResult:
    root: str
    items: list[SourceItem]
    duplicates: list[str] = field(default_factory=list)  # rel paths whose bytes repeat an earlier image


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
