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

from crux.evaluation import (
    classification_metrics,
    detection_metrics,
    operating_threshold,
    pixel_confusion,
    segmentation_metrics,
)
from crux.postprocess import (
    DetectSpec,
    InputSpec,
    SegmentSpec,
    postprocess_classify,
    postprocess_detect_batch,
    postprocess_segment_batch,
)
from crux.train.recipe import ModelParams
from crux.train.torch_dataset import split_targets


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
        from crux.train.models.classifier import ClassifierConfig

        cfg = ClassifierConfig(num_classes, in_channels, params.width, tuple(params.depth), params.dropout, params.pool)
        return cfg.to_dict()

    @staticmethod
    def build_model(model_config: Mapping[str, Any]) -> nn.Module:
        from crux.train.models.classifier import Classifier, ClassifierConfig

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
        from crux.train.models.detector import DetectorConfig

        cfg = DetectorConfig(
            num_classes, in_channels, params.width, tuple(params.depth), params.neck_width, tuple(params.strides)
        )
        return cfg.to_dict()

    @staticmethod
    def build_model(model_config: Mapping[str, Any]) -> nn.Module:
        from crux.train.models.detector import Detector, DetectorConfig

        return Detector(DetectorConfig.from_dict(dict(model_config)))

    def loss(self, raw: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        from crux.train.models.detector import DetectionLoss

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


class SegmentTask:
    """Per-pixel defect classes (background + the defect classes) with the image verdict read off the map."""

    monitor = "miou"

    def __init__(
        self,
        classes: Sequence[str],
        ok_class: str | None,
        spec: InputSpec,
        segment: SegmentSpec,
        image_loss_weight: float = 1.0,
    ) -> None:
        self.classes = list(classes)
        self.ok_class = ok_class
        self.spec = spec
        self.segment = segment
        self.image_loss_weight = image_loss_weight

    @staticmethod
    def model_config(params: ModelParams, num_classes: int, in_channels: int) -> dict[str, Any]:
        # `num_classes` counts the dataset's classes; the segmenter outputs background + defect classes, so the
        # caller passes len(defect classes) here (see SegmentKind.model_config).
        from crux.train.models.segmenter import SegmenterConfig

        cfg = SegmenterConfig(1 + num_classes, in_channels, params.width, tuple(params.depth), params.neck_width)
        return cfg.to_dict()

    @staticmethod
    def build_model(model_config: Mapping[str, Any]) -> nn.Module:
        from crux.train.models.segmenter import Segmenter, SegmenterConfig

        return Segmenter(SegmenterConfig.from_dict(dict(model_config)))

    def loss(self, raw: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return segment_loss(
            raw,
            batch["mask"].to(raw.device),
            batch["is_ng"].to(raw.device),
            self.segment.smooth,
            self.image_loss_weight,
        )

    def new_state(self) -> dict[str, Any]:
        n = 1 + len(self.segment.defect_classes)
        return {
            "pixel_cm": np.zeros((n, n), np.int64),
            "ng": [],
            "strongest": [],
            "targets": [],
            "fg_iou": [],
            "index": [],
        }

    def collect(self, state: dict[str, Any], raw: torch.Tensor, batch: Mapping[str, Any]) -> None:
        maps = postprocess_segment_batch(raw.detach().float().cpu().numpy(), batch["size"], self.segment)
        for m, truth, label in zip(maps, batch["orig_mask"], batch["label"].tolist(), strict=True):
            state["pixel_cm"] += pixel_confusion(truth, m.class_map, state["pixel_cm"].shape[0])
            state["ng"].append(m.ng_score)
            state["strongest"].append(m.strongest)
            state["targets"].append(int(label))
            fg_t, fg_p = truth > 0, m.class_map > 0
            union = int((fg_t | fg_p).sum())
            state["fg_iou"].append(float((fg_t & fg_p).sum()) / union if union else 1.0)
        state["index"].extend(batch["index"])

    def metrics(
        self, state: dict[str, Any], ng_threshold: float | None = None, max_false_reject: float = 0.02
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        return segmentation_metrics(
            state["pixel_cm"],
            np.asarray(state["ng"], np.float64),
            np.asarray(state["strongest"], np.int64),
            np.asarray(state["targets"], np.int64),
            self.classes,
            self.ok_class,
            self.segment.defect_classes,
            ng_threshold,
            max_false_reject,
        )

    def operating_threshold(self, state: dict[str, Any], max_false_reject: float) -> float:
        ok = self.classes.index(self.ok_class) if self.ok_class in self.classes else -1
        return operating_threshold(np.asarray(state["ng"]), np.asarray(state["targets"]) != ok, max_false_reject)

    def gallery(
        self, state: dict[str, Any], dataset: Any, model: nn.Module, device: Any, ng_threshold: float, path: Any
    ) -> None:
        """The worst misses as one PNG: escaped NG parts (lowest NG score first), then false rejects (highest
        first), then the poorest masks; each shows the image, the labelled mask and the predicted one."""
        from crux.evaluation import overlay_gallery
        from crux.train.torch_dataset import normalise

        ok = self.classes.index(self.ok_class) if self.ok_class in self.classes else -1
        ng, targets, fg_iou = np.asarray(state["ng"]), np.asarray(state["targets"]), np.asarray(state["fg_iou"])
        escaped = [i for i in np.argsort(ng, kind="stable") if targets[i] != ok and ng[i] < ng_threshold]
        false_rejects = [i for i in np.argsort(-ng, kind="stable") if targets[i] == ok and ng[i] >= ng_threshold]
        poor = [i for i in np.argsort(fg_iou, kind="stable") if targets[i] != ok and i not in escaped]
        chosen = list(dict.fromkeys([*escaped, *false_rejects, *poor]))[:12]
        tiles = []
        for i in chosen:
            item = dataset[state["index"][i]]
            with torch.inference_mode():
                raw = model(normalise(item["image"][None].to(device), self.spec)).float().cpu().numpy()
            pred = postprocess_segment_batch(raw, [item["size"]], self.segment)[0]
            from crux.postprocess import load_image

            image = load_image(dataset.root / dataset.items[state["index"][i]]["image"], 3)
            caption = f"{self.classes[targets[i]]} ng={ng[i]:.3f} iou={fg_iou[i]:.2f}"
            tiles.append((image, item["orig_mask"], pred.class_map, caption))
        overlay_gallery(tiles, path)


def segment_loss(
    raw: torch.Tensor,
    target: torch.Tensor,
    is_ng: torch.Tensor,
    smooth: int = 3,
    image_weight: float = 1.0,
    gamma: float = 2.0,
) -> dict[str, torch.Tensor]:
    """Focal cross-entropy + soft Dice over the defect classes + an image-level term on the NG score.

    Defects cover ~1% of a tile's pixels: plain cross-entropy is won by predicting background everywhere. The focal
    term down-weights the easy background pixels, Dice (computed over the batch, so a class absent from it only
    penalises its false positives) scores each defect class by overlap whatever its size, and the image term trains
    exactly the verdict the edge takes (the max of the smoothed defect map, `crux.postprocess.postprocess_segment`):
    one false speck on an OK part costs as much as a missed crack.
    """
    logits = raw.float()
    logp = F.log_softmax(logits, dim=1)
    logpt = logp.gather(1, target[:, None]).squeeze(1)
    focal = (-((1.0 - logpt.exp()) ** gamma) * logpt).mean()
    probs = logp.exp()
    onehot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    inter = (probs * onehot).sum(dim=(0, 2, 3))[1:]
    denom = (probs + onehot).sum(dim=(0, 2, 3))[1:]
    dice = (1.0 - (2.0 * inter + 1.0) / (denom + 1.0)).mean()
    defect = 1.0 - probs[:, 0:1]
    if smooth > 1:
        defect = F.avg_pool2d(defect, smooth, 1, smooth // 2)
    score = defect.amax(dim=(1, 2, 3)).clamp(1e-6, 1 - 1e-6)
    image = F.binary_cross_entropy(score, is_ng.to(score.dtype))
    loss = focal * 10.0 + dice + image_weight * image
    return {"loss": loss, "focal": focal, "dice": dice, "image": image}
