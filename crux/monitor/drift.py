"""Drift of a station's or a line's frames against the model's validation split: pure functions on fixed-bin score
histograms.

The one score every kind has is the frame's NG score, the number the edge compares with the card's threshold:
1 - p(OK class) for a classifier with an OK class, the top class probability for one without (every frame is a
defect; a shift shows as lower confidence), the peak of the defect map for a segmenter and for an anomaly model (for
the latter this *is* the anomaly score), the best box score for a detector. The edge bins the score of every frame it
judges (`score_bin`) into `SCORE_BINS` fixed bins and sends the counts in each heartbeat; `crux export` records the
validation split's histogram and NG rate in the card (`reference_for_card`). Captures would be a biased sample (NG
and uncertain frames are kept, OK ones sampled), the histogram of all frames is not.

`assess` compares a window with the reference: PSI over the bins, a two-sample Kolmogorov-Smirnov test on the binned
scores, and a two-proportion test on the NG rate; it raises an alarm when any crosses its configured bound and there
are enough frames to say so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crux.config import ConfigError

if TYPE_CHECKING:
    from crux.inference import Result

# Fixed bins of width 0.05 over 0..1: the edge and the card must bin alike, and 20 bins keep a heartbeat small
# while resolving a shift of the score's bulk (a threshold sits between bins at most 0.05 away).
SCORE_BINS = 20
# The card key holding the reference (absent in cards exported before it: "no reference", never an alarm).
CARD_KEY = "monitor_reference"

# Days of heartbeats the ingest database keeps (crux.collect.heartbeats.HISTORY_RETENTION): a week of 30 s beats is
# ~20,000 rows a station, enough for the station page's history and any drift window.
HISTORY_DAYS = 7

STATUS_OK = "ok"
STATUS_ALARM = "alarm"
STATUS_NO_REFERENCE = "no reference"
STATUS_TOO_FEW = "too few frames"


@dataclass(frozen=True)
class MonitorConfig:
    """`monitor:` of params.yaml (see the comments there)."""

    psi_alarm: float = 0.25
    ks_p: float = 0.001
    ng_rate_p: float = 0.001
    min_frames: int = 200
    window_s: float = 3600.0
    queue_max: int = 200
    interval_s: float = 300.0

    def __post_init__(self) -> None:
        if self.psi_alarm <= 0:
            raise ConfigError(f"monitor.psi_alarm: {self.psi_alarm} must be > 0")
        for name in ("ks_p", "ng_rate_p"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ConfigError(f"monitor.{name}: {value} must be in (0, 1)")
        if self.min_frames < 1:
            raise ConfigError(f"monitor.min_frames: {self.min_frames} must be >= 1")
        if self.window_s <= 0 or self.interval_s <= 0:
            raise ConfigError("monitor.window_s and monitor.interval_s must be > 0")
        if self.window_s > HISTORY_DAYS * 86400:
            raise ConfigError(
                f"monitor.window_s: {self.window_s} s is longer than the {HISTORY_DAYS} days of heartbeats the ingest "
                "database keeps; the window would never fill"
            )
        if self.queue_max < 0:
            raise ConfigError(f"monitor.queue_max: {self.queue_max} must be >= 0")


def score_bin(score: float) -> int:
    """The bin of a score in 0..1 (clamped: a score of exactly 1 is in the last bin, NaN in the first)."""
    if not score > 0.0:  # also NaN
        return 0
    return min(int(score * SCORE_BINS), SCORE_BINS - 1)


def histogram(scores: Sequence[float]) -> list[int]:
    counts = [0] * SCORE_BINS
    for s in scores:
        counts[score_bin(s)] += 1
    return counts


def frame_score(kind: str, result: Result, ok_class: str | None) -> float:
    """The frame's NG score (see the module doc); the same for the edge and the card's reference."""
    if kind == "classify":
        if ok_class is not None:
            return 1.0 - float(result.scores[ok_class])
        return float(max(result.scores.values())) if result.scores else 0.0
    if kind in ("segment", "anomaly"):
        return float(result.probs[0]) if result.probs is not None and len(result.probs) else 0.0
    return float(result.probs.max()) if result.probs is not None and len(result.probs) else 0.0


def frame_ng(kind: str, score: float, ok_class: str | None, ng_threshold: float, box_threshold: float) -> bool:
    """The edge's NG verdict from the frame's score at the card's operating point (crux.edge.runtime.decide)."""
    if kind == "classify" and ok_class is None:
        return True  # every class is a defect type
    return score >= (box_threshold if kind == "detect" else ng_threshold)


