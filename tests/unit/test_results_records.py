"""Per-item records of `crux evaluate` (crux.evaluation: classify/detect/segment/anomaly items, the per-class table,
the worst misses' order, overlays) and the files the pipeline writes from a real model run
(crux.train.pipeline.write_item_results: predictions.json agrees with metrics.json, byte-identical on a rerun)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crux import evaluation as ev
from crux.postprocess import Detections


def _classify_case() -> tuple[np.ndarray, np.ndarray]:
    from results_support import classify_probs

    return classify_probs()


def test_classify_items_outcomes_follow_the_shipped_threshold() -> None:
    probs, targets = _classify_case()
    records = ev.classify_items(probs, targets, ["ok", "scratch", "spot"], "ok", 0.5)
    outcomes = {o: [r["index"] for r in records if r["outcome"] == o] for o in ev.OUTCOMES}
    assert outcomes["escape"] == [20, 21, 22]  # scratch parts predicted OK: NG scores 0.4, 0.3, 0.2 < 0.5
    assert outcomes["false_reject"] == [10, 11]  # OK parts with NG scores 0.8, 0.9
    assert outcomes["misclassified"] == [29]  # a spot called scratch: rejected all the same
    assert len(outcomes["correct"]) == 24
    assert records[22]["score"] == pytest.approx(0.2) and records[22]["predicted"] == "ok"
    assert records[10]["confidence"] == pytest.approx(0.72)


def test_per_class_table_equals_the_metrics_per_class_figures() -> None:
    probs, targets = _classify_case()
    classes = ["ok", "scratch", "spot"]
    metrics, _ = ev.classification_metrics(probs, targets, classes, "ok", 0.5)
    records = ev.classify_items(probs, targets, classes, "ok", 0.5)
    table = {row["class"]: row for row in ev.per_class_table(records, classes)}
    for name in classes:
        for key in ("precision", "recall", "f1", "support"):
            assert table[name][key] == metrics["per_class"][name][key], (name, key)
    assert ev.records_confusion(records, classes) == metrics["confusion_matrix"] == [[10, 2, 0], [3, 8, 0], [0, 1, 6]]
    assert table["ok"]["precision"] == pytest.approx(10 / 13, abs=1e-6)
    # A class nobody predicted and nobody labelled has no precision or recall (not a misleading 0).
    empty = ev.per_class_table(records[:1], ["ok", "scratch"])
    assert empty[1]["precision"] is None and empty[1]["recall"] is None and empty[1]["f1"] is None


def test_worst_misses_put_escapes_first_then_false_rejects() -> None:
    probs, targets = _classify_case()
    records = ev.classify_items(probs, targets, ["ok", "scratch", "spot"], "ok", 0.5)
    order = [r["index"] for r in ev.worst_misses(records)]
    assert order == [22, 21, 20, 11, 10, 29]  # escapes lowest score first, false rejects highest first
    assert ev.worst_misses(records, limit=2) == [records[22], records[21]]


def test_detect_items_match_boxes_greedily_by_class_and_iou() -> None:
    box = np.asarray([[10.0, 10.0, 30.0, 30.0]])
    shifted = box + 15  # IoU ~0.14 with `box`
    preds = [
        Detections(np.vstack([box, shifted]), np.asarray([0.9, 0.4]), np.asarray([0, 0])),
        Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)),
        Detections(box, np.asarray([0.8]), np.asarray([1])),
        Detections(box, np.asarray([0.6]), np.asarray([0])),
    ]
    truth = [box, np.vstack([box, shifted]), box, np.zeros((0, 4))]
    labels = [np.asarray([0]), np.asarray([1, 1]), np.asarray([0]), np.zeros(0, int)]
    records = ev.detect_items(preds, truth, labels, ["scratch", "spot"])
    assert [(r["actual"], r["predicted"], r["outcome"], r["missed"], r["extra"]) for r in records] == [
        ("scratch", "scratch", "misclassified", 0, 1),  # one extra box beside the match
        ("spot", "none", "escape", 2, 0),
        ("scratch", "spot", "misclassified", 1, 1),  # right place, wrong class: no match
        ("none", "scratch", "false_reject", 0, 1),
    ]
    assert records[0]["boxes"][0] == [10.0, 10.0, 30.0, 30.0, "scratch", 0.9]
    assert ev.result_labels("detect", ["scratch", "spot"], None) == ["scratch", "spot", "none"]


def test_segment_and_anomaly_items_take_the_metrics_verdict() -> None:
    seg = ev.segment_items(
        np.asarray([0.1, 0.7, 0.9, 0.2]),
        np.asarray([0, 1, 0, 1]),
        np.asarray([0, 0, 1, 2]),
        ["ok", "crack", "hole"],
        "ok",
        ["crack", "hole"],
        0.5,
        indices=[5, 6, 7, 8],
    )
    assert [(r["index"], r["predicted"], r["outcome"]) for r in seg] == [
        (5, "ok", "correct"),
        (6, "hole", "false_reject"),
        (7, "crack", "correct"),
        (8, "ok", "escape"),
    ]
    ano = ev.anomaly_items(
        np.asarray([0.2, 0.6, 0.3]), np.asarray([False, False, True]), "good", 0.5, ["good"] * 2 + ["dent"]
    )
    assert [(r["actual"], r["predicted"], r["outcome"], r["label"]) for r in ano] == [
        ("good", "good", "correct", "good"),
        ("good", "NG", "false_reject", "good"),
        ("NG", "good", "escape", "dent"),
    ]


def test_every_confusion_cell_gets_overlays() -> None:
    probs, targets = _classify_case()
    records = ev.classify_items(probs, targets, ["ok", "scratch", "spot"], "ok", 0.5)
    chosen = set(ev.thumbnail_indices(records, per_cell=2))
    cells = {(r["actual"], r["predicted"]) for r in records}
    for cell in cells:
        assert any((records[i]["actual"], records[i]["predicted"]) == cell for i in chosen), cell
    assert {r["index"] for r in ev.worst_misses(records)} <= chosen
    assert len(chosen) == len(ev.worst_misses(records)) + 2 * 3 + 0  # 3 diagonal cells of 2; misses all shown


def _colour(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(img.astype(int) - np.asarray(rgb)).max(axis=2) < tol).sum())


def test_overlays_draw_boxes_masks_heat_and_caption() -> None:
    image = np.full((48, 64, 3), 120, np.uint8)
    det = {"actual": "spot", "predicted": "scratch", "score": 0.8, "outcome": "misclassified",
           "boxes": [[20, 16, 44, 30, "scratch", 0.8]], "truth_boxes": [[4, 4, 14, 14, "spot"]]}  # fmt: skip
    out = np.asarray(ev.overlay_thumbnail(image, det))
    assert max(out.shape[:2]) == ev.THUMB_SIDE + 14 or out.shape[1] == ev.THUMB_SIDE  # enlarged to be readable
    assert _colour(out, (230, 30, 30)) > 100 and _colour(out, (0, 200, 0)) > 50  # predicted red, labelled green
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 10:40] = 1
    seg = {"actual": "crack", "predicted": "crack", "score": 0.9, "outcome": "correct"}
    plain = np.asarray(ev.overlay_thumbnail(image, seg))
    masked = np.asarray(ev.overlay_thumbnail(image, seg, pred_map=mask, truth_map=np.zeros_like(mask)))
    assert (np.abs(masked.astype(int) - plain.astype(int)).max(axis=2) > 30).sum() > 1000
    heat = np.zeros((48, 64))
    heat[:, 32:] = 1.0
    hot = np.asarray(ev.overlay_thumbnail(image, seg, heat=heat))
    assert hot[100, 150, 0] > hot[100, 30, 0] + 50  # the anomalous half is redder


def test_results_document_is_deterministic_and_complete(tmp_path: Path) -> None:
    probs, targets = _classify_case()
    classes = ["ok", "scratch", "spot"]
    metrics, plots = ev.classification_metrics(probs, targets, classes, "ok", 0.5)
    docs = []
    for _ in range(2):
        records = ev.classify_items(probs, targets, classes, "ok", 0.5)
        doc = ev.results_document("classify", classes, "ok", 0.5, "test", records, metrics, plots["threshold_curve"])
        ev.write_json(tmp_path / "p.json", doc)
        docs.append((tmp_path / "p.json").read_bytes())
    assert docs[0] == docs[1]
    doc = json.loads(docs[0])
    assert doc["worst_misses"] == [22, 21, 20, 11, 10, 29]
    assert doc["operating_point"]["threshold"] == 0.5
    assert doc["operating_point"]["ng_recall"] == pytest.approx(15 / 18, abs=1e-6)
    assert len(doc["operating_point"]["curve"]) == 101
    assert not any(k.startswith("per_class.") for k in doc["metrics"])
    no_ok = ev.results_document("classify", classes, None, None, "test", records, {"accuracy": 0.8}, [])
    assert no_ok["operating_point"] is None


def _anomaly_bundle(path: Path) -> Path:
    import torch

    from crux.kinds import get_kind
    from crux.postprocess import InputSpec
    from crux.train.models.bundle import save_bundle
    from crux.train.models.segmenter import Segmenter, SegmenterConfig

    torch.manual_seed(0)
    classes = ["ok", "ng"]
    cfg = SegmenterConfig(num_outputs=2, in_channels=1, width=4, depth=(1, 1), decoder_width=8)
    model = Segmenter(cfg).eval()
    with torch.no_grad():
        model.head[-1].bias.copy_(torch.tensor([0.0, 0.2]))
    meta = {"kind": "anomaly", "classes": classes, "ok_class": "ok", "input": InputSpec(32, 1).to_dict(),
            "model_config": cfg.to_dict(), "detect": None, "anomaly": get_kind("anomaly").decode_spec(classes, "ok"),
            "info": {"monitor": "test", "best_val": None, "epochs": 0, "seed": 0}}  # fmt: skip
    save_bundle(path, model, meta)
    return path


@pytest.mark.slow  # a real (tiny) model over a prepared split, twice: 3-9 s per kind on 2 shared cores
@pytest.mark.parametrize("kind", ["classify", "detect", "segment", "anomaly"])
def test_evaluate_writes_records_that_agree_with_its_metrics(tmp_path: Path, kind: str) -> None:
    from edge_support import prepared_dataset, tiny_bundle

    from crux.train.pipeline import evaluate
    from crux.train.recipe import EvaluateConfig

    prepared = prepared_dataset(tmp_path / "data", kind)
    bundle = (
        _anomaly_bundle(tmp_path / "b" / "model.pt")
        if kind == "anomaly"
        else tiny_bundle(tmp_path / "b" / "model.pt", kind)
    )
    cfg = EvaluateConfig(score_threshold=0.3, max_detections=5)
    outs = [tmp_path / "m1", tmp_path / "m2"]
    metrics = [evaluate(bundle.parent, prepared, out, cfg) for out in outs]
    doc = json.loads((outs[0] / "predictions.json").read_text())
    test_items = [json.loads(x) for x in (prepared / "test.jsonl").read_text().splitlines()]
    assert len(doc["items"]) == len(test_items)
    for r in doc["items"]:
        assert r["image"] == test_items[r["index"]]["image"] and r["id"] == test_items[r["index"]]["sha256"][:12]
        assert r["outcome"] in ev.OUTCOMES
    if "confusion_matrix" in metrics[0]:
        assert doc["confusion_matrix"] == metrics[0]["confusion_matrix"]
    if "inspection" in metrics[0]:
        ins = metrics[0]["inspection"]
        n_ng = sum(1 for r in doc["items"] if r["actual"] != doc["ok_class"])
        escapes = sum(1 for r in doc["items"] if r["outcome"] == "escape")
        assert ins["ng_recall"] == pytest.approx((n_ng - escapes) / n_ng, abs=1e-6)
        assert doc["operating_point"]["threshold"] == ins["threshold"]
    thumbs = sorted(p.name for p in (outs[0] / "results").iterdir())
    assert thumbs and thumbs == sorted(r["thumb"] for r in doc["items"] if "thumb" in r)
    # Deterministic: a second run writes the same bytes (DVC sees no change).
    assert (outs[0] / "predictions.json").read_bytes() == (outs[1] / "predictions.json").read_bytes()
    for name in thumbs:
        assert (outs[0] / "results" / name).read_bytes() == (outs[1] / "results" / name).read_bytes()
