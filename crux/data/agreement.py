"""Agreement between annotators who labelled the same image, computed from a dataset version's manifest.

Label Studio Community has no agreement scores (an Enterprise feature), so CRUX computes them itself from
the labels each person gave (`ManifestItem.by_annotator`, kept for every image with more than one annotator):

- pair score in 0..1 of two people's labels of one image, by kind:
  classify — 1 when they picked the same class(es), else 0;
  detect   — matched F1 of their boxes: same-class boxes matched one to one at IoU >= `match_iou`, greedily
             best IoU first; score = 2 x matches / (boxes of one + boxes of the other); no boxes on both = 1;
  segment  — class-aware pixel IoU of their class masks (`crux.masks.mask_iou`), 0 when verdicts differ;
- item agreement = the WORST pair's score: one dissenting person is what a reviewer must look at;
- per class: 2 x agreeing labels / labels of that class given by both people (the "specific agreement" of
  the class; pixel IoU per class for segment), summed over every pair of every image;
- per annotator pair: images in common, mean pair score, share of images at or above the threshold, and for
  classify Cohen's kappa (scikit-learn), which discounts the agreement two people reach by chance.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crux.errors import CruxError
from crux.geometry import iou

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from crux.data.manifest import AnnotatorLabels, ItemLabel, ManifestItem


class AgreementError(CruxError, ValueError):
    """A threshold outside 0..1, an annotator nobody knows, or a mask that cannot be read."""


MaskLoader = Callable[[str], "NDArray[Any]"]


def check_fraction(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value) or not 0 <= value <= 1:
        raise AgreementError(f"{name}: {value!r} is not a number in 0..1")
    return float(value)


# --------------------------------------------------------------------------------------------------
# One pair of people on one image


@dataclass
class ClassTally:
    """Per-class counts of a pair: labels that agree (counted once per person) and labels given."""

    agreed: float = 0.0
    given: float = 0.0

    def add(self, other: ClassTally) -> None:
        self.agreed += other.agreed
        self.given += other.given

    @property
    def score(self) -> float | None:
        return None if self.given == 0 else self.agreed / self.given


def match_boxes(a: Sequence[ItemLabel], b: Sequence[ItemLabel], match_iou: float) -> list[tuple[int, int]]:
    """Same-class boxes of `a` and `b` matched one to one at IoU >= match_iou, best overlap first."""
    candidates = sorted(
        (
            (iou(la.box, lb.box), i, j)
            for i, la in enumerate(a)
            for j, lb in enumerate(b)
            if la.cls == lb.cls and la.box is not None and lb.box is not None
        ),
        key=lambda c: (-c[0], c[1], c[2]),
    )
    used_a: set[int] = set()
    used_b: set[int] = set()
    pairs = []
    for overlap, i, j in candidates:
        if overlap < match_iou:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        pairs.append((i, j))
    return pairs


def pair_score(
    kind: str,
    a: AnnotatorLabels,
    b: AnnotatorLabels,
    *,
    match_iou: float = 0.5,
    load_mask: MaskLoader | None = None,
    classes: Sequence[str] = (),
) -> tuple[float, dict[str, ClassTally]]:
    """Agreement of two people on one image (0..1) and its per-class tallies."""
    tallies: dict[str, ClassTally] = {}
    if kind == "classify":
        ca, cb = {lb.cls for lb in a.labels}, {lb.cls for lb in b.labels}
        for cls in ca | cb:
            t = tallies.setdefault(cls, ClassTally())
            t.given += (cls in ca) + (cls in cb)
            t.agreed += 2 * (cls in ca and cls in cb)
        return (1.0 if ca == cb else 0.0), tallies
    if kind == "detect":
        pairs = match_boxes(a.labels, b.labels, match_iou)
        for lb in (*a.labels, *b.labels):
            tallies.setdefault(lb.cls, ClassTally()).given += 1
        for i, _ in pairs:
            tallies[a.labels[i].cls].agreed += 2
        total = len(a.labels) + len(b.labels)
        return (1.0 if total == 0 else 2 * len(pairs) / total), tallies
    if kind == "segment":
        return _segment_pair(a, b, load_mask, classes)
    raise AgreementError(f"no agreement measure for task kind {kind!r}")


def _segment_pair(
    a: AnnotatorLabels, b: AnnotatorLabels, load_mask: MaskLoader | None, classes: Sequence[str]
) -> tuple[float, dict[str, ClassTally]]:
    import numpy as np

    from crux.masks import mask_iou

    if load_mask is None or a.mask is None or b.mask is None:
        raise AgreementError(f"segment agreement of {a.annotator} and {b.annotator} needs both class masks")
    ma, mb = load_mask(a.mask), load_mask(b.mask)
    tallies: dict[str, ClassTally] = {}
    if ma.shape == mb.shape:
        for cls in sorted({lb.cls for lb in (*a.labels, *b.labels)} & set(classes)):
            v = 1 + list(classes).index(cls)  # the dataset's mask value of the class (README: Segment projects)
            # Pixel IoU per class, as "agreed / given" with each pixel of the union given once.
            inter = float(np.count_nonzero((ma == v) & (mb == v)))
            union = float(np.count_nonzero((ma == v) | (mb == v)))
            tallies[cls] = ClassTally(agreed=inter, given=union)
    score = mask_iou(ma, mb) if a.verdict == b.verdict else 0.0
    return float(score), tallies


def item_agreement(
    kind: str,
    people: Sequence[AnnotatorLabels],
    *,
    match_iou: float = 0.5,
    load_mask: MaskLoader | None = None,
    classes: Sequence[str] = (),
) -> float:
    """The worst pair's score on one image; 1.0 with fewer than two people."""
    scores = [
        pair_score(kind, a, b, match_iou=match_iou, load_mask=load_mask, classes=classes)[0]
        for a, b in itertools.combinations(people, 2)
    ]
    return min(scores, default=1.0)