@dataclass(frozen=True)
class Reference:
    """The validation split's score histogram and NG rate at the card's threshold."""

    counts: tuple[int, ...]
    ng_rate: float
    split: str = "val"

    @property
    def frames(self) -> int:
        return sum(self.counts)

    def to_card(self) -> dict[str, Any]:
        return {"split": self.split, "bins": SCORE_BINS, "score_hist": list(self.counts), "ng_rate": self.ng_rate}

    @classmethod
    def from_card(cls, card: Mapping[str, Any] | None) -> Reference | None:
        """The card's reference, or None for a card without one (or one binned otherwise: not comparable)."""
        ref = (card or {}).get(CARD_KEY)
        if not isinstance(ref, Mapping) or ref.get("bins") != SCORE_BINS:
            return None
        counts = ref.get("score_hist")
        rate = ref.get("ng_rate")
        if (
            not isinstance(counts, list)
            or len(counts) != SCORE_BINS
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
            or sum(counts) == 0
            or not isinstance(rate, int | float)
            or not 0.0 <= float(rate) <= 1.0
        ):
            return None
        return cls(tuple(counts), float(rate), str(ref.get("split", "val")))


def reference_for_card(scores: Sequence[float], ng: Sequence[bool], split: str = "val") -> dict[str, Any] | None:
    """The card entry for a split's frame scores and NG verdicts; None without frames."""
    if not scores:
        return None
    return Reference(tuple(histogram(scores)), round(sum(ng) / len(ng), 6), split).to_card()


@dataclass(frozen=True)
class Window:
    """What one station (or a whole line) judged over a window: the score histogram and the NG count."""

    counts: tuple[int, ...]
    ng: int

    @property
    def frames(self) -> int:
        return sum(self.counts)

    @property
    def ng_rate(self) -> float | None:
        return self.ng / self.frames if self.frames else None

    @staticmethod
    def total(windows: Sequence[Window]) -> Window:
        counts = [0] * SCORE_BINS
        for w in windows:
            for i, c in enumerate(w.counts):
                counts[i] += c
        return Window(tuple(counts), sum(w.ng for w in windows))


@dataclass(frozen=True)
class Assessment:
    status: str  # STATUS_*
    frames: int
    psi: float | None = None
    ks_d: float | None = None
    ks_p: float | None = None
    ng_rate: float | None = None
    ref_ng_rate: float | None = None
    ng_rate_p: float | None = None
    reasons: tuple[str, ...] = ()

    @property
    def alarm(self) -> bool:
        return self.status == STATUS_ALARM

    def summary(self) -> str:
        if self.status in (STATUS_NO_REFERENCE, STATUS_TOO_FEW):
            return f"{self.status} ({self.frames} frames)"
        head = "ALARM: " + "; ".join(self.reasons) if self.alarm else "no shift"
        return (
            f"{head} (PSI {self.psi:.3f}, KS D {self.ks_d:.3f} p {self.ks_p:.2g}, NG rate {_pct(self.ng_rate)} vs "
            f"{_pct(self.ref_ng_rate)} validation, {self.frames} frames)"
        )


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


# An empty bin would make PSI infinite; this floor (a share, far below one frame in 10,000) keeps it finite while a
# bin that fills from nothing still counts heavily.
PSI_FLOOR = 1e-4


