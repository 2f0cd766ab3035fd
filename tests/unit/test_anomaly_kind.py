"""The anomaly kind's pieces: synthetic anomalies (masks align, nothing changes outside them), threshold calibration
at a false-reject rate, ranking metrics, the kind's config and gate, and the edge's near-threshold rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crux.config import ConfigError, ProjectSpec, from_mapping
from crux.evaluation import anomaly_metrics, auroc, operating_threshold, region_overlaps
from crux.kinds import get_kind
from crux.train.anomaly_synthesis import (
    METHODS,
    SynthesisConfig,
    defect_crops,
    perlin_mask,
    perlin_noise,
    synthesize,
    synthesize_batch,
)


def textures(n: int = 6, size: int = 64, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 1, size, size) noisy 'OK parts' (never flat, so any paste is visible)."""
    g = torch.Generator().manual_seed(seed)
    return (96 + 64 * torch.rand(n, 1, size, size, generator=g)).to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Synthesis


def test_perlin_noise_is_smooth_bounded_and_any_size() -> None:
    g = torch.Generator().manual_seed(1)
    noise = perlin_noise(50, 70, (4, 8), g)
    assert noise.shape == (50, 70) and noise.dtype == torch.float32
    assert float(noise.abs().max()) <= 1.5
    # Gradient noise: neighbouring pixels differ far less than the range (white noise would not).
    assert float((noise[:, 1:] - noise[:, :-1]).abs().mean()) < 0.1 * float(noise.max() - noise.min())


@pytest.mark.parametrize("method", [m for m in METHODS if m != "defect"])
def test_each_method_changes_pixels_only_inside_its_mask(method: str) -> None:
    images = textures()
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        image, other = images[0].float() / 255, images[1].float() / 255
        out, mask = synthesize(image, other, g, method=method)
        assert out.shape == image.shape and mask.shape == image.shape[1:] and mask.dtype == torch.bool
        assert torch.equal(out[:, ~mask], image[:, ~mask])  # bit-identical outside
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        # Every labelled pixel visibly changed: no invisible anomaly teaches the model to fire on normal surface.
        assert bool(((out - image).abs().amax(dim=0)[mask] >= SynthesisConfig().min_change - 1e-6).all())


def test_real_defect_crops_are_pasted_with_their_own_shape() -> None:
    images = textures(2)
    truth = torch.zeros(64, 64, dtype=torch.bool)
    truth[10:14, 20:40] = True
    crops = defect_crops([torch.zeros(1, 64, 64, dtype=torch.uint8), images[0]], [truth, torch.zeros_like(truth)])
    assert len(crops) == 1  # the image without defect pixels gives none
    crop, crop_mask = crops[0]
    assert crop.shape == (1, 8, 24) and int(crop_mask.sum()) == 4 * 20
    out, mask = synthesize(
        images[1].float() / 255, images[0].float() / 255, torch.Generator(), defects=crops, method="defect"
    )
    assert int(mask.sum()) == 80 and torch.equal(out[:, ~mask], images[1].float()[:, ~mask] / 255)
    assert bool((out[:, mask] == 0).all())  # the crop's (black) defect pixels


def test_batch_masks_align_with_changed_pixels_and_labels() -> None:
    images = textures(16)
    out, masks, is_ng = synthesize_batch(images, torch.Generator().manual_seed(3))
    assert out.dtype == torch.uint8 and masks.dtype == torch.int64 and masks.shape == (16, 64, 64)
    changed = (out != images)[:, 0]
    assert not bool((changed & (masks == 0)).any())  # no anomaly outside its mask
    assert torch.equal(is_ng, masks.flatten(1).any(dim=1))
    assert 2 <= int(is_ng.sum()) <= 14  # about half get one (anomaly_prob 0.5)
    for i in torch.nonzero(is_ng).flatten().tolist():
        assert bool(changed[i].any())
    # Seeded: the same generator state gives the same anomalies (validation's fixed twins rely on it).
    again = synthesize_batch(images, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], out) and torch.equal(again[1], masks)


