"""Models: shapes, raw-output layout matching crux.postprocess, initial weights, kind registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crux.kinds import get_kind
from crux.postprocess import anchor_points
from crux.train.models.classifier import Classifier, ClassifierConfig
from crux.train.models.common import load_initial_weights
from crux.train.models.detector import DetectionLoss, Detector, DetectorConfig
from crux.train.recipe import ModelParams

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
    code = f"import sys, crux.kinds, crux.train.recipe; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_torch_normalise_is_bit_identical_to_the_edge() -> None:
    import numpy as np

    from crux.postprocess import InputSpec
    from crux.postprocess import normalise as np_normalise
    from crux.train.torch_dataset import normalise

    spec = InputSpec(image_size=16, channels=3, mean=0.485, std=0.229)
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ours = normalise(torch.from_numpy(image.transpose(2, 0, 1).copy())[None], spec)[0].numpy()
    assert np.array_equal(ours, np_normalise(image, spec))


def test_ramped_ema_follows_early_then_settles_at_decay() -> None:
    from torch.optim.swa_utils import AveragedModel

    from crux.train.pipeline import ramped_ema

    model = torch.nn.Linear(1, 1, bias=False)
    average = AveragedModel(model, avg_fn=ramped_ema(0.9), use_buffers=True)
    expected = float(model.weight)
    for step in range(1, 40):
        with torch.no_grad():
            model.weight.fill_(float(step))
        average.update_parameters(model)
        # The first update copies; then decay min(0.9, (1 + n) / (10 + n)) with n updates before this one.
        n = step - 1
        d = 0.0 if n == 0 else min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * step
        assert float(average.module.weight) == pytest.approx(expected, rel=1e-5)
    # After 39 steps of a fixed 0.9 the initial weight would still weigh 0.9^39 ≈ 1.6%; here it is gone.
    assert float(average.module.weight) > 30


def test_detection_collate_flattens_boxes_and_split_restores_them() -> None:
    import numpy as np

    from crux.train.torch_dataset import collate, split_targets

    def item(i: int, n: int) -> dict:
        boxes = np.arange(n * 4, dtype=np.float32).reshape(n, 4) + i
        labels = np.full(n, i, np.int64)
        return {
            "index": i,
            "size": (8, 8),
            "image": torch.zeros(1, 8, 8, dtype=torch.uint8),
            "boxes": boxes,
            "labels": labels,
            "orig_boxes": boxes,
            "orig_labels": labels,
        }

    batch = collate([item(0, 2), item(1, 0), item(2, 3)])
    # Three tensors for the whole batch, whatever the box count: each tensor a loader worker returns costs IPC.
    assert batch["boxes"].shape == (5, 4) and batch["box_labels"].shape == (5,) and batch["box_counts"] == [2, 0, 3]
    targets = split_targets(batch)
    assert [t["boxes"].shape[0] for t in targets] == [2, 0, 3]
    assert torch.equal(targets[2]["boxes"], torch.from_numpy(item(2, 3)["boxes"]))
    assert targets[2]["labels"].tolist() == [2, 2, 2]


def test_avgmax_pool_keeps_a_one_cell_defect_visible() -> None:
    cfg = ClassifierConfig(num_classes=2, width=8, depth=(1, 1), pool="avgmax")
    model = Classifier(cfg).eval()
    assert model.fc.in_features == 2 * 16
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 2)
    assert ClassifierConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "pool"}).pool == "avg"
    with pytest.raises(ValueError, match="pool 'gem'"):
        ClassifierConfig(num_classes=2, pool="gem")
