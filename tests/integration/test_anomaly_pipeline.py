"""The anomaly kind end to end on tiny synthetic textures: OK-only training on synthetic anomalies separates the
planted defects of the val/test splits; the threshold is calibrated on val OK scores and shipped; ONNX (+ INT8)
parity; the `crux predict` contract (OK/NG, anomaly score, regions) and the edge's verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crux.data.synthetic_versions import write_synthetic_dataset
from crux.train.recipe import load_pipeline_config, quick_profile

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import os

    import torch

    from crux.train.pipeline import evaluate, prepare, train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("anomaly")
    cwd = os.getcwd()
    os.chdir(root)  # dvclive looks for a repo from the working directory
    try:
        # The quick profile's tiny model, but enough steps (10 epochs of 3 batches, ~10 s) to learn the textures.
        cfg = load_pipeline_config(
            quick_profile({"augment": {"transforms": []}, "train": {"epochs": 10, "max_steps": -1, "lr": 0.003}})
        )
        # Train: 48 OK parts; val and test: 8 OK + 8 NG (a bright scratch or a dark spot each) with masks.
        data = write_synthetic_dataset(root, "anomaly", (48, 16, 16))
        prepare(data, root / "prepared", cfg.data)
        train(root / "prepared", root / "model", cfg)
        evaluate(root / "model", root / "prepared", root / "eval", cfg.evaluate)
    finally:
        os.chdir(cwd)
    return root


def test_ok_only_training_separates_planted_defects(trained: Path) -> None:
    summary = json.loads((trained / "model" / "train.json").read_text())
    assert summary["monitor"] == "val/auroc" and summary["best_val"] >= 0.9
    metrics = json.loads((trained / "eval" / "metrics.json").read_text())
    assert metrics["kind"] == "anomaly" and metrics["auroc_source"] == "ng"
    assert metrics["auroc"] >= 0.9, metrics
    assert metrics["pixel_auroc"] >= 0.8 and metrics["n_regions"] == 8
    inspection = metrics["inspection"]
    assert inspection["n_ok"] == 8 and inspection["n_ng"] == 8
    # Calibrated on val OK scores at max_false_reject (0.02 of 8 OK parts: none may be rejected) and shipped.
    calibration = metrics["calibration"]
    assert calibration["split"] == "val" and calibration["false_reject_rate"] == 0.0
    post = json.loads((trained / "eval" / "postprocess.json").read_text())
    assert post["ng_threshold"] == pytest.approx(calibration["threshold"], abs=1e-6)
    assert post["anomaly"]["defect_classes"] == ["ng"]
    assert post["anomaly"]["pixel_threshold"] == pytest.approx(post["ng_threshold"])
    plots = trained / "eval" / "plots"
    for name in ("worst_misses.png", "threshold_curve.json", "score_histogram.json"):
        assert (plots / name).is_file(), name
    histogram = json.loads((plots / "score_histogram.json").read_text())
    assert sum(r["ok"] for r in histogram) == 8 and sum(r["ng"] for r in histogram) == 8


def test_training_never_sees_ng_items(trained: Path) -> None:
    from crux.postprocess import InputSpec
    from crux.train.datamodule import InspectionDataModule

    # Move an NG item into the train split: the anomaly kind's training set still holds OK items only.
    prepared = trained / "prepared"
    ng = next(json.loads(line) for line in (prepared / "val.jsonl").read_text().splitlines() if '"is_ng": true' in line)
    moved = trained / "prepared_moved"
    moved.mkdir(exist_ok=True)
    for f in prepared.iterdir():
        (moved / f.name).write_text(f.read_text())
    with (moved / "train.jsonl").open("a") as out:
        out.write(json.dumps(ng) + "\n")
    text = (moved / "train.jsonl").read_text().replace('"image": "../data', f'"image": "{trained}/data')
    (moved / "train.jsonl").write_text(text.replace('"mask": "../data', f'"mask": "{trained}/data'))
    dm = InspectionDataModule(moved, "anomaly", InputSpec(64, 1), None, 8, 0, 0)
    dm.setup()
    assert len(dm.datasets["train"]) == 48 and not any(i["is_ng"] for i in dm.datasets["train"].items)
    # train.anomaly_defect_crops: that NG item's labelled region is the one real crop to paste.
    ((crop, crop_mask),) = dm.defect_crops()
    assert crop.shape[0] == 1 and crop_mask.shape == crop.shape[1:] and bool(crop_mask.any())


def test_export_parity_and_predict_contract(trained: Path) -> None:
    from crux.edge.runtime import EdgeConfig, decide
    from crux.inference import SEGMENT_KEYS, OnnxModel, contract_record
    from crux.ship.export import ExportConfig, evaluate_onnx, export

    post = json.loads((trained / "eval" / "postprocess.json").read_text())
    metrics = json.loads((trained / "eval" / "metrics.json").read_text())
    card = export(
        trained / "model",
        trained / "export",
        ExportConfig(quantize=True, calibration_images=8, parity_images=8),
        prepared_dir=trained / "prepared",
        metrics=metrics,
        postprocess=post,
    )
    assert card["kind"] == "anomaly" and card["parity"]["passed"] and card["parity"]["pixel_agreement"] >= 0.999
    assert card["postprocess"]["segment"]["defect_classes"] == ["ng"]
    assert card["postprocess"]["ng_threshold"] == pytest.approx(metrics["calibration"]["threshold"], abs=1e-6)
    assert card["metrics"]["calibration"]["split"] == "val"
    assert card["quantized"]["test"]["metric"] == "auroc"

    model = OnnxModel.from_dir(trained / "export")
    onnx_metrics = evaluate_onnx(model, trained / "prepared")
    assert onnx_metrics["auroc"] == pytest.approx(metrics["auroc"], abs=0.02)

    test = [json.loads(line) for line in (trained / "prepared" / "test.jsonl").read_text().splitlines()]
    records = []
    for item in test:
        result = model.predict_file(trained / "prepared" / item["image"])
        record = contract_record(item["image"], result, 1)
        assert tuple(record) == SEGMENT_KEYS and record["label"] in {"ok", "ng"} and record["boxes"] == []
        anomaly_score = record["scores"]["ng"]
        assert record["label"] == ("ng" if anomaly_score >= model.ng_threshold else "ok")
        if record["label"] == "ng":
            assert record["regions"], "a rejected part shows where"
            assert all(r["label"] == "ng" and r["mask"]["size"] == [64, 64] for r in record["regions"])
        verdict = decide(model, result, EdgeConfig())
        assert verdict.verdict == ("NG" if record["label"] == "ng" else "OK")
        records.append((item["is_ng"], anomaly_score))
    scores_ng = [s for ng, s in records if ng]
    scores_ok = [s for ng, s in records if not ng]
    assert np.median(scores_ng) > np.median(scores_ok)
