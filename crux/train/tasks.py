"""The training registry: per task kind (by name), the loss, raw outputs → predictions, and metrics.

The LightningModule stays kind-agnostic: it calls a task's `loss`, `collect` and `metrics`. `collect` post-processes
each batch's raw outputs with `crux.postprocess` right away, so validation holds predictions, not raw tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crux.errors import CruxError
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
from crux.train.torch_dataset import split_targets


class Task(Protocol):
    """What the LightningModule and `evaluate` call; one implementation per kind, found in `TASKS`."""

    def loss(self, raw: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]: ...

    def new_state(self) -> Any: ...

    def collect(self, state: Any, raw: torch.Tensor, batch: Mapping[str, Any]) -> None: ...

    def metrics(
        self, state: Any, ng_threshold: float | None = None, max_false_reject: float = 0.02
    ) -> tuple[dict[str, Any], dict[str, Any]]: ...


class ClassifyTask:
    def __init__(
        self, classes: Sequence[str], ok_class: str | None, spec: InputSpec, label_smoothing: float = 0.0
    ) -> None:
        self.classes = list(classes)
        self.ok_class = ok_class
        self.spec = spec
        self.label_smoothing = label_smoothing

    def loss(self, raw: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(raw.float(), batch["label"], label_smoothing=self.label_smoothing)}

    def new_state(self) -> dict[str, list[Any]]:
        return {"probs": [], "targets": []}

    def collect(self, state: dict[str, list[Any]], raw: torch.Tensor, batch: Mapping[str, Any]) -> None:
        state["probs"].append(postprocess_classify(raw.detach().float().cpu().numpy()))
        state["targets"].append(batch["label"].cpu().numpy())

    def metrics(
        self, state: dict[str, list[Any]], ng_threshold: float | None = None, max_false_reject: float = 0.02
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        ng_threshold = 0.5 if ng_threshold is None else ng_threshold  # the arg-max verdict's default
        probs = np.concatenate(state["probs"]) if state["probs"] else np.zeros((0, len(self.classes)), np.float32)
        targets = np.concatenate(state["targets"]) if state["targets"] else np.zeros(0, np.int64)
        return classification_metrics(probs, targets, self.classes, self.ok_class, ng_threshold, max_false_reject)

    def operating_threshold(self, state: dict[str, list[Any]], max_false_reject: float) -> float:
        """A line with an OK class rejects when 1 - p(OK) reaches this: the lowest threshold whose false-reject
        rate on this (validation) state stays within the budget, so the card ships an operating point chosen on
        validation, never on the split it is measured on. Without an OK class: the arg-max verdict's 0.5."""
        if self.ok_class not in self.classes or not state["probs"]:
            return 0.5
        ok = self.classes.index(self.ok_class)
        probs, targets = np.concatenate(state["probs"]), np.concatenate(state["targets"])
        return operating_threshold(1.0 - probs[:, ok], targets != ok, max_false_reject)


