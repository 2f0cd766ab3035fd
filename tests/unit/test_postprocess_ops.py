"""crux.postprocess: numpy-only pre/post-processing shared by evaluation and the edge."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from crux.postprocess import (
    DetectSpec,
    InputSpec,
    anchor_points,
    batched_nms,
    box_iou,
    feature_sizes,
    ng_scores,
    nms,
    normalise,
    postprocess_classify,
    postprocess_detect,
    preprocess,
    resize,
    sigmoid,
    softmax,
    to_channels,
)


def test_postprocess_imports_no_torch() -> None:
    # The edge runtime installs crux[edge] without torch: importing the shared code must not need it.
    code = "import sys, crux.postprocess, crux.kinds, crux.evaluation; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_softmax_rows_sum_to_one_and_are_stable() -> None:
    p = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, 1.0, 2.0]]))
    assert np.allclose(p.sum(axis=1), 1.0)
    assert np.allclose(p[0], [0.5, 0.5, 0.0])
    assert p[1].argmax() == 2
    assert np.allclose(postprocess_classify(np.zeros((2, 4))), 0.25)


def test_sigmoid_extremes() -> None:
    s = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    assert np.allclose(s, [0.0, 0.5, 1.0])
    assert np.isfinite(s).all()


def test_ng_scores() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    assert np.allclose(ng_scores(probs, ok_index=0), [0.1, 0.8])


def test_preprocess_resizes_and_normalises() -> None:
    img = np.full((40, 80, 3), 255, np.uint8)
    spec = InputSpec(image_size=32, channels=1, mean=0.5, std=0.25)
    x, size = preprocess(img, spec)
    assert size == (80, 40)
    assert x.shape == (1, 32, 32) and x.dtype == np.float32
    assert np.allclose(x, (1.0 - 0.5) / 0.25)
    assert to_channels(np.zeros((5, 5), np.uint8), 3).shape == (5, 5, 3)
    assert resize(np.zeros((10, 20, 1), np.uint8), 8).shape == (8, 8, 1)
    assert normalise(np.zeros((4, 4, 3), np.uint8), InputSpec(4, 3)).shape == (3, 4, 4)


def test_box_iou_known_values() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    assert np.allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])


def test_nms_suppresses_overlaps_and_keeps_order() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.6, 0.9, 0.5, 0.3], np.float32)
    keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [1, 2]
    assert nms(boxes, scores, iou_threshold=1.0).tolist() == [1, 0, 2, 3]


def test_batched_nms_is_class_aware() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    classes = np.array([0, 1, 0])
    assert sorted(batched_nms(boxes, scores, classes, 0.5).tolist()) == [0, 1]
    assert batched_nms(np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0), 0.5).size == 0


def test_anchor_points_layout() -> None:
    assert feature_sizes(64, (8, 16, 32)) == [8, 4, 2]
    assert feature_sizes(200, (8, 16, 32)) == [25, 13, 7]
    points, strides = anchor_points(64, (8, 16))
    assert points.shape == (64 + 16, 2)
    # Row-major per level: x runs fastest.
    assert points[:3].tolist() == [[4.0, 4.0], [12.0, 4.0], [20.0, 4.0]]
    assert points[8].tolist() == [4.0, 12.0]
    assert points[64].tolist() == [8.0, 8.0] and strides[64] == 16


def _raw_with_box(
    spec: InputSpec, det: DetectSpec, point: int, ltrb: list[float], cls: int, logit: float
) -> np.ndarray:
    points, _ = anchor_points(spec.image_size, det.strides)
    raw = np.zeros((points.shape[0], 5 + det.num_classes), np.float32)
    raw[:, 4] = -20.0  # centerness: background everywhere
    raw[:, 5:] = -20.0
    raw[point, :4] = ltrb
    raw[point, 4] = 20.0
    raw[point, 5 + cls] = logit
    return raw


def test_decode_maps_boxes_to_original_pixels() -> None:
    spec = InputSpec(image_size=64, channels=1)
    det = DetectSpec(strides=(8, 16), num_classes=2, score_threshold=0.3)
    # Point 9 of level 0 is (12, 12) in input pixels.
    raw = _raw_with_box(spec, det, point=9, ltrb=[4, 2, 6, 8], cls=1, logit=20.0)
    out = postprocess_detect(raw, original_size=(128, 256), input_spec=spec, spec=det)
    assert len(out) == 1
    assert out.class_ids.tolist() == [1]
    assert out.scores[0] == pytest.approx(1.0, abs=1e-6)
    # Input box (8, 10, 18, 20) scaled by (128 / 64, 256 / 64).
    assert np.allclose(out.boxes[0], [16, 40, 36, 80])


def test_decode_thresholds_clips_and_limits() -> None:
    spec = InputSpec(image_size=64, channels=1)
    det = DetectSpec(strides=(8, 16), num_classes=2, score_threshold=0.3, max_detections=1)
    raw = _raw_with_box(spec, det, point=0, ltrb=[100, 100, 4, 4], cls=0, logit=20.0)
    raw[20, :4] = [2, 2, 2, 2]
    raw[20, 4] = 20.0
    raw[20, 5] = 0.0  # score sqrt(0.5) ~ 0.71, below the first box
    out = postprocess_detect(raw, (64, 64), spec, det)
    assert len(out) == 1
    assert np.allclose(out.boxes[0], [0, 0, 8, 8])  # clipped to the image
    low = postprocess_detect(raw, (64, 64), spec, DetectSpec((8, 16), 2, score_threshold=0.99))
    assert len(low) == 1 and low.scores[0] > 0.99
    with pytest.raises(ValueError, match="does not match"):
        postprocess_detect(raw[:10], (64, 64), spec, det)
