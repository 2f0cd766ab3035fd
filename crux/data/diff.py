"""What changed between two dataset versions, for a reviewer's pull request and for commit messages.

Items are matched by (task_id, sha256): the same task with the same image; an image that left one task and is the
only one of its bytes in another (a project restored by `crux project restore`, or re-imported) is matched to
itself too, so that a restore reads as "moved to new task ids", not as everything removed and added. Labels that
differ are a relabel; boxes are matched per class by overlap, so a reviewer reads "1 box moved" instead of
"1 removed, 1 added". Segmentation items are a relabel when their classes (verdict included) change or
when the pixel IoU of the two versions' class masks drops below a threshold (a touch-up above it is not).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from crux.data.manifest import SPLITS, ItemLabel, ManifestItem
from crux.geometry import iou

# Boxes of the same class overlapping at least this much are "the same box" (moved if not identical).
MATCH_IOU = 0.3
# Segmentation: two versions of an item's mask agreeing less than this (class-aware pixel IoU) are a relabel.
MASK_RELABEL_IOU = 0.9

MaskReader = Callable[[str], bytes]  # mask path (relative to the dataset folder) → PNG bytes


@dataclass(frozen=True)
class BoxChanges:
    moved: int = 0
    added: int = 0
    removed: int = 0
    reclassed: tuple[tuple[str, str], ...] = ()  # (old class, new class) of boxes that kept their place

    @property
    def any(self) -> bool:
        return bool(self.moved or self.added or self.removed or self.reclassed)

    def describe(self) -> str:
        parts = []
        if self.moved:
            parts.append(f"{self.moved} moved")
        if self.added:
            parts.append(f"{self.added} added")
        if self.removed:
            parts.append(f"{self.removed} removed")
        parts.extend(f"{old}→{new}" for old, new in self.reclassed)
        return ", ".join(parts)


@dataclass(frozen=True)
class ItemChange:
    change: str  # added | removed | relabelled
    task_id: int
    sha256: str
    original_name: str
    old_classes: tuple[str, ...]
    new_classes: tuple[str, ...]
    annotators: tuple[str, ...]
    boxes: BoxChanges = field(default_factory=BoxChanges)
    mask_iou: float | None = None  # segmentation relabels: pixel IoU of the old and new mask (None: not read)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "annotators": list(self.annotators),
            "boxes": {
                "added": self.boxes.added,
                "moved": self.boxes.moved,
                "reclassed": [list(p) for p in self.boxes.reclassed],
                "removed": self.boxes.removed,
            },
            "change": self.change,
            "new_classes": list(self.new_classes),
            "old_classes": list(self.old_classes),
            "original_name": self.original_name,
            "sha256": self.sha256,
            "task_id": self.task_id,
        }
        if self.mask_iou is not None:
            data["mask_iou"] = round(self.mask_iou, 4)
        return data


@dataclass(frozen=True)
class DatasetDiff:
    classes: tuple[str, ...]
    before: dict[str, dict[str, int]]  # class → split → images (plus "total")
    after: dict[str, dict[str, int]]
    split_before: dict[str, int]
    split_after: dict[str, int]
    added: tuple[ItemChange, ...]
    removed: tuple[ItemChange, ...]
    relabelled: tuple[ItemChange, ...]
    # (old task id, new task id, sha256) of images whose task changed (counted as neither added nor removed)
    retasked: tuple[tuple[int, int, str], ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.relabelled)

    @property
    def annotators(self) -> tuple[str, ...]:
        return tuple(sorted({a for c in (*self.added, *self.relabelled) for a in c.annotators}))

    def per_class(self) -> dict[str, tuple[int, int, int]]:
        """class → (items added, items removed, items relabelled) touching that class."""
        out: dict[str, list[int]] = {c: [0, 0, 0] for c in self.classes}
        for change in self.added:
            for cls in change.new_classes:
                out.setdefault(cls, [0, 0, 0])[0] += 1
        for change in self.removed:
            for cls in change.old_classes:
                out.setdefault(cls, [0, 0, 0])[1] += 1
        for change in self.relabelled:
            for cls in sorted(set(change.old_classes) | set(change.new_classes)):
                out.setdefault(cls, [0, 0, 0])[2] += 1
        return {c: (v[0], v[1], v[2]) for c, v in out.items()}


def _match(old: list[ItemLabel], new: list[ItemLabel], same_class: bool) -> list[tuple[ItemLabel, ItemLabel]]:
    """Greedy best-IoU matching; matched labels are removed from `old` and `new`."""
    pairs = sorted(
        (
            (-iou(o.box, n.box), i, j)  # type: ignore[arg-type]
            for i, o in enumerate(old)
            for j, n in enumerate(new)
            if (o.cls == n.cls) == same_class
        ),
    )
    used_o: set[int] = set()
    used_n: set[int] = set()
    matched = []
    for neg_iou, i, j in pairs:
        if -neg_iou < MATCH_IOU or i in used_o or j in used_n:
            continue
        used_o.add(i)
        used_n.add(j)
        matched.append((old[i], new[j]))
    old[:] = [o for i, o in enumerate(old) if i not in used_o]
    new[:] = [n for j, n in enumerate(new) if j not in used_n]
    return matched


def box_changes(old: Sequence[ItemLabel], new: Sequence[ItemLabel]) -> BoxChanges:
    old_boxes = [lb for lb in old if lb.box is not None]
    new_boxes = [lb for lb in new if lb.box is not None]
    same = _match(old_boxes, new_boxes, same_class=True)
    moved = sum(o.box != n.box for o, n in same)
    other = _match(old_boxes, new_boxes, same_class=False)
    return BoxChanges(
        moved=moved + sum(o.box != n.box for o, n in other),
        added=len(new_boxes),
        removed=len(old_boxes),
        reclassed=tuple(sorted((o.cls, n.cls) for o, n in other)),
    )


def _table(items: Sequence[ManifestItem], classes: Sequence[str]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    table = {c: {**dict.fromkeys(SPLITS, 0), "total": 0} for c in classes}
    splits = {**dict.fromkeys(SPLITS, 0), "total": 0}
    for item in items:
        splits[item.split] = splits.get(item.split, 0) + 1
        splits["total"] += 1
        for cls in item.classes:
            row = table.setdefault(cls, {**dict.fromkeys(SPLITS, 0), "total": 0})
            row[item.split] = row.get(item.split, 0) + 1
            row["total"] += 1
    return table, splits


def _mask_iou(
    o: ManifestItem, n: ManifestItem, read_old: MaskReader | None, read_new: MaskReader | None
) -> float | None:
    """IoU of two items' masks: 1.0 for the same (content-addressed) file, None when they cannot be read."""
    from crux.masks import MaskError, decode_png, mask_iou

    if o.mask == n.mask:
        return 1.0
    if o.mask is None or n.mask is None or read_old is None or read_new is None:
        return None
    try:
        return mask_iou(decode_png(read_old(o.mask)), decode_png(read_new(n.mask)))
    except (OSError, MaskError):
        return None