def test_perlin_masks_span_sizes_and_are_rarely_empty() -> None:
    g = torch.Generator().manual_seed(0)
    areas = [float(perlin_mask(64, g, SynthesisConfig()).float().mean()) for _ in range(40)]
    assert sum(a == 0 for a in areas) <= 2
    assert min(a for a in areas if a) < 0.1 < max(areas)


# ---------------------------------------------------------------------------------------------------------------
# Calibration and metrics


def test_threshold_calibrated_at_the_false_reject_rate() -> None:
    ok = np.linspace(0.0, 0.99, 100)  # 100 OK parts
    ng = np.array([0.5, 0.985, 0.995, 1.0])
    scores, is_ng = np.r_[ok, ng], np.r_[np.zeros(100, bool), np.ones(4, bool)]
    t = operating_threshold(scores, is_ng, 0.02)
    assert ((ok >= t).mean()) <= 0.02 and (ok >= np.nextafter(ok[-3], 0)).mean() > 0.02
    assert t == pytest.approx(ok[-3], abs=1e-9)  # two OK parts may be rejected: above the third highest
    metrics, plots = anomaly_metrics(
        scores, is_ng, np.zeros(104, bool), np.zeros(0), np.zeros(0, bool), np.zeros(0), None, 0.02
    )
    insp = metrics["inspection"]
    assert insp["false_reject_rate"] <= 0.02 and insp["ng_recall"] == 0.75
    assert metrics["auroc_source"] == "ng" and sum(r["ok"] for r in plots["score_histogram"]) == 100
    # The NG parts never move the threshold: it is set on the OK scores alone.
    assert operating_threshold(np.r_[ok, [0.0, 0.0]], np.r_[np.zeros(100, bool), [True, True]], 0.02) == t


def test_auroc_matches_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)
    pos = rng.random(60) < 0.4
    pairs = [(a > b) + 0.5 * (a == b) for a in scores[pos] for b in scores[~pos]]
    assert auroc(scores, pos) == pytest.approx(np.mean(pairs))
    assert auroc(scores, np.zeros(60, bool)) is None


def test_without_ng_items_auroc_falls_back_to_synthetic_then_none() -> None:
    ok = np.array([0.1, 0.2, 0.3])
    synth = np.array([0.25, 0.9])
    metrics, _ = anomaly_metrics(
        np.r_[ok, synth], np.r_[False, False, False, True, True], np.r_[False, False, False, True, True],
        np.zeros(0), np.zeros(0, bool), np.zeros(0), None,
    )  # fmt: skip
    assert metrics["auroc_source"] == "synthetic" and metrics["auroc"] == pytest.approx(5 / 6, abs=1e-6)
    assert metrics["inspection"]["n_ng"] == 0 and metrics["inspection"]["ng_recall"] is None
    none, _ = anomaly_metrics(
        ok, np.zeros(3, bool), np.zeros(3, bool), np.zeros(0), np.zeros(0, bool), np.zeros(0), 0.5
    )
    assert none["auroc"] is None and none["inspection"]["false_reject_rate"] == 0.0


def test_region_overlap_per_labelled_region() -> None:
    truth = np.zeros((10, 10), bool)
    truth[0:2, 0:2] = True  # 4 px, fully found
    truth[6:8, 5:10] = True  # 10 px, 3 found
    pred = np.zeros_like(truth)
    pred[0:2, 0:2] = True
    pred[6, 5:8] = True
    assert sorted(region_overlaps(truth, pred)) == [pytest.approx(0.3), 1.0]
    assert region_overlaps(np.zeros_like(truth), pred) == []


