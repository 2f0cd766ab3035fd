"""Models: shapes, raw-output layout matching crux.postprocess, initial weights, kind registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crux.kinds import get_kind
from crux.models.classifier import Classifier, ClassifierConfig
from crux.models.common import load_initial_weights
from crux.models.detector import DetectionLoss, Detector, DetectorConfig
from crux.postprocess import anchor_points
from crux.training.config import ModelParams

torch.set_num_threads(1)


@pytest.mark.parametrize("channels", [1, 3])
def test_classifier_logits_shape(channels: int) -> None:
    model = Classifier(ClassifierConfig(num_classes=4, in_channels=channels, width=8, depth=(1, 2)))
    assert model(torch.zeros(2, channels, 64, 64)).shape == (2, 4)


@pytest.mark.parametrize("size", [64, 96, 200])
def test_detector_raw_output_matches_anchor_points(size: int) -> None:
    cfg = DetectorConfig(num_classes=3, in_channels=1, width=8, depth=(1, 1, 1, 1), neck_width=16, strides=(8, 16, 32))
    model = Detector(cfg).eval()
    raw = model(torch.zeros(2, 1, size, size))
    points, _ = anchor_points(size, cfg.strides)
    assert raw.shape == (2, points.shape[0], 5 + 3)
    assert (raw[..., :4] >= 0).all()  # distances


def test_detector_rejects_missing_stride() -> None:
    with pytest.raises(ValueError, match="strides"):
        DetectorConfig(num_classes=1, depth=(1, 1), strides=(8, 16))


def test_detection_loss_trains_towards_a_box() -> None:
    torch.manual_seed(0)
    cfg = DetectorConfig(num_classes=2, width=8, depth=(1, 1, 1), neck_width=16, strides=(8, 16))
    model = Detector(cfg)
    loss_fn = DetectionLoss(64, cfg.strides, 2)
    x = torch.randn(2, 1, 64, 64)
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    cls, _ = loss_fn.assign(targets[0]["boxes"], targets[0]["labels"])
    assert (cls == 1).sum() > 0 and (cls == 2).sum() > 0  # positives and background
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(15):
        loss = loss_fn(model(x), targets)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_initial_weights_skip_mismatched_heads(tmp_path: Path) -> None:
    src = Classifier(ClassifierConfig(num_classes=3, width=8, depth=(1, 1)))
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = Classifier(ClassifierConfig(num_classes=5, width=8, depth=(1, 1)))
    report = load_initial_weights(dst, path)
    assert report["skipped"] == ["fc.bias", "fc.weight"]
    assert torch.equal(dst.backbone.stem[0].weight, src.backbone.stem[0].weight)
    with pytest.raises(FileNotFoundError):
        load_initial_weights(dst, tmp_path / "missing.pt")


def test_kind_registry_builds_models() -> None:
    params = ModelParams(width=8, depth=(1, 1, 1), neck_width=16, strides=(8, 16))
    for name, expected in (("classify", Classifier), ("detect", Detector)):
        kind = get_kind(name)
        model = kind.build_model(kind.model_config(params, num_classes=2, in_channels=1))
        assert isinstance(model, expected)
    assert get_kind("classify").monitor == "macro_f1" and get_kind("detect").monitor == "map50"


def test_kinds_import_stays_light() -> None:
    heavy = "('torch', 'pytorch_lightning', 'albumentations')"
    code = f"import sys, crux.kinds, crux.training.config; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_torch_normalise_is_bit_identical_to_the_edge() -> None:
    import numpy as np

    from crux.postprocess import InputSpec
    from crux.postprocess import normalise as np_normalise
    from crux.training.dataset import normalise

    spec = InputSpec(image_size=16, channels=3, mean=0.485, std=0.229)
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ours = normalise(torch.from_numpy(image.transpose(2, 0, 1).copy())[None], spec)[0].numpy()
    assert np.array_equal(ours, np_normalise(image, spec))