def diff_manifests(
    old: Sequence[ManifestItem],
    new: Sequence[ManifestItem],
    classes: Sequence[str] = (),
    *,
    read_old_mask: MaskReader | None = None,
    read_new_mask: MaskReader | None = None,
    mask_relabel_iou: float = MASK_RELABEL_IOU,
) -> DatasetDiff:
    """Diff two manifests; `classes` fixes the row order (classes seen only in the data follow, sorted).

    Segmentation items: `read_old_mask` / `read_new_mask` read mask files of each version; without them any
    changed mask counts as a relabel."""
    seen = list(classes) + sorted({c for i in (*old, *new) for c in i.classes} - set(classes))
    old_by = {(i.task_id, i.sha256): i for i in old}
    new_by = {(i.task_id, i.sha256): i for i in new}
    retasked = _retasked(old_by, new_by)
    for old_key, new_key in retasked:  # the same image under a new task id: compared as one item
        old_by[new_key] = old_by.pop(old_key)
    added, removed, relabelled = [], [], []
    for key in sorted(new_by.keys() - old_by.keys()):
        i = new_by[key]
        added.append(ItemChange("added", i.task_id, i.sha256, i.original_name, (), i.classes, i.annotators))
    for key in sorted(old_by.keys() - new_by.keys()):
        i = old_by[key]
        removed.append(ItemChange("removed", i.task_id, i.sha256, i.original_name, i.classes, (), i.annotators))
    for key in sorted(old_by.keys() & new_by.keys()):
        o, n = old_by[key], new_by[key]
        iou = None
        if o.mask is not None or n.mask is not None:
            iou = _mask_iou(o, n, read_old_mask, read_new_mask)
            if o.classes == n.classes and o.mask == n.mask:
                continue
            if o.classes == n.classes and iou is not None and iou >= mask_relabel_iou:
                continue  # a touch-up, not a relabel
        elif sorted(o.labels) == sorted(n.labels):
            continue
        relabelled.append(
            ItemChange(
                "relabelled",
                n.task_id,
                n.sha256,
                n.original_name,
                o.classes,
                n.classes,
                n.annotators,
                box_changes(o.labels, n.labels),
                iou,
            )
        )
    before, split_before = _table(old, seen)
    after, split_after = _table(new, seen)
    return DatasetDiff(
        classes=tuple(seen),
        before=before,
        after=after,
        split_before=split_before,
        split_after=split_after,
        added=tuple(added),
        removed=tuple(removed),
        relabelled=tuple(relabelled),
        retasked=tuple((o[0], n[0], n[1]) for o, n in retasked),
    )


Key = tuple[int, str]


