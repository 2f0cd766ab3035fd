"""Tiny models, datasets and exports for the export / publish / edge tests (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

IMAGE_SIZE = 32


def tiny_bundle(path: Path, kind: str, seed: int = 0, image_size: int = IMAGE_SIZE) -> Path:
    """A randomly initialised, tiny crux model bundle (crux.train.models) of the synthetic dataset's classes."""
    import torch

    from crux.postprocess import DetectSpec, InputSpec
    from crux.train.models.bundle import save_bundle

    torch.manual_seed(seed)
    if kind == "classify":
        from crux.train.models.classifier import Classifier, ClassifierConfig

        classes, ok_class = ["ok", "scratch", "spot"], "ok"
        cfg: Any = ClassifierConfig(num_classes=3, in_channels=1, width=4, depth=(1, 1))
        model: Any = Classifier(cfg)
        with torch.no_grad():
            model.fc.weight.normal_(0, 2.0)  # spread the logits: distinct top-1 classes across images
        detect = None
    elif kind == "segment":
        from crux.train.models.segmenter import Segmenter, SegmenterConfig

        classes, ok_class = ["ok", "scratch", "spot"], "ok"
        cfg = SegmenterConfig(num_outputs=3, in_channels=1, width=4, depth=(1, 1), decoder_width=8)
        model = Segmenter(cfg)
        with torch.no_grad():
            model.head[-1].bias.copy_(torch.tensor([0.0, 0.3, 0.0]))  # untrained: some pixels defective, not all
            model.head[-1].weight.normal_(0, 1.0)
        detect = None
    else:
        from crux.train.models.detector import Detector, DetectorConfig

        classes, ok_class = ["scratch", "spot"], None
        cfg = DetectorConfig(num_classes=2, in_channels=1, width=4, depth=(1, 1, 1), neck_width=8, strides=(4, 8, 16))
        model = Detector(cfg)
        with torch.no_grad():
            model.cls_pred.bias.normal_(0, 1.0)  # untrained prior would score every box ~0.07: give it some boxes
        detect = DetectSpec(cfg.strides, 2, max_detections=20).to_dict()
    model.eval()
    meta = {
        "kind": kind,
        "classes": classes,
        "ok_class": ok_class,
        "input": InputSpec(image_size, 1).to_dict(),
        "model_config": cfg.to_dict(),
        "detect": detect,
        **({"segment": {"defect_classes": ["scratch", "spot"]}} if kind == "segment" else {}),
        "info": {"monitor": "test", "best_val": None, "epochs": 0, "seed": seed},
    }
    save_bundle(path, model, meta)
    return path


def prepared_dataset(root: Path, kind: str, image_size: int = IMAGE_SIZE) -> Path:
    """A synthetic dataset version, prepared (train/val/test split lists) at `root/prepared`."""
    from crux.data.synthetic_versions import write_synthetic_dataset
    from crux.train.prepare import prepare
    from crux.train.recipe import DataConfig

    data = write_synthetic_dataset(root, kind, n_per_split=(12, 6, 6), size=48, seed=1)
    prepare(data, root / "prepared", DataConfig(kind=kind, image_size=image_size, channels=1))
    return root / "prepared"


# Test metrics that clear the kinds' default gate floors (crux.kinds `gate_*`), so tests about publishing and the
# edge publish; tests about the gate pass their own. Given metrics are merged over these.
HEALTHY_METRICS: dict[str, dict[str, Any]] = {
    "classify": {"accuracy": 0.97, "macro_f1": 0.97, "inspection": {"ng_recall": 0.95, "false_reject_rate": 0.02}},
    "detect": {"map50": 0.6},
    "segment": {"miou": 0.6, "accuracy": 0.97, "inspection": {"ng_recall": 0.95, "false_reject_rate": 0.02}},
}


def exported(
    root: Path,
    kind: str,
    seed: int = 0,
    metrics: dict[str, Any] | None = None,
    exporter: str = "torchscript",
    healthy: bool = True,
    name: str | None = None,
) -> Path:
    """Bundle → `crux export` folder (torchscript exporter by default: ~0.3 s instead of ~5 s). The card's metrics
    are `metrics` over HEALTHY_METRICS, or `metrics` alone with healthy=False."""
    from crux.ship.export import ExportConfig, export

    if healthy:
        base = {k: dict(v) if isinstance(v, dict) else v for k, v in HEALTHY_METRICS[kind].items()}
        for key, value in (metrics or {}).items():
            base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        metrics = base
    bundle = tiny_bundle(root / f"bundle-{kind}-{seed}" / "model.pt", kind, seed)
    out = root / (name or f"export-{kind}-{seed}")
    export(bundle, out, ExportConfig(exporter=exporter, parity_images=4, box_threshold=0.3), metrics=metrics)
    return out


def onnx_graph_model(
    path: Path, channels: int, image_size: int, logits: list[float], *, nan_above: float | None = None
) -> Path:
    """A hand-built ONNX classifier (onnx.helper, no torch): constant `logits` for every frame, or NaN for frames whose
    mean normalised pixel is above `nan_above` (bright frames) — a model that passes a check on one image and outputs
    NaN on others, as a real network with a broken layer can."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.asarray([logits], np.float32), "logits"),
        numpy_helper.from_array(np.asarray(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.asarray([1], np.int64), "axis1"),
    ]
    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2, 3], keepdims=0)]
    if nan_above is None:
        nodes.append(helper.make_node("Mul", ["mean", "zero"], ["poison"]))  # 0 for every frame
    else:
        # sqrt(nan_above - mean) * 0: 0 for darker frames, NaN (sqrt of a negative) for brighter ones.
        inits.append(numpy_helper.from_array(np.asarray(nan_above, np.float32), "limit"))
        nodes += [
            helper.make_node("Sub", ["limit", "mean"], ["room"]),
            helper.make_node("Sqrt", ["room"], ["root"]),
            helper.make_node("Mul", ["root", "zero"], ["poison"]),
        ]
    nodes += [
        helper.make_node("Unsqueeze", ["poison", "axis1"], ["column"]),
        helper.make_node("Add", ["column", "logits"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "crux-test",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, image_size, image_size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", len(logits)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def with_model(like: Path, dest: Path, model: bytes | Path, changes: dict[str, Any] | None = None) -> Path:
    """A copy of the export folder `like` whose model.onnx is `model` (bytes or a file) and whose card's onnx entry
    vouches for it (sha256, size), with `changes` set on top (dotted keys: {"input.std": 0})."""
    import hashlib
    import json

    dest.mkdir(parents=True, exist_ok=True)
    data = model.read_bytes() if isinstance(model, Path) else model
    (dest / "model.onnx").write_bytes(data)
    card = json.loads((like / "card.json").read_text())
    card["onnx"] = {**card["onnx"], "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    card.pop("quantized", None)
    for key, value in (changes or {}).items():
        node = card
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    (dest / "card.json").write_text(json.dumps(card))
    return dest
