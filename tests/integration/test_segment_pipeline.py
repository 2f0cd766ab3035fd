"""The segment kind end to end on tiny synthetic tiles: prepare → train (quick profile) → evaluate → ONNX export with
pixel parity → `crux predict` contract with regions → the edge's verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crux.data.synthetic_versions import write_synthetic_dataset
from crux.train.recipe import load_pipeline_config, quick_profile

pytestmark = pytest.mark.integration

AUGMENT = [
    {"name": "HorizontalFlip", "args": {"p": 0.5}},
    {"name": "RandomRotate90", "args": {"p": 0.5}},
    {"name": "RandomBrightnessContrast", "args": {"p": 0.5}},
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import os

    import torch

    from crux.train.pipeline import evaluate, prepare, train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("segment")
    cwd = os.getcwd()
    os.chdir(root)  # dvclive looks for a repo from the working directory
    try:
        cfg = load_pipeline_config(quick_profile({"augment": {"transforms": AUGMENT}}))
        data = write_synthetic_dataset(root, "segment")
        prepare(data, root / "prepared", cfg.data)
        train(root / "prepared", root / "model", cfg)
        evaluate(root / "model", root / "prepared", root / "eval", cfg.evaluate)
    finally:
        os.chdir(cwd)
    return root


def test_prepare_keeps_masks_and_verdicts(trained: Path) -> None:
    prepared = json.loads((trained / "prepared" / "prepared.json").read_text())
    assert prepared["kind"] == "segment" and prepared["classes"] == ["ok", "scratch", "spot"]
    item = json.loads((trained / "prepared" / "train.jsonl").read_text().splitlines()[0])
    assert (trained / "prepared" / item["mask"]).is_file() and isinstance(item["is_ng"], bool)


def test_training_and_evaluation_report_pixels_and_verdicts(trained: Path) -> None:
    summary = json.loads((trained / "model" / "train.json").read_text())
    assert summary["monitor"] == "val/miou" and summary["global_step"] == 3
    metrics = json.loads((trained / "eval" / "metrics.json").read_text())
    assert metrics["kind"] == "segment" and metrics["n_images"] == 8
    assert set(metrics["pixel"]) == {"background", "scratch", "spot"}
    assert 0.0 <= metrics["miou"] <= 1.0 and 0.0 <= metrics["accuracy"] <= 1.0
    inspection = metrics["inspection"]
    assert inspection["n_ng"] + inspection["n_ok"] == 8
    post = json.loads((trained / "eval" / "postprocess.json").read_text())
    assert post["segment"]["defect_classes"] == ["scratch", "spot"]
    assert post["ng_threshold"] == pytest.approx(inspection["threshold"], abs=1e-6)  # chosen on val, shipped
    plots = trained / "eval" / "plots"
    for name in ("worst_misses.png", "confusion_matrix.png", "threshold_curve.json"):
        assert (plots / name).is_file(), name


def test_export_parity_card_and_predict_contract(trained: Path) -> None:
    from pycocotools import mask as coco

    from crux.edge.predict import SEGMENT_KEYS, OnnxModel, contract_record
    from crux.edge.runtime import EdgeConfig, decide
    from crux.ship.export import ExportConfig, export

    post = json.loads((trained / "eval" / "postprocess.json").read_text())
    card = export(
        trained / "model",
        trained / "export",
        ExportConfig(quantize=True, calibration_images=8, parity_images=8),
        prepared_dir=trained / "prepared",
        postprocess=post,
    )
    assert card["parity"]["passed"] and card["parity"]["pixel_agreement"] >= 0.999
    assert card["postprocess"]["segment"]["defect_classes"] == ["scratch", "spot"]
    assert card["output"]["layout"].startswith("(B, 1 + defect classes")
    assert card["quantized"]["test"]["metric"] == "miou"

    model = OnnxModel.from_dir(trained / "export")
    # A confident synthetic logit map through the real decoding: one scratch region.
    raw = np.zeros((1, 3, 64, 64), np.float32)
    raw[0, 0] = 8.0
    raw[0, 1, 10:20, 5:40] = 16.0
    result = model.results_from_raw(raw, [(128, 64)])[0]
    record = contract_record("x.png", result, 3)
    assert tuple(record) == SEGMENT_KEYS
    assert record["label"] == "scratch" and record["score"] > 0.99 and record["boxes"] == []
    assert set(record["scores"]) == {"ok", "scratch", "spot"}
    (region,) = record["regions"]
    assert region["label"] == "scratch" and region["xyxy"] == [10, 10, 80, 20] and region["area"] == 700
    decoded = coco.decode({"size": region["mask"]["size"], "counts": region["mask"]["counts"].encode()})
    assert decoded.shape == (64, 128) and int(decoded.sum()) == 700
    assert decide(model, result, EdgeConfig()).verdict == "NG"

    # A real image through the whole path gives a well-formed record too.
    image = next((trained / "data" / "images").rglob("*.png"))
    real = contract_record(str(image), model.predict_file(image), None)
    assert tuple(real) == SEGMENT_KEYS and real["label"] in {"ok", "scratch", "spot"}