def _retasked(old_by: dict[Key, ManifestItem], new_by: dict[Key, ManifestItem]) -> list[tuple[Key, Key]]:
    """(old key, new key) of images that left their task and are the only ones of their bytes on both sides."""
    gone: dict[str, list[Key]] = {}
    for key in old_by.keys() - new_by.keys():
        gone.setdefault(key[1], []).append(key)
    came: dict[str, list[Key]] = {}
    for key in new_by.keys() - old_by.keys():
        came.setdefault(key[1], []).append(key)
    # Several tasks of one image on either side cannot be told apart: those stay removed and added.
    return sorted(
        (gone[sha][0], came[sha][0]) for sha in gone.keys() & came.keys() if len(gone[sha]) == 1 and len(came[sha]) == 1
    )


def diff_to_json(d: DatasetDiff) -> dict[str, Any]:
    return {
        "added": [c.to_json() for c in d.added],
        "annotators": list(d.annotators),
        "changed": d.changed,
        "classes": list(d.classes),
        "counts": {"after": d.after, "before": d.before},
        "per_class": {c: {"added": a, "relabelled": r, "removed": m} for c, (a, m, r) in d.per_class().items()},
        "relabelled": [c.to_json() for c in d.relabelled],
        "removed": [c.to_json() for c in d.removed],
        "retasked": [{"new_task_id": n, "old_task_id": o, "sha256": sha} for o, n, sha in d.retasked],
        "splits": {"after": d.split_after, "before": d.split_before},
    }


def _delta(a: int, b: int) -> str:
    return f"{a} → {b} ({b - a:+d})" if a != b else str(a)


def _classes(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "(no label)"


def diff_to_markdown(d: DatasetDiff, title_a: str = "before", title_b: str = "after", max_items: int = 200) -> str:
    lines = [f"## Dataset changes: `{title_a}` → `{title_b}`", ""]
    if not d.changed:
        lines += ["No labeled item changed.", ""]
    if d.retasked:
        lines += [
            f"{len(d.retasked)} image(s) moved to new task ids (a restored or re-imported project), compared as the "
            "same items.",
            "",
        ]
    else:
        lines += [
            f"**{len(d.added)} added, {len(d.removed)} removed, {len(d.relabelled)} relabelled**"
            + (f" — annotators: {', '.join(d.annotators)}" if d.annotators else ""),
            "",
        ]
    lines += ["| class | " + " | ".join(SPLITS) + " | total | +added −removed ~relabelled |"]
    lines += ["|---|" + "---|" * (len(SPLITS) + 2)]
    per_class = d.per_class()
    for cls in d.classes:
        b, a = d.before[cls], d.after[cls]
        cells = [_delta(b[s], a[s]) for s in (*SPLITS, "total")]
        plus, minus, tilde = per_class.get(cls, (0, 0, 0))
        lines.append(f"| {cls} | " + " | ".join(cells) + f" | +{plus} −{minus} ~{tilde} |")
    cells = [_delta(d.split_before[s], d.split_after[s]) for s in (*SPLITS, "total")]
    lines += ["| **images** | " + " | ".join(cells) + " | |", ""]

    def section(title: str, changes: Sequence[ItemChange], render: Any) -> None:
        if not changes:
            return
        lines.extend([f"### {title} ({len(changes)})", ""])
        for change in changes[:max_items]:
            lines.append("- " + render(change))
        if len(changes) > max_items:
            lines.append(f"- … and {len(changes) - max_items} more (see `--json`)")
        lines.append("")

    def who(c: ItemChange) -> str:
        return f" — {', '.join(c.annotators)}" if c.annotators else ""

    section(
        "Added",
        d.added,
        lambda c: f"task {c.task_id} `{c.original_name}`: {_classes(c.new_classes)}{who(c)}",
    )
    section("Removed", d.removed, lambda c: f"task {c.task_id} `{c.original_name}`: {_classes(c.old_classes)}")
    section(
        "Relabelled",
        d.relabelled,
        lambda c: (
            f"task {c.task_id} `{c.original_name}`: "
            + (
                f"{_classes(c.old_classes)} → {_classes(c.new_classes)}"
                if c.old_classes != c.new_classes
                else _classes(c.new_classes)
            )
            + (f" ({'regions' if c.mask_iou is not None else 'boxes'}: {c.boxes.describe()})" if c.boxes.any else "")
            + (f" (mask IoU {c.mask_iou:.2f})" if c.mask_iou is not None else "")
            + who(c)
        ),
    )
    return "\n".join(lines).rstrip() + "\n"


def commit_message(d: DatasetDiff, project: str, items_after: int) -> str:
    """One summary line, then one line per class that changed: `class: +added −removed ~relabelled`."""
    head = f"data({project}): {items_after} items, +{len(d.added)} −{len(d.removed)} ~{len(d.relabelled)}"
    body = [f"{cls}: +{a} −{r} ~{m}" for cls, (a, r, m) in d.per_class().items() if a or r or m]
    return head + ("\n\n" + "\n".join(body) if body else "") + "\n"


__all__ = [
    "MASK_RELABEL_IOU",
    "BoxChanges",
    "DatasetDiff",
    "ItemChange",
    "box_changes",
    "commit_message",
    "diff_manifests",
    "diff_to_json",
    "diff_to_markdown",
]