# --------------------------------------------------------------------------------------------------
# A whole dataset version


@dataclass
class PairStats:
    images: int = 0
    score_sum: float = 0.0
    agreeing: int = 0
    # classify only: the class each of the two gave, for Cohen's kappa
    first: list[str] = field(default_factory=list)
    second: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FlaggedItem:
    task_id: int
    sha256: str
    agreement: float
    annotators: tuple[str, ...]
    original_name: str


@dataclass(frozen=True)
class AgreementReport:
    kind: str
    threshold: float
    match_iou: float
    overlapped: int  # images labelled by two or more people
    images: int  # all images of the version
    mean: float | None  # mean item agreement over overlapped images
    per_class: Mapping[str, Mapping[str, Any]]
    per_pair: tuple[Mapping[str, Any], ...]
    flagged: tuple[FlaggedItem, ...]  # below the threshold, worst first

    def to_json(self) -> dict[str, Any]:
        return {
            "flagged": [
                {
                    "agreement": round(f.agreement, 4),
                    "annotators": list(f.annotators),
                    "original_name": f.original_name,
                    "sha256": f.sha256,
                    "task_id": f.task_id,
                }
                for f in self.flagged
            ],
            "images": self.images,
            "kind": self.kind,
            "match_iou": self.match_iou,
            "mean": None if self.mean is None else round(self.mean, 4),
            "overlapped": self.overlapped,
            "per_class": {c: dict(v) for c, v in self.per_class.items()},
            "per_pair": [dict(p) for p in self.per_pair],
            "threshold": self.threshold,
        }