def psi(reference: Sequence[int], current: Sequence[int]) -> float:
    """Population stability index sum((c - r) ln(c / r)) over the bins' shares; 0 = same shape. Rule of thumb:
    < 0.1 stable, 0.1-0.25 moderate, > 0.25 a shift."""
    r_total, c_total = sum(reference), sum(current)
    if r_total == 0 or c_total == 0:
        raise ValueError("PSI of an empty histogram")
    out = 0.0
    for r, c in zip(reference, current, strict=True):
        rs, cs = max(r / r_total, PSI_FLOOR), max(c / c_total, PSI_FLOOR)
        out += (cs - rs) * math.log(cs / rs)
    return out


def ks_test(reference: Sequence[int], current: Sequence[int]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov on binned scores: D = the largest gap between the two cumulative shares at the
    bin edges, p from the asymptotic Kolmogorov distribution with n·m/(n+m) frames. Binning can only hide a gap
    inside a bin, so D is a lower bound and the test errs towards no alarm."""
    from scipy.stats import kstwobign

    n, m = sum(reference), sum(current)
    if n == 0 or m == 0:
        raise ValueError("KS test of an empty histogram")
    d = cr = cc = 0.0
    for r, c in zip(reference, current, strict=True):
        cr += r / n
        cc += c / m
        d = max(d, abs(cr - cc))
    en = math.sqrt(n * m / (n + m))
    # Stephens' small-sample correction of the asymptotic statistic.
    p = float(kstwobign.sf((en + 0.12 + 0.11 / en) * d))
    return d, min(max(p, 0.0), 1.0)


def ng_rate_test(ref_rate: float, ref_frames: int, ng: int, frames: int) -> float:
    """Two-sided p-value of a two-proportion z test: the window's NG rate against the validation split's."""
    from scipy.stats import norm

    rate = ng / frames
    pooled = (ref_rate * ref_frames + ng) / (ref_frames + frames)
    se = math.sqrt(pooled * (1 - pooled) * (1 / ref_frames + 1 / frames))
    if se == 0:
        return 1.0 if rate == ref_rate else 0.0
    return float(2 * norm.sf(abs(rate - ref_rate) / se))


def assess(reference: Reference | None, window: Window, cfg: MonitorConfig) -> Assessment:
    """The window against the reference: an alarm when PSI ≥ psi_alarm, the KS p < ks_p or the NG-rate p < ng_rate_p,
    provided the window holds `min_frames` frames; "no reference" for a card without one."""
    if reference is None:
        return Assessment(STATUS_NO_REFERENCE, window.frames, ng_rate=window.ng_rate)
    if window.frames < cfg.min_frames:
        return Assessment(STATUS_TOO_FEW, window.frames, ng_rate=window.ng_rate, ref_ng_rate=reference.ng_rate)
    value = psi(reference.counts, window.counts)
    d, p = ks_test(reference.counts, window.counts)
    rate = window.ng / window.frames
    ng_p = ng_rate_test(reference.ng_rate, reference.frames, window.ng, window.frames)
    reasons = []
    if value >= cfg.psi_alarm:
        reasons.append(f"score histogram shifted (PSI {value:.3f} ≥ {cfg.psi_alarm})")
    if p < cfg.ks_p:
        reasons.append(f"score distribution differs (KS p {p:.2g} < {cfg.ks_p})")
    if ng_p < cfg.ng_rate_p:
        reasons.append(f"NG rate {_pct(rate)} vs {_pct(reference.ng_rate)} (p {ng_p:.2g} < {cfg.ng_rate_p})")
    return Assessment(
        STATUS_ALARM if reasons else STATUS_OK,
        window.frames,
        psi=value,
        ks_d=d,
        ks_p=p,
        ng_rate=rate,
        ref_ng_rate=reference.ng_rate,
        ng_rate_p=ng_p,
        reasons=tuple(reasons),
    )


__all__ = [
    "CARD_KEY",
    "SCORE_BINS",
    "Assessment",
    "MonitorConfig",
    "Reference",
    "Window",
    "assess",
    "frame_ng",
    "frame_score",
    "histogram",
    "ks_test",
    "ng_rate_test",
    "psi",
    "reference_for_card",
    "score_bin",
]
