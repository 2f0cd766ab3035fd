"""`crux export`: one self-contained ONNX file, parity with torch on validation images, INT8, the model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from edge_support import prepared_dataset, tiny_bundle

from crux.config import ConfigError, from_mapping
from crux.edge.predict import OnnxModel
from crux.ship.export import ExportConfig, ExportError, dataset_version, evaluate_onnx, export, git_revision

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    return {kind: prepared_dataset(root / kind, kind) for kind in ("classify", "detect")}


@pytest.mark.parametrize("kind", ["classify", "detect"])
def test_dynamo_export_parity_on_validation_images(tmp_path: Path, prepared: dict[str, Path], kind: str) -> None:
    bundle = tiny_bundle(tmp_path / "model.pt", kind)
    out = tmp_path / "out"
    card = export(
        bundle,
        out,
        ExportConfig(exporter="dynamo", parity_images=6),
        prepared_dir=prepared[kind],
        metrics={"macro_f1": 0.5},
        lineage={"dataset_version": "abc.dir", "git_revision": "deadbeef"},
    )
    # One file, no external data, full checker, dynamic batch.
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "model.onnx"]
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    proto = onnx.load(str(out / "model.onnx"))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    parity = card["parity"]
    assert parity["passed"] and parity["source"] == "val split" and parity["images"] == 6
    assert parity["max_abs_diff"] <= 1e-4
    if kind == "classify":
        assert parity["top1_mismatches"] == 0
    else:
        assert parity["boxes"] > 0 and parity["unmatched_boxes"] == 0
    # The card on disk is what export returned and names everything the edge needs.
    assert json.loads((out / "card.json").read_text()) == card
    assert card["kind"] == kind and card["input"]["image_size"] == 32 and card["input"]["channels"] == 1
    assert card["onnx"]["opset"] >= 18 and card["onnx"]["exporter"] == "dynamo"
    assert card["metrics"] == {"macro_f1": 0.5}
    assert card["lineage"]["dataset_version"] == "abc.dir" and card["lineage"]["git_revision"] == "deadbeef"
    assert card["created_at"].endswith("Z")
    if kind == "detect":
        assert card["postprocess"]["detect"]["strides"] == [4, 8, 16]


def test_onnx_matches_torch_at_batch_sizes(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "model.pt", "detect", seed=3)
    export(bundle, tmp_path / "out", ExportConfig(exporter="torchscript", parity_images=4))
    from crux.train.models.bundle import load_bundle

    model, _ = load_bundle(bundle)
    onnx_model = OnnxModel.from_dir(tmp_path / "out")
    x = np.random.default_rng(0).normal(0, 1, (5, 1, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(onnx_model.run_raw(x) - ref).max() <= 1e-4
    assert np.abs(onnx_model.run_raw(x[:1]) - ref[:1]).max() <= 1e-4


def test_parity_failure_leaves_no_model(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "model.pt", "classify")
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="parity failed"):
        export(bundle, out, ExportConfig(exporter="torchscript", parity_atol=1e-15))
    assert not (out / "model.onnx").exists() and not (out / "card.json").exists()


def test_int8_quantisation_reports_test_accuracy_change(tmp_path: Path, prepared: dict[str, Path]) -> None:
    bundle = tiny_bundle(tmp_path / "model.pt", "classify")
    card = export(
        bundle, tmp_path / "out", ExportConfig(exporter="torchscript", quantize=True), prepared_dir=prepared["classify"]
    )
    q = card["quantized"]
    assert (tmp_path / "out" / "model.int8.onnx").is_file() and q["calibration_images"] == 12
    assert q["test"]["metric"] == "macro_f1" and q["test"]["change"] == pytest.approx(
        q["test"]["int8"] - q["test"]["fp32"], abs=1e-5
    )
    # The INT8 model runs through the same edge code path.
    int8 = OnnxModel(tmp_path / "out" / "model.int8.onnx", card)
    metrics = evaluate_onnx(int8, prepared["classify"], "test")
    assert metrics["n_images"] == 6 and metrics["macro_f1"] == q["test"]["int8"]


def test_quantisation_needs_train_images(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "model.pt", "classify")
    with pytest.raises(ExportError, match="calibration"):
        export(bundle, tmp_path / "out", ExportConfig(exporter="torchscript", quantize=True))


def test_evaluate_onnx_detection(tmp_path: Path, prepared: dict[str, Path]) -> None:
    bundle = tiny_bundle(tmp_path / "model.pt", "detect")
    export(bundle, tmp_path / "out", ExportConfig(exporter="torchscript"))
    metrics = evaluate_onnx(OnnxModel.from_dir(tmp_path / "out"), prepared["detect"], "test")
    assert metrics["kind"] == "detect" and metrics["n_images"] == 6 and 0.0 <= metrics["map50"] <= 1.0


def test_config_validation_and_lineage_helpers(tmp_path: Path) -> None:
    assert from_mapping(ExportConfig, {"quantize": True}, "export").quantize
    with pytest.raises(ConfigError, match="exporter"):
        from_mapping(ExportConfig, {"exporter": "tflite"}, "export")
    with pytest.raises(ConfigError, match="unknown"):
        from_mapping(ExportConfig, {"atol": 1}, "export")
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 0123abcd.dir\n  size: 10\n  nfiles: 2\n  path: data\n")
    assert dataset_version(tmp_path / "data.dvc") == "0123abcd.dir"
    assert dataset_version(tmp_path / "missing.dvc") is None
    assert git_revision(tmp_path) is None
    rev = git_revision(Path(__file__).resolve().parents[2])
    assert rev is None or len(rev.split("-")[0]) == 40


def test_tta_views_are_the_group_the_generators_span() -> None:
    from crux.ship.export import tta_views

    assert tta_views([]) == [(0, False)]
    assert sorted(tta_views(["hflip"])) == [(0, False), (0, True)]
    assert sorted(tta_views(["vflip"])) == [(0, False), (2, True)]
    assert sorted(tta_views(["rot90"])) == [(0, False), (1, False), (2, False), (3, False)]
    assert len(tta_views(["hflip", "vflip"])) == 4  # flips and the 180° turn
    assert len(tta_views(["hflip", "vflip", "rot90"])) == len(set(tta_views(["hflip", "rot90"]))) == 8
    with pytest.raises(ConfigError, match="tta"):
        from_mapping(ExportConfig, {"tta": ["hflip", "shear"]}, "export")


def test_tta_is_baked_into_the_onnx_graph_and_measured(tmp_path: Path, prepared: dict[str, Path]) -> None:
    bundle = tiny_bundle(tmp_path / "model.pt", "classify")
    cfg = ExportConfig(exporter="torchscript", parity_images=4, tta=("hflip", "vflip", "rot90"))
    card = export(bundle, tmp_path / "out", cfg, prepared_dir=prepared["classify"], metrics={"macro_f1": 0.5})
    assert card["parity"]["passed"] and len(card["tta"]["views"]) == 8
    assert card["tta"]["tta_ms"] > 0 and card["tta"]["plain_ms"] > 0
    # The card's metrics are re-measured on the shipped graph (not the torch model's without TTA).
    assert card["metrics"]["tta_views"] == 8 and card["metrics"]["accuracy"] == card["tta"]["test"]["tta"]["accuracy"]
    model = OnnxModel.from_dir(tmp_path / "out")
    x = np.random.default_rng(0).normal(size=(1, 1, 32, 32)).astype(np.float32)
    views = [x, x[..., ::-1], x[..., ::-1, :], np.rot90(x, 1, (2, 3)), np.rot90(x, 3, (2, 3)).swapaxes(2, 3)]
    outs = [model.run_raw(np.ascontiguousarray(v)) for v in views]
    for out in outs[1:]:  # the averaged model is invariant under every flip and rotation
        np.testing.assert_allclose(out, outs[0], atol=1e-5)
    with pytest.raises(ExportError, match="classification only"):
        export(tiny_bundle(tmp_path / "det.pt", "detect"), tmp_path / "det", cfg, prepared_dir=prepared["detect"])
