"""The drift math of crux.monitor.drift: bins, PSI, the binned KS test, the NG-rate test and the alarm decision, on
seeded synthetic score samples (a steady stream, a lighting change, a new defect type)."""

from __future__ import annotations

import numpy as np
import pytest

from crux.config import ConfigError
from crux.inference import Result
from crux.monitor.drift import (
    CARD_KEY,
    SCORE_BINS,
    MonitorConfig,
    Reference,
    Window,
    assess,
    frame_ng,
    frame_score,
    histogram,
    ks_test,
    ng_rate_test,
    psi,
    reference_for_card,
    score_bin,
)

CFG = MonitorConfig(min_frames=200)


def sample(rng: np.random.Generator, n: int, a: float = 1.0, b: float = 8.0) -> list[float]:
    """NG scores of a mostly-OK line: Beta(a, b), the bulk near 0."""
    return [float(x) for x in rng.beta(a, b, n)]


def reference(rng: np.random.Generator, n: int = 2000) -> Reference:
    scores = sample(rng, n)
    card = {CARD_KEY: reference_for_card(scores, [s >= 0.5 for s in scores])}
    ref = Reference.from_card(card)
    assert ref is not None
    return ref


def window(scores: list[float], threshold: float = 0.5) -> Window:
    return Window(tuple(histogram(scores)), sum(s >= threshold for s in scores))


def test_bins_cover_zero_to_one_and_clamp() -> None:
    assert [score_bin(x) for x in (0.0, 0.049, 0.05, 0.5, 0.999, 1.0, 1.5, -1.0)] == [0, 0, 1, 10, 19, 19, 19, 0]
    assert score_bin(float("nan")) == 0
    assert sum(histogram([0.1] * 7)) == 7 and len(histogram([])) == SCORE_BINS


def test_psi_is_zero_on_the_same_shape_and_large_on_a_moved_bulk() -> None:
    ref = [100, 50, 25, 0] + [0] * 16
    assert psi(ref, [2 * c for c in ref]) == pytest.approx(0.0, abs=1e-12)
    moved = [0] * 16 + [25, 50, 100, 0]
    assert psi(ref, moved) > 5.0
    with pytest.raises(ValueError):
        psi(ref, [0] * SCORE_BINS)


def test_ks_matches_the_unbinned_statistic_on_scores_at_bin_centres() -> None:
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(0)
    # Scores at bin centres: binning loses nothing, so D equals scipy's exact two-sample statistic.
    a = (rng.integers(0, 8, 400) + 0.5) / SCORE_BINS
    b = (rng.integers(2, 10, 300) + 0.5) / SCORE_BINS
    d, p = ks_test(histogram(list(a)), histogram(list(b)))
    exact = ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(exact.statistic, abs=1e-9)
    assert p < 1e-6 and exact.pvalue < 1e-6


def test_ng_rate_test() -> None:
    assert ng_rate_test(0.05, 2000, 50, 1000) > 0.5  # 5 % both
    assert ng_rate_test(0.05, 2000, 200, 1000) < 1e-10  # 20 % against 5 %
    assert ng_rate_test(0.0, 100, 0, 100) == 1.0


def test_a_steady_stream_raises_no_alarm() -> None:
    rng = np.random.default_rng(1)
    ref = reference(rng)
    # Fifty windows from the same distribution as validation: none alarms (the bounds are far in the tail).
    for _ in range(50):
        result = assess(ref, window(sample(rng, 1000)), CFG)
        assert result.status == "ok", result.summary()


def test_a_lighting_change_alarms() -> None:
    rng = np.random.default_rng(2)
    ref = reference(rng)
    # Brighter frames read as less typical: the whole score distribution slides up (Beta(2, 6) vs Beta(1, 8)).
    result = assess(ref, window(sample(rng, 1000, 2.0, 6.0)), CFG)
    assert result.alarm and result.psi is not None and result.psi > CFG.psi_alarm
    assert any("PSI" in r for r in result.reasons) and any("KS" in r for r in result.reasons)
    assert "ALARM" in result.summary()


def test_a_new_defect_type_alarms_on_the_ng_rate_and_histogram() -> None:
    rng = np.random.default_rng(3)
    ref = reference(rng)
    # 15 % of frames now carry a defect the model scores high: a second mode near 0.9.
    scores = sample(rng, 850) + [float(x) for x in rng.uniform(0.8, 1.0, 150)]
    result = assess(ref, window(scores), CFG)
    assert result.alarm
    assert any("NG rate" in r for r in result.reasons)


def test_too_few_frames_and_no_reference_never_alarm() -> None:
    rng = np.random.default_rng(4)
    shifted = window(sample(rng, 150, 5.0, 1.0))
    assert assess(reference(rng), shifted, CFG).status == "too few frames"
    assert assess(None, window(sample(rng, 5000, 5.0, 1.0)), CFG).status == "no reference"


def test_cards_without_a_usable_reference_read_as_none() -> None:
    assert Reference.from_card({}) is None  # a card exported before the monitor existed
    assert Reference.from_card({CARD_KEY: None}) is None  # exported without a val split
    good = reference_for_card([0.1, 0.9], [False, True])
    assert good is not None and Reference.from_card({CARD_KEY: good}) == Reference(
        tuple(histogram([0.1, 0.9])), 0.5, "val"
    )
    for bad in ({**good, "bins": 10}, {**good, "score_hist": [1] * 3}, {**good, "ng_rate": 2.0},
                {**good, "score_hist": [0] * SCORE_BINS}, {**good, "score_hist": [-1] + [1] * 19}):  # fmt: skip
        assert Reference.from_card({CARD_KEY: bad}) is None


def test_frame_score_and_verdict_per_kind() -> None:
    probs = np.asarray([0.7, 0.2, 0.1])
    cls = Result("ok", 0.7, {"ok": 0.7, "scratch": 0.2, "spot": 0.1}, probs=probs)
    assert frame_score("classify", cls, "ok") == pytest.approx(0.3)
    assert frame_score("classify", cls, None) == pytest.approx(0.7)
    assert frame_ng("classify", 0.3, None, 0.5, 0.3)  # every class a defect: always NG
    assert not frame_ng("classify", 0.3, "ok", 0.5, 0.3)
    seg = Result("scratch", 0.8, {}, probs=np.asarray([0.8]))
    assert frame_score("segment", seg, "ok") == frame_score("anomaly", seg, None) == pytest.approx(0.8)
    det = Result("scratch", 0.6, {}, probs=np.asarray([0.2, 0.6]))
    assert frame_score("detect", det, None) == pytest.approx(0.6)
    assert frame_score("detect", Result("", 0.0, {}, probs=np.zeros(0)), None) == 0.0
    assert frame_ng("detect", 0.35, None, 0.9, 0.3)


def test_config_refuses_bad_bounds() -> None:
    for bad in ({"ks_p": 0.0}, {"psi_alarm": -1.0}, {"min_frames": 0}, {"window_s": 30 * 86400.0}, {"queue_max": -1}):
        with pytest.raises(ConfigError):
            MonitorConfig(**bad)  # type: ignore[arg-type]
