"""Per-kind training logic (model, loss, raw outputs → predictions → metrics), found through `crux.kinds`.

The LightningModule stays kind-agnostic: it calls a task's `loss`, `collect` and `metrics`. `collect` post-processes
each batch's raw outputs with `crux.postprocess` right away, so validation holds predictions, not raw tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crux.evaluation import classification_metrics, detection_metrics
from crux.postprocess import DetectSpec, InputSpec, postprocess_classify, postprocess_detect_batch
from crux.training.config import ModelParams
from crux.training.dataset import split_targets


class ClassifyTask:
    monitor = "macro_f1"

    def __init__(
        self, classes: Sequence[str], ok_class: str | None, spec: InputSpec, label_smoothing: float = 0.0
    ) -> None:
        self.classes = list(classes)
        self.ok_class = ok_class
        self.spec = spec
        self.label_smoothing = label_smoothing

    @staticmethod
    def model_config(params: ModelParams, num_classes: int, in_channels: int) -> dict[str, Any]:
        from crux.models.classifier import ClassifierConfig

        cfg = ClassifierConfig(num_classes, in_channels, params.width, tuple(params.depth), params.dropout, params.pool)
        return cfg.to_dict()

    @staticmethod
    def build_model(model_config: Mapping[str, Any]) -> nn.Module:
        from crux.models.classifier import Classifier, ClassifierConfig

        return Classifier(ClassifierConfig.from_dict(dict(model_config)))

    def loss(self, raw: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(raw.float(), batch["label"], label_smoothing=self.label_smoothing)}

    def new_state(self) -> dict[str, list[Any]]:
        return {"probs": [], "targets": []}

    def collect(self, state: dict[str, list[Any]], raw: torch.Tensor, batch: Mapping[str, Any]) -> None:
        state["probs"].append(postprocess_classify(raw.detach().float().cpu().numpy()))
        state["targets"].append(batch["label"].cpu().numpy())

    def metrics(
        self, state: dict[str, list[Any]], ng_threshold: float = 0.5, max_false_reject: float = 0.02
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        probs = np.concatenate(state["probs"]) if state["probs"] else np.zeros((0, len(self.classes)), np.float32)
        targets = np.concatenate(state["targets"]) if state["targets"] else np.zeros(0, np.int64)
        return classification_metrics(probs, targets, self.classes, self.ok_class, ng_threshold, max_false_reject)


class DetectTask:
    monitor = "map50"

    def __init__(self, classes: Sequence[str], ok_class: str | None, spec: InputSpec, detect: DetectSpec) -> None:
        self.classes = list(classes)
        self.ok_class = ok_class
        self.spec = spec
        self.detect = detect
        self._loss: nn.Module | None = None

    @staticmethod
    def model_config(params: ModelParams, num_classes: int, in_channels: int) -> dict[str, Any]:
        from crux.models.detector import DetectorConfig

        cfg = DetectorConfig(
            num_classes, in_channels, params.width, tuple(params.depth), params.neck_width, tuple(params.strides)
        )
        return cfg.to_dict()

    @staticmethod
    def build_model(model_config: Mapping[str, Any]) -> nn.Module:
        from crux.models.detector import Detector, DetectorConfig

        return Detector(DetectorConfig.from_dict(dict(model_config)))

    def loss(self, raw: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        from crux.models.detector import DetectionLoss

        if self._loss is None:
            self._loss = DetectionLoss(self.spec.image_size, self.detect.strides, len(self.classes))
        self._loss.to(raw.device)
        targets = [{k: v.to(raw.device) for k, v in t.items()} for t in split_targets(batch)]
        return self._loss(raw, targets)

    def new_state(self) -> dict[str, list[Any]]:
        return {"dets": [], "boxes": [], "labels": [], "sizes": []}

    def collect(self, state: dict[str, list[Any]], raw: torch.Tensor, batch: Mapping[str, Any]) -> None:
        state["dets"].extend(
            postprocess_detect_batch(raw.detach().float().cpu().numpy(), batch["size"], self.spec, self.detect)
        )
        state["boxes"].extend(batch["orig_boxes"])
        state["labels"].extend(batch["orig_labels"])
        state["sizes"].extend(batch["size"])

    def metrics(self, state: dict[str, list[Any]], **_: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return detection_metrics(state["dets"], state["boxes"], state["labels"], state["sizes"], self.classes)
