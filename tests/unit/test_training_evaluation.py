"""crux.evaluation: pycocotools agreement on a hand-made case, classification and inspection metrics, reports."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crux.evaluation import (
    classification_metrics,
    compare_markdown,
    confusion_png,
    detection_metrics,
    inspection_metrics,
)
from crux.postprocess import Detections

CLASSES = ["crack", "spot"]


def _det(boxes: list[list[float]], scores: list[float], classes: list[int]) -> Detections:
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), np.asarray(classes))


def _case() -> tuple[list[Detections], list[np.ndarray], list[np.ndarray], list[tuple[int, int]]]:
    gt_boxes = [np.array([[10, 10, 50, 50], [60, 60, 90, 90]], np.float32), np.array([[0, 0, 20, 40]], np.float32)]
    gt_labels = [np.array([0, 1]), np.array([0])]
    preds = [
        # exact crack (TP), a spot shifted by 10% (IoU ~0.68: TP at .5, FP at .75), a crack false positive
        _det([[10, 10, 50, 50], [63, 60, 93, 90], [100, 100, 120, 120]], [0.9, 0.8, 0.95], [0, 1, 0]),
        # second image: its crack is missed, a spot false positive
        _det([[0, 50, 20, 90]], [0.4], [1]),
    ]
    return preds, gt_boxes, gt_labels, [(128, 128), (64, 96)]


def test_detection_metrics_agree_with_pycocotools() -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    preds, gt_boxes, gt_labels, sizes = _case()
    metrics, plots = detection_metrics(preds, gt_boxes, gt_labels, sizes, CLASSES)

    # The same case written directly for pycocotools (xywh), evaluated independently.
    gt = {
        "images": [{"id": 1, "width": 128, "height": 128}, {"id": 2, "width": 64, "height": 96}],
        "categories": [{"id": 1, "name": "crack"}, {"id": 2, "name": "spot"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [60, 60, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 40], "area": 800, "iscrowd": 0},
        ],
    }
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [63, 60, 30, 30], "score": 0.8},
        {"image_id": 1, "category_id": 1, "bbox": [100, 100, 20, 20], "score": 0.95},
        {"image_id": 2, "category_id": 2, "bbox": [0, 50, 20, 40], "score": 0.4},
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert metrics["map50"] == pytest.approx(ev.stats[1], abs=1e-6)
    assert metrics["map50_95"] == pytest.approx(ev.stats[0], abs=1e-6)
    # By hand (101-point interpolation): crack ranks FP(0.95), TP(0.9) of 2 GT -> precision 0.5 up to recall 0.5:
    # AP50 = 0.5 * 51 / 101. Spot: TP(0.8) first, its only GT -> AP50 = 1.
    assert metrics["per_class"]["crack"]["ap50"] == pytest.approx(0.5 * 51 / 101, abs=1e-6)
    assert metrics["per_class"]["spot"]["ap50"] == pytest.approx(1.0)
    assert metrics["map50"] == pytest.approx((0.5 * 51 / 101 + 1.0) / 2, abs=1e-6)
    assert metrics["n_detections"] == 4 and metrics["n_boxes"] == 3
    curve = plots["pr_curve"]
    assert len(curve) == 101 and curve[0]["precision_spot"] == 1.0 and curve[0]["precision_crack"] == 0.5
    assert curve[0]["precision"] == pytest.approx(0.75) and curve[-1]["recall"] == 1.0


def test_detection_metrics_without_detections() -> None:
    _, gt_boxes, gt_labels, sizes = _case()
    empty = [_det([], [], []), _det([], [], [])]
    metrics, _ = detection_metrics(empty, gt_boxes, gt_labels, sizes, CLASSES)
    assert metrics["map50"] == 0.0 and metrics["per_class"]["crack"]["ap50"] == 0.0


def test_classification_metrics_hand_case() -> None:
    classes = ["ok", "crack", "spot"]
    targets = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3, dtype=np.float32)[preds] * 0.9 + 0.1 / 3
    metrics, plots = classification_metrics(probs, targets, classes, ok_class="ok")
    assert metrics["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # ok P=1 R=2/3 F=0.8; crack P=.5 R=.5 F=.5; spot P=.5 R=1 F=2/3
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3, abs=1e-5)
    assert metrics["per_class"]["spot"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3, abs=1e-5),
        "support": 1,
    }
    assert len(plots["confusion"]) == 6 and plots["confusion"][2] == {"actual": "ok", "predicted": "crack"}
    insp = metrics["inspection"]
    # NG score = 1 - p(ok): the 3 NG images are all flagged; one of 3 OK images is falsely rejected.
    assert insp["ng_recall"] == 1.0 and insp["false_reject_rate"] == pytest.approx(1 / 3, abs=1e-6)
    assert len(plots["threshold_curve"]) == 101


def test_inspection_metrics_operating_point() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    is_ng = np.array([False, False, True, False, True, True])
    out, curve = inspection_metrics(scores, is_ng, threshold=0.5, max_false_reject=0.0)
    assert out["ng_recall"] == pytest.approx(2 / 3, abs=1e-6) and out["false_reject_rate"] == pytest.approx(
        1 / 3, abs=1e-6
    )
    # No false rejects allowed: the lowest threshold above the OK image scored 0.6 is 0.7 -> recall 2/3.
    assert out["threshold_at_max_false_reject"] == pytest.approx(0.7)
    assert out["ng_recall_at_max_false_reject"] == pytest.approx(2 / 3, abs=1e-6)
    assert curve[0] == {"threshold": 0.0, "ng_recall": 1.0, "false_reject_rate": 1.0}
    loose, _ = inspection_metrics(scores, is_ng, threshold=0.5, max_false_reject=0.34)
    assert loose["ng_recall_at_max_false_reject"] == 1.0


def test_confusion_png_and_markdown(tmp_path: Path) -> None:
    path = tmp_path / "cm.png"
    confusion_png(np.array([[5, 1], [0, 4]]), ["ok", "a very long defect class name"], path)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100
    current = {"accuracy": 0.9, "per_class": {"ok": {"recall": 1.0}}, "n_images": 10, "confusion_matrix": [[1]]}
    previous = {"accuracy": 0.8, "per_class": {"ok": {"recall": 0.5}}, "n_images": 10}
    md = compare_markdown(current, previous)
    assert "| accuracy | 0.8000 | 0.9000 | +0.1000 |" in md
    assert "per_class.ok.recall" in md and "confusion_matrix" not in md
    assert "No previous metrics" in compare_markdown(current, None)
    json.dumps(current)


def test_classify_operating_threshold_is_chosen_within_the_false_reject_budget() -> None:
    """A line with an OK class ships the lowest 1 - p(OK) threshold whose false-reject rate (on the state it is
    given: validation) stays within the budget; a line without one keeps the arg-max verdict's 0.5."""
    from crux.postprocess import InputSpec
    from crux.train.tasks import ClassifyTask

    task = ClassifyTask(["ok", "dent"], "ok", InputSpec(32, 1))
    p_ok = np.array([0.99, 0.97, 0.95, 0.9, 0.6, 0.3, 0.2, 0.1])  # five OK items, three NG
    targets = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    state = {"probs": [np.stack([p_ok, 1 - p_ok], axis=1)], "targets": [targets]}
    threshold = task.operating_threshold(state, max_false_reject=0.2)  # one of five OK parts may be rejected
    rejected = (1 - p_ok) >= threshold
    assert rejected[targets == 0].sum() == 1 and rejected[targets == 1].all()
    strict = task.operating_threshold(state, max_false_reject=0.0)
    assert not ((1 - p_ok) >= strict)[targets == 0].any()
    no_ok = ClassifyTask(["a", "b"], None, InputSpec(32, 1))
    assert no_ok.operating_threshold(state, 0.02) == 0.5