def test_task_calibration_uses_real_items_and_lands_in_metrics() -> None:
    from crux.postprocess import InputSpec, SegmentSpec
    from crux.train.tasks import AnomalyTask

    task = AnomalyTask(["OK", "NG"], "OK", InputSpec(64, 1), SegmentSpec(("NG",)), {})
    state = task.new_state()
    state["score"] = [0.1, 0.2, 0.3, 0.4, 0.9, 0.95]
    state["is_ng"] = [False, False, False, False, True, True]
    state["synthetic"] = [False, False, False, False, False, True]  # the synthetic twin never calibrates
    t = task.operating_threshold(state, 0.25)
    assert 0.3 < t <= 0.4 + 1e-9
    assert task.segment.pixel_threshold == pytest.approx(t) and task.decode["pixel_threshold"] == pytest.approx(t)
    metrics, _ = task.metrics(state, ng_threshold=t)
    assert metrics["calibration"]["n_ok"] == 4 and metrics["calibration"]["n_ng"] == 1
    assert metrics["calibration"]["ng_recall"] == 1.0 and metrics["auroc"] == 1.0


# ---------------------------------------------------------------------------------------------------------------
# Kind, config, gate, edge


def test_kind_is_choices_for_annotators_and_one_channel_for_the_model() -> None:
    kind = get_kind("anomaly")
    spec = from_mapping(
        ProjectSpec,
        {"title": "New line", "kind": "anomaly", "classes": {"OK": "#00ff00", "NG": "#ff0000"}, "ok_class": "OK"},
        "p",
    )
    config = kind.label_config(spec)
    assert "<Choices" in config and 'value="OK"' in config and 'value="NG"' in config and "Brush" not in config
    assert kind.head_classes(["OK", "NG"], "OK") == ["NG"]
    assert kind.decode_spec(["OK", "NG"], "OK")["defect_classes"] == ["NG"]
    from crux.train.models import build_model, model_config

    model = build_model("anomaly", model_config("anomaly", _model_params(), 1, 1))
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 2, 64, 64)


def _model_params() -> object:
    from crux.train.recipe import ModelParams

    return ModelParams(width=8, depth=(1, 1, 1), neck_width=16)


def test_anomaly_line_needs_an_ok_class() -> None:
    with pytest.raises(ConfigError, match="anomaly"):
        from_mapping(ProjectSpec, {"title": "t", "kind": "anomaly", "classes": {"OK": "#00ff00", "NG": "#ff0000"}}, "p")


def test_gate_without_ng_items_is_false_reject_only_and_says_so() -> None:
    from crux.ship.gate import GateConfig, gate_check

    no_ng = {"auroc": None, "accuracy": None, "inspection": {"n_ng": 0, "n_ok": 50, "false_reject_rate": 0.02}}
    result = gate_check(no_ng, None, GateConfig(), "anomaly", ok_line=True)
    assert result.passed, result.reason
    by_metric = {c.metric: c for c in result.criteria if c.rule != "vs_production"}
    assert by_metric["inspection.false_reject_rate"].candidate == 0.02
    assert "no NG items" in by_metric["auroc"].note and "no NG items" in by_metric["inspection.ng_recall"].note
    too_many = {**no_ng, "inspection": {**no_ng["inspection"], "false_reject_rate": 0.3}}
    assert not gate_check(too_many, None, GateConfig(), "anomaly", ok_line=True).passed
    # With NG items the AUROC floor and NG recall apply.
    blind = {"auroc": 0.5, "inspection": {"n_ng": 10, "n_ok": 50, "ng_recall": 0.1, "false_reject_rate": 0.02}}
    refused = gate_check(blind, None, GateConfig(), "anomaly", ok_line=True)
    assert not refused.passed and "auroc" in refused.reason


def test_edge_uncertainty_is_near_the_threshold_in_log_odds() -> None:
    from crux.edge.runtime import anomaly_uncertain

    assert anomaly_uncertain(0.012, 0.01, 0.15)
    assert not anomaly_uncertain(0.2, 0.01, 0.15)  # an absolute 0.15 margin would call this uncertain
    assert not anomaly_uncertain(0.001, 0.01, 0.15)
    assert anomaly_uncertain(0.55, 0.5, 0.15) and not anomaly_uncertain(0.7, 0.5, 0.15)
