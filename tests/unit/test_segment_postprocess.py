"""Segmentation post-processing (numpy, the edge's and evaluation's one path), metrics and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from crux.evaluation import operating_threshold, pixel_confusion, segmentation_metrics
from crux.postprocess import (
    SegmentSpec,
    box_filter,
    connected_regions,
    postprocess_segment,
    rle_decode,
    rle_encode,
)

masks = st.integers(1, 24).flatmap(lambda h: st.integers(1, 24).flatmap(lambda w: arrays(bool, (h, w))))


@settings(max_examples=200, deadline=None)
@given(masks)
def test_rle_matches_pycocotools_and_round_trips(mask: np.ndarray) -> None:
    from pycocotools import mask as coco

    counts = rle_encode(mask)
    reference = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert counts == reference["counts"].decode()
    assert np.array_equal(rle_decode(counts, *mask.shape), mask)


def test_rle_decode_rejects_a_wrong_size() -> None:
    counts = rle_encode(np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="4x4"):
        rle_decode(counts, 4, 4)


def test_box_filter_equals_torch_avg_pool() -> None:
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(0).random((2, 9, 13)).astype(np.float32)
    ref = F.avg_pool2d(torch.from_numpy(x)[None], 3, 1, 1)[0].numpy()
    assert np.allclose(box_filter(x, 3), ref, atol=1e-6)
    assert box_filter(x, 1) is x


def _logits(defect: np.ndarray, size: int = 16) -> np.ndarray:
    """Logits (1 + 2, S, S): background everywhere except `defect` (class-index map, 1 or 2)."""
    raw = np.zeros((3, size, size), np.float32)
    raw[0] = 6.0
    for j in (1, 2):
        raw[j][defect == j] = 12.0
    return raw


def test_segment_verdict_map_and_regions() -> None:
    spec = SegmentSpec(("crack", "blowhole"), smooth=3, min_region_px=1)
    defect = np.zeros((16, 16), np.uint8)
    defect[2:6, 2:6] = 1  # a crack region
    defect[10:12, 12:14] = 2  # a small blowhole
    maps = postprocess_segment(_logits(defect), (32, 16), spec)  # original is 32 wide, 16 high
    assert maps.class_map.shape == (16, 32) and maps.defect_prob.shape == (16, 32)
    assert maps.ng_score > 0.99 and maps.strongest == 0  # the 4x4 crack survives smoothing best
    regions = connected_regions(maps.class_map, 1)
    assert [(r.class_index, r.area, r.box) for r in regions] == [(0, 32, (4, 2, 12, 6)), (1, 8, (24, 10, 28, 12))]
    ok = postprocess_segment(_logits(np.zeros((16, 16), np.uint8)), (16, 16), spec)
    assert ok.ng_score < 0.01 and not ok.class_map.any()


def test_one_hot_pixel_is_smoothed_away() -> None:
    """A single stray pixel cannot reach the NG score a real defect reaches (the 3x3 mean caps it at 1/9)."""
    defect = np.zeros((16, 16), np.uint8)
    defect[8, 8] = 1
    spec = SegmentSpec(("crack", "blowhole"))
    stray = postprocess_segment(_logits(defect), (16, 16), spec).ng_score
    defect[8:10, 8:10] = 1
    small_defect = postprocess_segment(_logits(defect), (16, 16), spec).ng_score
    assert stray < 0.12 and small_defect > 0.44  # background pixels still carry ~0.5% defect probability


def test_pixel_metrics_and_operating_point() -> None:
    truth = np.array([[0, 1, 1], [0, 2, 0]])
    pred = np.array([[0, 1, 0], [0, 2, 2]])
    cm = pixel_confusion(truth, pred, 3)
    assert cm.tolist() == [[2, 0, 1], [1, 1, 0], [0, 0, 1]]
    classes = ["ok", "crack", "blowhole"]
    ng = np.array([0.1, 0.2, 0.9, 0.8, 0.05])
    targets = np.array([0, 0, 1, 2, 0])
    threshold = operating_threshold(ng, targets != 0, 0.0)
    assert 0.2 < threshold <= 0.2 + 1e-9
    metrics, plots = segmentation_metrics(
        cm, ng, np.array([0, 0, 0, 1, 0]), targets, classes, "ok", ("crack", "blowhole"), None, 0.0
    )
    assert metrics["pixel"]["crack"]["iou"] == 0.5 and metrics["pixel"]["blowhole"]["iou"] == 0.5
    assert metrics["miou"] == 0.5 and metrics["accuracy"] == 1.0
    assert metrics["inspection"]["ng_recall"] == 1.0 and metrics["inspection"]["false_reject_rate"] == 0.0
    assert len(plots["threshold_curve"]) == 101


def test_augmentation_keeps_a_square_under_its_mask() -> None:
    from crux.train.augment import build_augment
    from crux.train.recipe import AugmentConfig, TransformSpec

    cfg = AugmentConfig(
        transforms=(
            TransformSpec("HorizontalFlip", {"p": 0.5}),
            TransformSpec("RandomRotate90", {"p": 0.5}),
            TransformSpec("Affine", {"scale": [0.8, 1.2], "translate_percent": [-0.1, 0.1], "p": 1.0}),
        )
    )
    aug = build_augment(cfg, "segment", 64, 1)
    image = np.zeros((64, 64, 1), np.uint8)
    image[10:30, 20:40] = 255
    mask = (image[:, :, 0] > 0).astype(np.uint8) * 3
    for seed in range(10):
        aug.set_random_state(np.random.default_rng(seed), __import__("random").Random(seed))
        out = aug(image=image, mask=mask)
        bright = out["image"].reshape(64, 64) > 127
        assert set(np.unique(out["mask"])) <= {0, 3}  # nearest: no blended class values
        moved = out["mask"] == 3
        assert (bright & moved).sum() / max(1, (bright | moved).sum()) > 0.9


def test_segment_rejects_transforms_that_do_not_move_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every 2-D dual transform of albumentations 2.0 moves masks; the guard is for one that would not (a plugin or
    a later release), so a stand-in declaring image and boxes only plays that transform."""
    import albumentations as A
    from albumentations.core.type_definitions import Targets

    from crux.config import ConfigError
    from crux.train.augment import build_augment
    from crux.train.recipe import AugmentConfig, TransformSpec

    class ImageAndBoxesOnly(A.DualTransform):
        _targets = (Targets.IMAGE, Targets.BBOXES)

    monkeypatch.setattr(A, "ImageAndBoxesOnly", ImageAndBoxesOnly, raising=False)
    with pytest.raises(ConfigError, match="ImageAndBoxesOnly does not move masks"):
        build_augment(AugmentConfig(transforms=(TransformSpec("ImageAndBoxesOnly", {}),)), "segment")
