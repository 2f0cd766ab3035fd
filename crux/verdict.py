"""What the edge did on labelled frames, in a plant engineer's terms (the last screen of `crux demo`).

Pure Python over the edge runtime's JSON records and each frame's labels: per class, how many defective frames the
edge caught (called NG) and missed (called OK), how many it gave the right defect type, and the false rejects on
OK frames where the line has them. No torch, no numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ClassRow:
    frames: int = 0
    caught: int = 0  # defective frames the edge called NG
    missed: int = 0  # defective frames the edge called OK (escapes)
    right_type: int = 0  # ... and named this class (classifier label, or a detected box of this class)
    wrong_as: dict[str, int] = field(default_factory=dict)  # what the edge called the frames it typed wrong


@dataclass
class Verdict:
    kind: str
    ok_class: str | None
    rows: dict[str, ClassRow]
    ok_frames: int
    false_rejects: int
    errors: int

    @property
    def defective(self) -> int:
        return sum(r.frames for r in self.rows.values())

    @property
    def caught(self) -> int:
        return sum(r.caught for r in self.rows.values())

    @property
    def right_type(self) -> int:
        return sum(r.right_type for r in self.rows.values())

    @property
    def recall(self) -> float | None:
        return self.caught / self.defective if self.defective else None

    @property
    def type_accuracy(self) -> float | None:
        return self.right_type / self.defective if self.defective else None

    @property
    def false_reject_rate(self) -> float | None:
        return self.false_rejects / self.ok_frames if self.ok_frames else None


def edge_verdict(
    records: Iterable[Mapping[str, Any]],
    truth: Mapping[str, Sequence[str]],
    classes: Sequence[str],
    kind: str,
    ok_class: str | None = None,
    name_of: Any = None,
) -> Verdict:
    """Compare edge records (`crux edge run` JSON lines) with labels: `truth[frame name]` is the frame's classes
    (classification: one; detection: one per box, none for a defect-free frame). `name_of(record)` maps a record
    to its key in `truth` (default: the record's image path)."""
    rows = {c: ClassRow() for c in classes if c != ok_class}
    ok_frames = false_rejects = errors = 0
    for record in records:
        key = name_of(record) if name_of else record["image"]
        labels = [c for c in truth.get(key, ()) if c != ok_class]
        if "error" in record:
            errors += 1
            continue
        ng = record.get("verdict") == "NG"
        if not labels:
            ok_frames += 1
            false_rejects += ng
            continue
        predicted = (
            {b["label"] for b in record.get("boxes", [])} if kind == "detect" else {str(record.get("label"))}
        ) - {ok_class}
        for cls in dict.fromkeys(labels):  # a frame with boxes of two classes counts once under each
            row = rows.setdefault(cls, ClassRow())
            row.frames += 1
            row.caught += ng
            row.missed += not ng
            if ng and cls in predicted:
                row.right_type += 1
            elif ng:
                # Rejected with no defect type: the top class was OK, but 1 - p(OK) reached the card's threshold.
                other = ", ".join(sorted(predicted)) or (f"{ok_class} (over the NG threshold)" if ok_class else "?")
                row.wrong_as[other] = row.wrong_as.get(other, 0) + 1
    return Verdict(kind, ok_class, rows, ok_frames, false_rejects, errors)


def _pct(n: int, d: int) -> str:
    return f"{n}/{d} ({n / d:.1%})" if d else "—"


def verdict_lines(v: Verdict) -> list[str]:
    """The verdict as plain text lines (a table per class, then the totals)."""
    width = max([len(c) for c in v.rows] + [5])
    lines = [f"{'class':<{width}}  frames  caught  missed  right type  typed wrong as"]
    for cls, r in v.rows.items():
        wrong = ", ".join(f"{k} {n}" for k, n in sorted(r.wrong_as.items(), key=lambda kv: -kv[1])) or ""
        lines.append(f"{cls:<{width}}  {r.frames:>6}  {r.caught:>6}  {r.missed:>6}  {r.right_type:>10}  {wrong}")
    lines.append("")
    lines.append(
        f"Defective frames caught (called NG): {_pct(v.caught, v.defective)}; missed: {v.defective - v.caught}"
    )
    lines.append(f"Caught with the right defect type:   {_pct(v.right_type, v.defective)}")
    if v.kind == "classify" and v.ok_class is None:
        lines.append("  (this line has no OK class: every frame is NG by construction, the defect type is the verdict)")
    if v.ok_frames:
        lines.append(f"False rejects (OK frames called NG): {_pct(v.false_rejects, v.ok_frames)}")
    else:
        lines.append("False rejects: none measurable — this line's test frames are all defective (no OK images)")
    if v.errors:
        lines.append(f"Frames the edge could not read: {v.errors}")
    return lines