class DetectTask:
    def __init__(self, classes: Sequence[str], ok_class: str | None, spec: InputSpec, detect: DetectSpec) -> None:
        self.classes = list(classes)
        self.ok_class = ok_class
        self.spec = spec
        self.detect = detect
        self._loss: nn.Module | None = None

    def loss(self, raw: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        from crux.train.models.detector import DetectionLoss

        if self._loss is None:
            self._loss = DetectionLoss(self.spec.image_size, self.detect.strides, len(self.classes))
        self._loss.to(raw.device)
        targets = [{k: v.to(raw.device) for k, v in t.items()} for t in split_targets(batch)]
        losses: dict[str, torch.Tensor] = self._loss(raw, targets)
        return losses

    def new_state(self) -> dict[str, list[Any]]:
        return {"dets": [], "boxes": [], "labels": [], "sizes": []}

    def collect(self, state: dict[str, list[Any]], raw: torch.Tensor, batch: Mapping[str, Any]) -> None:
        state["dets"].extend(
            postprocess_detect_batch(raw.detach().float().cpu().numpy(), batch["size"], self.spec, self.detect)
        )
        state["boxes"].extend(batch["orig_boxes"])
        state["labels"].extend(batch["orig_labels"])
        state["sizes"].extend(batch["size"])

    def metrics(
        self, state: dict[str, list[Any]], ng_threshold: float | None = None, max_false_reject: float = 0.02
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        # A detector's verdict is "any box over the card threshold": no image-level threshold to choose here.
        return detection_metrics(state["dets"], state["boxes"], state["labels"], state["sizes"], self.classes)


class SegmentTask:
    """Per-pixel defect classes (background + the defect classes) with the image verdict read off the map."""

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


class AnomalyTask(SegmentTask):
    """The segment kind's network and loss, trained on OK images with synthetic anomalies pasted in
    (crux.train.anomaly_synthesis); its NG score is the anomaly score.

    Validation scores the real items (OK, and NG when labelled) plus a synthetic twin of each (a fixed anomaly per
    batch): `auroc` ranks real NG against OK where NG items exist, else the synthetic twins against OK, so a line
    without a single defect still picks its checkpoint. Evaluation (`crux evaluate`) sees real items only.
    """

    def __init__(
        self,
        classes: Sequence[str],
        ok_class: str | None,
        spec: InputSpec,
        segment: SegmentSpec,
        optim: Mapping[str, Any],
    ) -> None:
        from crux.train.anomaly_synthesis import SynthesisConfig

        super().__init__(classes, ok_class, spec, segment, float(optim.get("image_loss_weight", 1.0)))
        self.synthesis = SynthesisConfig(**dict(optim.get("synthesis") or {}))
        self.ng_label = self.classes.index(segment.defect_classes[0])
        # Real defect crops to paste besides the synthetic anomalies (train.anomaly_defect_crops; set at fit start).
        self.use_defect_crops = bool(optim.get("anomaly_defect_crops", False))
        self.defects: list[tuple[torch.Tensor, torch.Tensor]] = []
        # Set by `operating_threshold` (evaluation): the validation figures of the shipped threshold, for the card.
        self.calibration: dict[str, Any] | None = None

    def batch_for(self, stage: str, batch: dict[str, Any]) -> dict[str, Any]:
        """Train: anomalies pasted on about half the (OK) images. Val: the batch plus a synthetic twin of each item
        (seeded by the items' indices, so every validation sees the same anomalies). Test: unchanged."""
        from crux.train.anomaly_synthesis import synthesize_batch

        if stage not in ("train", "val"):
            return batch
        images, device = batch["image"], batch["image"].device
        if stage == "train":
            g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))  # follows the seeded global RNG
            out, masks, is_ng = synthesize_batch(images.cpu(), g, self.synthesis, self.defects)
            return {**batch, "image": out.to(device), "mask": masks.to(device), "is_ng": is_ng.to(device)}
        g = torch.Generator().manual_seed(1 + sum(int(i) for i in batch["index"]))
        out, masks, is_ng = synthesize_batch(images.cpu(), g, self.synthesis, prob=1.0)
        n = images.shape[0]
        s = self.spec.image_size
        return {
            **batch,
            "image": torch.cat([images, out.to(device)]),
            "mask": torch.cat([batch["mask"], masks.to(batch["mask"].device)]),
            "is_ng": torch.cat([batch["is_ng"], is_ng.to(batch["is_ng"].device)]),
            "label": torch.cat([batch["label"], torch.full_like(batch["label"], self.ng_label)]),
            "size": list(batch["size"]) + [(s, s)] * n,
            "orig_mask": list(batch["orig_mask"]) + [None] * n,
            "index": list(batch["index"]) + [-1] * n,
            "synthetic": [False] * n + [True] * n,
        }

    def new_state(self) -> dict[str, Any]:
        return {k: [] for k in ("score", "is_ng", "synthetic", "px_score", "px_truth", "overlap", "index")}

    def collect(self, state: dict[str, Any], raw: torch.Tensor, batch: Mapping[str, Any]) -> None:
        from crux.evaluation import region_overlaps

        maps = postprocess_segment_batch(raw.detach().float().cpu().numpy(), batch["size"], self.segment)
        synthetic = batch.get("synthetic") or [False] * len(maps)
        for m, truth, ng, syn in zip(maps, batch["orig_mask"], batch["is_ng"].tolist(), synthetic, strict=True):
            state["score"].append(m.ng_score)
            state["is_ng"].append(bool(ng))
            state["synthetic"].append(bool(syn))
            if syn or truth is None:
                continue
            # Every 4th pixel each way bounds the memory of pixel AUROC on large images (a 1/16 sample).
            state["px_score"].append(m.defect_prob[::4, ::4].ravel())
            state["px_truth"].append(truth[::4, ::4].ravel() > 0)
            state["overlap"].extend(region_overlaps(truth > 0, m.class_map > 0))
        state["index"].extend(batch["index"])

    def metrics(
        self, state: dict[str, Any], ng_threshold: float | None = None, max_false_reject: float = 0.02
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        from crux.evaluation import anomaly_metrics

        metrics, plots = anomaly_metrics(
            np.asarray(state["score"], np.float64),
            np.asarray(state["is_ng"], bool),
            np.asarray(state["synthetic"], bool),
            np.concatenate(state["px_score"]) if state["px_score"] else np.zeros(0, np.float32),
            np.concatenate(state["px_truth"]) if state["px_truth"] else np.zeros(0, bool),
            np.asarray(state["overlap"], np.float64),
            ng_threshold,
            max_false_reject,
        )
        if self.calibration is not None:
            metrics["calibration"] = self.calibration
        return metrics, plots

    def operating_threshold(self, state: dict[str, Any], max_false_reject: float) -> float:
        """The threshold from the real validation items' OK scores at the false-reject budget; the NG recall at it
        is recorded too when the validation split has labelled NG items."""
        from crux.evaluation import inspection_metrics

        real = ~np.asarray(state["synthetic"], bool)
        scores, is_ng = np.asarray(state["score"])[real], np.asarray(state["is_ng"], bool)[real]
        threshold = operating_threshold(scores, is_ng, max_false_reject)
        view, _ = inspection_metrics(scores, is_ng, threshold, max_false_reject)
        # Regions are the pixels at or above the image threshold: every rejected frame then shows where (the
        # anomaly map of a model trained on faint synthetic anomalies rarely reaches the segment kind's 0.5).
        self.segment = dataclasses.replace(self.segment, pixel_threshold=float(threshold))
        self.decode = self.segment.to_dict()
        self.calibration = {
            "split": "val",
            "threshold": view["threshold"],
            "n_ok": view["n_ok"],
            "n_ng": view["n_ng"],
            "false_reject_rate": view["false_reject_rate"],
            "ng_recall": view["ng_recall"],
        }
        return threshold

    def gallery(
        self, state: dict[str, Any], dataset: Any, model: nn.Module, device: Any, ng_threshold: float, path: Any
    ) -> None:
        """The anomaly-map gallery: escaped NG parts (lowest score first), false rejects (highest first), then the
        most anomalous NG parts; each shows the image with its labelled mask and with the anomalous pixels."""
        from crux.evaluation import overlay_gallery
        from crux.postprocess import load_image
        from crux.train.torch_dataset import normalise

        score, is_ng = np.asarray(state["score"]), np.asarray(state["is_ng"], bool)
        escaped = [i for i in np.argsort(score, kind="stable") if is_ng[i] and score[i] < ng_threshold]
        false_rejects = [i for i in np.argsort(-score, kind="stable") if not is_ng[i] and score[i] >= ng_threshold]
        caught = [i for i in np.argsort(-score, kind="stable") if is_ng[i] and score[i] >= ng_threshold]
        tiles = []
        for i in list(dict.fromkeys([*escaped[:4], *false_rejects[:4], *caught]))[:12]:
            item = dataset[state["index"][i]]
            with torch.inference_mode():
                raw = model(normalise(item["image"][None].to(device), self.spec)).float().cpu().numpy()
            pred = postprocess_segment_batch(raw, [item["size"]], self.segment)[0]
            image = load_image(dataset.root / dataset.items[state["index"][i]]["image"], 3)
            truth = item["orig_mask"] if item["orig_mask"] is not None else np.zeros(image.shape[:2], np.uint8)
            caption = f"{'NG' if is_ng[i] else 'OK'} score={score[i]:.3f} threshold={ng_threshold:.3f}"
            tiles.append((image, truth, pred.class_map, caption))
        overlay_gallery(tiles, path)


# (classes, ok_class, input spec, detect spec or None, params `train.optim`) → the kind's task.
TaskFactory = Callable[[Sequence[str], "str | None", InputSpec, "DetectSpec | None", Mapping[str, Any]], Task]


def _classify(
    classes: Sequence[str], ok_class: str | None, spec: InputSpec, detect: DetectSpec | None, optim: Mapping[str, Any]
) -> Task:
    return ClassifyTask(classes, ok_class, spec, float(optim.get("label_smoothing", 0.0)))


def _detect(
    classes: Sequence[str], ok_class: str | None, spec: InputSpec, detect: DetectSpec | None, optim: Mapping[str, Any]
) -> Task:
    if detect is None:
        raise CruxError("a detect task needs the decoding parameters (the bundle's `detect` spec)")
    return DetectTask(classes, ok_class, spec, detect)


def _segment(
    classes: Sequence[str], ok_class: str | None, spec: InputSpec, detect: DetectSpec | None, optim: Mapping[str, Any]
) -> Task:
    from crux.kinds import get_kind

    segment = SegmentSpec.from_dict(get_kind("segment").decode_spec(classes, ok_class) or {})
    return SegmentTask(classes, ok_class, spec, segment, float(optim.get("image_loss_weight", 1.0)))


def _anomaly(
    classes: Sequence[str], ok_class: str | None, spec: InputSpec, detect: DetectSpec | None, optim: Mapping[str, Any]
) -> Task:
    from crux.kinds import get_kind

    segment = SegmentSpec.from_dict(get_kind("anomaly").decode_spec(classes, ok_class) or {})
    return AnomalyTask(classes, ok_class, spec, segment, optim)


TASKS: Mapping[str, TaskFactory] = {
    "classify": _classify,
    "detect": _detect,
    "segment": _segment,
    "anomaly": _anomaly,
}


def training_task(
    kind: str,
    classes: Sequence[str],
    ok_class: str | None,
    spec: InputSpec,
    detect_spec: DetectSpec | None,
    optim: Mapping[str, Any],
) -> Task:
    """The training task of `kind` (params `train.optim` carries its loss options)."""
    try:
        factory = TASKS[kind]
    except KeyError:
        raise CruxError(f"no training task for kind {kind!r} (known: {', '.join(TASKS)})") from None
    return factory(classes, ok_class, spec, detect_spec, optim)