def agreement_report(
    items: Sequence[ManifestItem],
    kind: str,
    classes: Sequence[str],
    *,
    threshold: float,
    match_iou: float = 0.5,
    annotator: str | None = None,
    load_mask: MaskLoader | None = None,
) -> AgreementReport:
    """Agreement of a dataset version per class and per annotator pair; images below `threshold` flagged.

    `annotator` limits the report to the pairs (and images) that person is part of; a name that labelled
    nothing in this version is refused, listing those who did.
    """
    threshold = check_fraction("threshold", threshold)
    match_iou = check_fraction("match_iou", match_iou)
    if match_iou == 0:
        raise AgreementError("match_iou: 0 would match boxes that do not overlap at all; use a value in (0, 1]")
    known = sorted({a for item in items for a in item.annotators})
    if annotator is not None and annotator not in known:
        raise AgreementError(
            f"annotator {annotator!r} labelled nothing in this dataset version; "
            f"annotators: {', '.join(known) or 'none'}"
        )
    per_class = {cls: ClassTally() for cls in classes}
    pairs: dict[tuple[str, str], PairStats] = {}
    flagged: list[FlaggedItem] = []
    item_scores: list[float] = []
    overlapped = 0
    for item in items:
        people = list(item.by_annotator)
        if len(people) < 2:
            continue
        if annotator is not None and annotator not in {p.annotator for p in people}:
            continue
        overlapped += 1
        worst = 1.0
        for a, b in itertools.combinations(sorted(people, key=lambda p: p.annotator), 2):
            if annotator is not None and annotator not in (a.annotator, b.annotator):
                continue
            score, tallies = pair_score(kind, a, b, match_iou=match_iou, load_mask=load_mask, classes=classes)
            worst = min(worst, score)
            for cls, tally in tallies.items():
                per_class.setdefault(cls, ClassTally()).add(tally)
            stats = pairs.setdefault((a.annotator, b.annotator), PairStats())
            stats.images += 1
            stats.score_sum += score
            stats.agreeing += score >= threshold
            if kind == "classify" and len(a.labels) == 1 and len(b.labels) == 1:
                stats.first.append(a.labels[0].cls)
                stats.second.append(b.labels[0].cls)
        item_scores.append(worst)
        if worst < threshold:
            flagged.append(
                FlaggedItem(item.task_id, item.sha256, worst, tuple(p.annotator for p in people), item.original_name)
            )
    flagged.sort(key=lambda f: (f.agreement, f.task_id))
    return AgreementReport(
        kind=kind,
        threshold=threshold,
        match_iou=match_iou,
        overlapped=overlapped,
        images=len(items),
        mean=sum(item_scores) / len(item_scores) if item_scores else None,
        per_class={
            cls: {"agreement": None if t.score is None else round(t.score, 4), "given": t.given}
            for cls, t in per_class.items()
        },
        per_pair=tuple(_pair_json(names, stats, threshold) for names, stats in sorted(pairs.items())),
        flagged=tuple(flagged),
    )


def _pair_json(names: tuple[str, str], stats: PairStats, threshold: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "agreeing_share": round(stats.agreeing / stats.images, 4),
        "annotators": list(names),
        "images": stats.images,
        "mean": round(stats.score_sum / stats.images, 4),
    }
    if stats.first:
        row["cohen_kappa"] = _kappa(stats.first, stats.second)
    return row


def _kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa (scikit-learn's `cohen_kappa_score`, unweighted), written out: importing scikit-learn costs
    the console's team panel 3-8 s of one core, holding the GIL its page requests need."""
    from collections import Counter

    if len(set(first) | set(second)) < 2:
        return None  # one class only: chance agreement is total, kappa undefined
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    ca, cb = Counter(first), Counter(second)
    chance = sum(ca[c] * cb[c] for c in ca) / (n * n)
    if chance == 1.0:
        return None
    return round((observed - chance) / (1 - chance), 4)


def report_to_markdown(report: AgreementReport, title: str = "", max_items: int = 100) -> str:
    def pct(value: float | None) -> str:
        return "—" if value is None else f"{100 * value:.1f}%"

    lines = [f"## Annotator agreement{': ' + title if title else ''}", ""]
    lines.append(
        f"{report.overlapped} of {report.images} images labelled by two or more people; mean agreement "
        f"{pct(report.mean)}; **{len(report.flagged)} below {pct(report.threshold)}** (worst pair per image"
        + (f", boxes matched at IoU ≥ {report.match_iou:g}" if report.kind == "detect" else "")
        + ")."
    )
    lines += ["", "| class | agreement | labels given |", "|---|---:|---:|"]
    for cls, row in report.per_class.items():
        lines.append(f"| {cls} | {pct(row['agreement'])} | {row['given']:g} |")
    lines += ["", "| annotators | images | mean | at or above threshold | Cohen's κ |", "|---|---:|---:|---:|---:|"]
    for row in report.per_pair:
        kappa = row.get("cohen_kappa")
        lines.append(
            f"| {' + '.join(row['annotators'])} | {row['images']} | {pct(row['mean'])} | "
            f"{pct(row['agreeing_share'])} | {'—' if kappa is None else f'{kappa:.3f}'} |"
        )
    if report.flagged:
        lines += ["", "Below the threshold (left out of train/val/test until resolved):", ""]
        for f in report.flagged[:max_items]:
            lines.append(f"- task {f.task_id} `{f.original_name}`: {pct(f.agreement)} ({', '.join(f.annotators)})")
        if len(report.flagged) > max_items:
            lines.append(f"- … and {len(report.flagged) - max_items} more (see --json)")
    return "\n".join(lines) + "\n"
