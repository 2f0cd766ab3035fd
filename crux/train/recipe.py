"""Frozen, validated configuration of the training pipeline: params.yaml sections data, augment, train, evaluate.

No torch, lightning or albumentations here: the CLI validates params before any heavy import, so a typo
fails in milliseconds with the dotted key, not after a minute of imports or an hour of training.
Transform names of `augment` are checked against albumentations lazily in `validate_augment`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crux.config import ConfigError, from_mapping

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataConfig:
    """How a dataset version becomes model input (shared by training, evaluation and the edge)."""

    # null: the dataset's own kind (data/<project>/classes.json), so one params file serves every line.
    kind: str | None = None
    image_size: int = 200
    channels: int = 1
    # One scalar for every channel: x = (pixel / 255 - mean) / std. Recorded in the model card.
    mean: float = 0.5
    std: float = 0.25
    # null: keep the split written in the manifest (frozen test split). [train, val, test]: re-split by sha256.
    split_ratios: tuple[float, ...] | None = None
    # Conflicted items (annotators disagree) carry uncertain labels; training on them teaches noise.
    drop_conflicted: bool = True
    # Verify each image's sha256 against the manifest during prepare (catches a corrupt pull).
    verify_hashes: bool = True

    def __post_init__(self) -> None:
        from crux.kinds import KINDS

        if self.kind is not None and self.kind not in KINDS:
            raise ConfigError(f"data.kind: {self.kind!r} is not a task kind; known: {', '.join(sorted(KINDS))}")
        # Any size works (each stride-2 conv maps n to ceil(n / 2), and crux.postprocess uses the same rule);
        # multiples of 32 waste no border pixels.
        if not 32 <= self.image_size <= 4096:
            raise ConfigError(f"data.image_size: {self.image_size} must be in 32..4096")
        if self.channels not in (1, 3):
            raise ConfigError(f"data.channels: {self.channels} must be 1 (grayscale) or 3 (RGB)")
        if not self.std > 0.0:
            raise ConfigError(f"data.std: {self.std} must be > 0")
        if self.split_ratios is not None:
            r = self.split_ratios
            if len(r) != 3 or any(x < 0 for x in r) or not math.isclose(sum(r), 1.0, abs_tol=1e-6) or r[0] <= 0:
                raise ConfigError(
                    f"data.split_ratios: {list(r)} must be 3 non-negative numbers summing to 1, train > 0"
                )


@dataclass(frozen=True)
class TransformSpec:
    """One albumentations transform: class name and keyword arguments."""

    name: str
    args: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))


@dataclass(frozen=True)
class AugmentConfig:
    """Train-time augmentation, applied after the resize to `data.image_size` (so it runs on small images)."""

    transforms: tuple[TransformSpec, ...] = ()
    # Detection: drop a box when less than this fraction of it is left after a crop (albumentations min_visibility).
    min_visibility: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_visibility <= 1.0:
            raise ConfigError(f"augment.min_visibility: {self.min_visibility} must be in 0..1")


@dataclass(frozen=True)
class ModelParams:
    """Architecture knobs shared by the classifier and the detector backbone."""

    # Channels of the first stage; stage i has width * 2**i.
    width: int = 32
    # Residual blocks per stage; the number of stages is len(depth). The detector needs >= 3 stages.
    depth: tuple[int, ...] = (1, 1, 2, 1)
    # Detector only: channels of the feature pyramid and the head.
    neck_width: int = 64
    # Detector only: output strides of the pyramid levels (each a stride of the backbone).
    strides: tuple[int, ...] = (8, 16, 32)
    dropout: float = 0.0
    # Classifier only: "avg" pooling, or "avgmax" (average and max concatenated) for defects much smaller than
    # the image.
    pool: str = "avg"
    # Optional local state_dict (.pt) to start from (no weights are downloaded). Missing/unexpected keys are reported.
    init_weights: Path | None = None
    # The encoder every kind's network is built on (crux.train.models.encoders.ENCODERS): "resnet" (random init;
    # width and depth size it) or "efficientnet-lite0" (lite1, lite2), whose ImageNet weights ship as a package.
    backbone: str = "resnet"
    # "imagenet": start the encoder from its ImageNet weights (the input normalisation then follows the weights
    # and is recorded in the card); "none": random init.
    pretrained: str = "none"
    # Keep the encoder's BatchNorm statistics and affine terms as pretrained (eval mode) while fine-tuning: at
    # batch 16 the running statistics drift and eval-mode accuracy collapses (64% vs 95% seen on Magnetic Tile).
    freeze_bn: bool = False

    def __post_init__(self) -> None:
        from crux.train.models.encoders import ENCODERS

        if self.backbone not in ENCODERS:
            raise ConfigError(f"train.model.backbone: {self.backbone!r} is not one of {', '.join(ENCODERS)}")
        if self.pretrained not in PRETRAINED:
            raise ConfigError(f"train.model.pretrained: {self.pretrained!r} is not one of {', '.join(PRETRAINED)}")
        if self.pretrained == "imagenet" and ENCODERS[self.backbone].pretrained is None:
            raise ConfigError(f"train.model.pretrained: encoder {self.backbone!r} has no ImageNet weights; use none")
        if not 4 <= self.width <= 512:
            raise ConfigError(f"train.model.width: {self.width} must be in 4..512")
        if not 1 <= len(self.depth) <= 6 or any(d < 1 or d > 8 for d in self.depth):
            raise ConfigError(f"train.model.depth: {list(self.depth)} must be 1..6 stages of 1..8 blocks")
        if self.neck_width < 8:
            raise ConfigError(f"train.model.neck_width: {self.neck_width} must be >= 8")
        if (
            not self.strides
            or any(s not in (4, 8, 16, 32, 64) for s in self.strides)
            or list(self.strides) != sorted(set(self.strides))
        ):
            raise ConfigError(f"train.model.strides: {list(self.strides)} must be increasing values from 4,8,16,32,64")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"train.model.dropout: {self.dropout} must be in [0, 1)")
        if self.pool not in ("avg", "avgmax", "pyramid"):
            raise ConfigError(f"train.model.pool: {self.pool!r} is not one of avg, avgmax, pyramid")


@dataclass(frozen=True)
class PatchCoreParams:
    """The PatchCore anomaly method (`train.anomaly_method: patchcore`, crux.train.patchcore_fit): no training, a memory
    bank of the OK train parts' patch features."""

    # Encoder maps whose features are concatenated per patch (the coarser upsampled to the finest stride).
    strides: tuple[int, ...] = (8, 16)
    # Memory bank rows (greedy coreset of the OK patches): the kNN's cost on the edge grows with it.
    bank_size: int = 4096
    # Side of the local average over each feature map (PatchCore's 3x3 neighbourhood; 1 = none).
    neighbourhood: int = 3
    # The coreset is chosen among at most this many patches drawn at random from the train split's OK items
    # (greedy k-centre is O(candidates x bank_size)).
    candidates: int = 200000
    # Dimension of the random projection the coreset's distances are computed in (as in the paper); 0 = none.
    projection: int = 128
    # The score is (distance - centre) / scale with centre = this quantile of the OK train patches' distances and
    # scale = centre - their median: 0 sits at the rare end of normal patches.
    centre_quantile: float = 0.99

    def __post_init__(self) -> None:
        if not self.strides or any(s not in (4, 8, 16, 32) for s in self.strides):
            raise ConfigError(f"train.patchcore.strides: {list(self.strides)} must be values from 4, 8, 16, 32")
        if list(self.strides) != sorted(set(self.strides)):
            raise ConfigError(f"train.patchcore.strides: {list(self.strides)} must be increasing and distinct")
        if not 16 <= self.bank_size <= 1_000_000:
            raise ConfigError(f"train.patchcore.bank_size: {self.bank_size} must be in 16..1000000")
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ConfigError(f"train.patchcore.neighbourhood: {self.neighbourhood} must be odd and >= 1")
        if self.candidates < self.bank_size:
            raise ConfigError(f"train.patchcore.candidates: {self.candidates} must be >= bank_size ({self.bank_size})")
        if self.projection < 0:
            raise ConfigError(f"train.patchcore.projection: {self.projection} must be >= 0 (0 = none)")
        if not 0.5 < self.centre_quantile < 1.0:
            raise ConfigError(f"train.patchcore.centre_quantile: {self.centre_quantile} must be in (0.5, 1)")


PRETRAINED = ("none", "imagenet")
# full: train every weight. head: freeze the encoder and train only what sits on it (classification: on pooled
# features computed once per image and cached, minutes on 2 cores).
MODES = ("full", "head")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant", "onecycle")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = ("auto", "fast", "32-true", "16-mixed", "bf16-mixed")
# Lightning strategies CRUX trains with: auto (one process per machine unless devices > 1 on GPUs), ddp (one process
# per device, launched by Lightning re-running the command: `crux train`, `dvc repro`), and ddp with unused-parameter
# detection (a frozen part that still runs forward). ddp_spawn is left out: it pickles the datamodule and returns
# only rank 0's weights to the caller, a second code path to keep right.
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")
# Lightning's max_time string: days:hours:minutes:seconds.
MAX_TIME = re.compile(r"^(\d{1,2}):(\d{1,2}):(\d{1,2}):(\d{1,2})\Z")


def parse_max_time(value: str) -> dict[str, int]:
    """ "DD:HH:MM:SS" → {"days", "hours", "minutes", "seconds"} (what Lightning's Trainer(max_time=) takes)."""
    match = MAX_TIME.match(value)
    if not match:
        raise ConfigError(f"train.max_time: {value!r} is not DD:HH:MM:SS (e.g. 00:05:30:00 for 5.5 hours)")
    days, hours, minutes, seconds = (int(x) for x in match.groups())
    if hours > 23 or minutes > 59 or seconds > 59 or days * 86400 + hours * 3600 + minutes * 60 + seconds < 1:
        raise ConfigError(f"train.max_time: {value!r} is out of range (hours < 24, minutes and seconds < 60, > 0)")
    return {"days": days, "hours": hours, "minutes": minutes, "seconds": seconds}


def max_time_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    t = parse_max_time(value)
    return float(t["days"] * 86400 + t["hours"] * 3600 + t["minutes"] * 60 + t["seconds"])


@dataclass(frozen=True)
class TrainConfig:
    model: ModelParams = field(default_factory=ModelParams)
    # "full" trains the whole network; "head" freezes the encoder (see MODES). Classification in head mode fits
    # its linear head on cached pooled features (no epochs, no augmentation): the first model of a new line.
    mode: str = "full"
    # Head mode, classification: the L2 strengths tried for the linear head, the best on validation kept.
    head_l2: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    # Head mode: where pooled encoder features are cached, one file per (encoder, weights, input, image sha256),
    # so a second run, or the next dataset version, computes only the new images' features.
    feature_cache: Path = Path(".crux/cache/features")
    # Fine-tuning a pretrained encoder: its learning rate is lr x encoder_lr (layer-wise LR: the head learns
    # from scratch, the encoder only adapts).
    encoder_lr: float = 1.0
    # Fine-tuning: keep the encoder frozen for the first N epochs (the head settles before its gradients reach
    # the pretrained weights), then train everything.
    freeze_epochs: int = 0
    epochs: int = 30
    # Stop after this many optimiser steps (-1: no limit); the quick profile uses it to train "a few steps".
    max_steps: int = -1
    # Wall-clock budget of the fit, "DD:HH:MM:SS" (Lightning's max_time); null: none. A run stopped by it keeps
    # its best validated checkpoint and still evaluates, exports and goes through the gate. When set, the
    # learning-rate schedule anneals by elapsed time as well as by steps (whichever is further), so a run cut
    # by the budget ends annealed instead of at a high learning rate (and is then not bit-reproducible).
    max_time: str | None = None
    # Stop when the monitored validation metric has not improved by early_stop_min_delta for this many
    # validations (0 = off): long runs stop when done.
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    # Classification only: softens one-hot targets; helps from-scratch models on small datasets.
    label_smoothing: float = 0.0
    # Classification and segmentation: sample train items with weight count(image class)^-class_balance; 0 keeps
    # the natural frequencies, 1 shows every class equally often (rare defect types on an OK-heavy line).
    class_balance: float = 0.0
    # Exponential moving average of the weights (0 = off): validation, checkpoints and the bundle use the average.
    ema_decay: float = 0.0
    # Anomaly kind: also paste crops of the train split's labelled NG regions (items with masks) among the
    # synthetic anomalies. Off: the model learns from OK items only.
    anomaly_defect_crops: bool = False
    # Anomaly kind: "synthesis" trains the segmenter on synthetic anomalies (epochs); "patchcore" fills a memory
    # bank of pretrained patch features of the OK train items (no training; needs model.pretrained: imagenet).
    anomaly_method: str = "synthesis"
    patchcore: PatchCoreParams = field(default_factory=PatchCoreParams)
    seed: int = 42
    accelerator: str = "auto"
    precision: str = "auto"
    devices: int | str = "auto"
    # Lightning's strategy (STRATEGIES): ddp runs one process per device (2 CPU processes with gloo, or one per
    # GPU with nccl); train.batch_size is per process, so the effective batch is batch_size x devices x num_nodes.
    strategy: str = "auto"
    # Machines in a multi-node ddp run (Lightning's num_nodes; each node runs `crux train` with its NODE_RANK).
    num_nodes: int = 1
    num_workers: int = 2
    # CPU threads of the training process; 0 = auto: the cores the loader workers leave free (at least 1).
    # More threads than free cores makes OpenMP spin against the workers (here 3-60x slower steps).
    threads: int = 0
    # Validate every N epochs (validation runs the full post-processing and metrics).
    val_every: int = 1
    # Continue from <out>/checkpoints/last.ckpt when it exists.
    resume: bool = False
    # Rich progress bar on a terminal; off in CI logs.
    progress_bar: bool = True
    # Clamp gradients: from-scratch detectors spike early.
    grad_clip: float = 10.0

    def processes(self) -> int | None:
        """Training processes the settings ask for: devices x num_nodes when devices is a count, else None (auto:
        Lightning decides: one CPU process, or one process per visible GPU)."""
        return self.devices * self.num_nodes if isinstance(self.devices, int) else None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs: {self.epochs} must be >= 1")
        if self.mode not in MODES:
            raise ConfigError(f"train.mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if not self.head_l2 or any(not (math.isfinite(v) and v >= 0) for v in self.head_l2):
            raise ConfigError(f"train.head_l2: {list(self.head_l2)} must be one or more finite values >= 0")
        if not (math.isfinite(self.encoder_lr) and 0.0 <= self.encoder_lr <= 1.0):
            raise ConfigError(f"train.encoder_lr: {self.encoder_lr} must be in [0, 1] (a factor of train.lr)")
        if self.freeze_epochs < 0:
            raise ConfigError(f"train.freeze_epochs: {self.freeze_epochs} must be >= 0")
        if self.max_steps != -1 and self.max_steps < 1:
            raise ConfigError(f"train.max_steps: {self.max_steps} must be -1 (no limit) or >= 1")
        if self.max_time is not None:
            parse_max_time(self.max_time)
        if self.early_stop_patience < 0 or self.early_stop_min_delta < 0:
            raise ConfigError("train.early_stop_patience and train.early_stop_min_delta must be >= 0")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size: {self.batch_size} must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"train.optimizer: {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule: {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if not 0.0 < self.lr <= 10.0:
            raise ConfigError(f"train.lr: {self.lr} must be in (0, 10]")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay: {self.weight_decay} must be >= 0")
        if self.warmup_epochs < 0:
            raise ConfigError(f"train.warmup_epochs: {self.warmup_epochs} must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing: {self.label_smoothing} must be in [0, 1)")
        if not 0.0 <= self.class_balance <= 1.0:
            raise ConfigError(f"train.class_balance: {self.class_balance} must be in [0, 1]")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay: {self.ema_decay} must be in [0, 1) (0 disables)")
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(f"train.accelerator: {self.accelerator!r} is not one of {', '.join(ACCELERATORS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if (isinstance(self.devices, str) and self.devices != "auto") or (
            isinstance(self.devices, int) and self.devices < 1
        ):
            raise ConfigError(f"train.devices: {self.devices!r} must be 'auto' or a count >= 1")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"train.strategy: {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.num_nodes < 1:
            raise ConfigError(f"train.num_nodes: {self.num_nodes} must be >= 1")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers: {self.num_workers} must be >= 0")
        if self.threads < 0:
            raise ConfigError(f"train.threads: {self.threads} must be >= 0 (0 = auto)")
        if self.val_every < 1:
            raise ConfigError(f"train.val_every: {self.val_every} must be >= 1")
        if self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip: {self.grad_clip} must be >= 0 (0 disables)")
        from crux.train.models import ANOMALY_METHODS
        from crux.train.models.encoders import encoder_strides

        if self.anomaly_method not in ANOMALY_METHODS:
            raise ConfigError(
                f"train.anomaly_method: {self.anomaly_method!r} is not one of {', '.join(ANOMALY_METHODS)}"
            )
        if self.anomaly_method == "patchcore":
            if self.model.pretrained != "imagenet":
                raise ConfigError(
                    "train.anomaly_method: patchcore scores patches by pretrained features; set "
                    f"train.model.pretrained: imagenet (and an encoder that has them), not {self.model.pretrained!r}"
                )
            available = encoder_strides(self.model.backbone, self.model.depth)
            missing = [s for s in self.patchcore.strides if s not in available]
            if missing:
                raise ConfigError(
                    f"train.patchcore.strides: {missing} not produced by the {self.model.backbone} encoder "
                    f"(strides {', '.join(map(str, available))})"
                )


@dataclass(frozen=True)
class EvaluateConfig:
    # Detection: boxes below this score are dropped before NMS (keep low for mAP, raise for the edge).
    score_threshold: float = 0.05
    # Detection: class-aware NMS IoU.
    nms_iou: float = 0.6
    # Detection: boxes kept per image after NMS (COCO counts at most 100).
    max_detections: int = 100
    # Classification with an OK class: flag NG when 1 - p(OK) >= this.
    ng_threshold: float = 0.5
    # Classification with an OK class: report NG recall at the best threshold whose false-reject rate <= this.
    max_false_reject: float = 0.02
    batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("score_threshold", "nms_iou", "ng_threshold", "max_false_reject"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"evaluate.{name}: {value} must be in 0..1")
        if self.max_detections < 1:
            raise ConfigError(f"evaluate.max_detections: {self.max_detections} must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"evaluate.batch_size: {self.batch_size} must be >= 1")


@dataclass(frozen=True)
class PipelineConfig:
    """The four params.yaml sections the pipeline reads, validated together (cross-section rules)."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def __post_init__(self) -> None:
        from crux.train.models.encoders import encoder_strides

        model = self.train.model
        if self.data.kind == "detect":
            if model.backbone == "resnet" and len(model.depth) < 3:
                raise ConfigError("train.model.depth: the detector needs at least 3 backbone stages")
            available = encoder_strides(model.backbone, model.depth)
            for s in model.strides:
                if s not in available:
                    raise ConfigError(
                        f"train.model.strides: stride {s} not produced by the {model.backbone} encoder "
                        f"(strides {', '.join(map(str, available))})"
                    )
            if max(self.train.model.strides) > self.data.image_size:
                raise ConfigError("train.model.strides: largest stride exceeds data.image_size")


def load_pipeline_config(
    params: Mapping[str, Any], sections: tuple[str, ...] = ("data", "augment", "train", "evaluate")
) -> PipelineConfig:
    """Build the pipeline config from a params mapping (e.g. parsed params.yaml), checking transforms too.

    Only the sections listed are read; the others keep defaults, so `crux prepare` does not depend on `train`.
    """
    values = {name: params.get(name) for name in sections if params.get(name) is not None}
    cfg = from_mapping(PipelineConfig, values, "params")
    # Transforms are checked here against the generic rules, and again by `train` against the dataset's kind
    # (bbox-safety for detection), in both cases before any training starts.
    validate_augment(cfg.augment, cfg.data if cfg.data.kind else dataclasses.replace(cfg.data, kind="classify"))
    return cfg


# A quick profile: tiny images, a tiny model and a few steps. CI and the demo select it with
# `dvc exp run -S train.epochs=1 ...` or by merging QUICK_PROFILE over params.yaml (`quick_profile`).
QUICK_PROFILE: Mapping[str, Mapping[str, Any]] = types.MappingProxyType(
    {
        "data": {"image_size": 64},
        "train": {
            "model": {
                "width": 8,
                "depth": [1, 1, 1],
                "neck_width": 16,
                "strides": [8, 16],
                "backbone": "resnet",
                "pretrained": "none",
                "pool": "avg",
            },
            "mode": "full",
            "epochs": 1,
            "max_steps": 4,
            "batch_size": 8,
            "num_workers": 0,
            "warmup_epochs": 0.0,
            "progress_bar": False,
        },
        "evaluate": {"batch_size": 16},
    }
)


# The demo profile: `make demo` must end with working models within 15 minutes on a 2-core CPU, environments
# included. Head mode on the ImageNet-pretrained Lite0 encoder: features computed once per image, a linear head
# fitted on them (bench/train.py, NEU 60/20/20: test accuracy 0.993 after 20 s of fitting, where the from-scratch
# demo recipe — width 16 at 128 px, 40 epochs under a 5-minute budget — reached 0.966). Each line keeps its own
# input size (pipeline.overrides), so Magnetic Tile's small defects are seen at 320 px.
# `crux demo` and `crux cycle --profile demo` select it.
DEMO_PROFILE: Mapping[str, Mapping[str, Any]] = types.MappingProxyType(
    {
        "train": {
            "mode": "head",
            "model": {"backbone": "efficientnet-lite0", "pretrained": "imagenet", "pool": "pyramid"},
            "num_workers": 0,
            "progress_bar": False,
        },
    }
)

# Profiles that replace every line's own values (pipeline.overrides would undo them: a line's image size, model).
WIPES_LINE_OVERRIDES = frozenset({"quick"})

PROFILES: Mapping[str, Mapping[str, Mapping[str, Any]]] = types.MappingProxyType(
    {"quick": QUICK_PROFILE, "demo": DEMO_PROFILE}
)


def merge_params(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `override` into `base` (mappings merge, everything else replaces)."""
    out: dict[str, Any] = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_params(out[key], value)
        else:
            out[key] = value
    return out


def quick_profile(params: Mapping[str, Any]) -> dict[str, Any]:
    """The quick profile over `params`; it also drops the per-line overrides, which would undo it (a line's own
    image size or model)."""
    out = merge_params(params, QUICK_PROFILE)
    out["pipeline"] = {**dict(out.get("pipeline") or {}), "overrides": {}}
    return out


# The sections a line may override in params.yaml `pipeline.overrides.LINE` (what its stages read).
LINE_SECTIONS = ("data", "augment", "train", "evaluate", "export")


def line_params(params: Mapping[str, Any], line: str) -> dict[str, Any]:
    """`params` with `pipeline.overrides.<line>` merged over its sections: each line (its dataset, input size,
    model) can differ from the shared defaults, while one params.yaml serves every line."""
    pipeline = params.get("pipeline") or {}
    overrides = pipeline.get("overrides") if isinstance(pipeline, Mapping) else None
    if overrides is None:
        return dict(params)
    if not isinstance(overrides, Mapping):
        raise ConfigError("pipeline.overrides: expected a mapping of line name → sections")
    own = overrides.get(line) or {}
    if not isinstance(own, Mapping):
        raise ConfigError(f"pipeline.overrides.{line}: expected a mapping of sections")
    unknown = sorted(set(own) - set(LINE_SECTIONS))
    if unknown:
        raise ConfigError(
            f"pipeline.overrides.{line}: unknown section(s) {', '.join(unknown)}; allowed: {', '.join(LINE_SECTIONS)}"
        )
    for name, section in own.items():
        if not isinstance(section, Mapping):
            raise ConfigError(f"pipeline.overrides.{line}.{name}: expected a mapping of keys")
    return merge_params(params, own)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def default_params(kind: str | None = None) -> dict[str, Any]:
    """Every key of the four sections with its default, as plain YAML-able values (DVC needs each key that a
    stage lists under `params:` to exist in params.yaml)."""
    params: dict[str, Any] = _plain(PipelineConfig(data=DataConfig(kind=kind)))
    return params


def quick_overrides() -> list[str]:
    """QUICK_PROFILE as `dvc exp run` arguments: ["-S", "data.image_size=64", "-S", ...] (YAML flow values)."""
    return profile_overrides("quick")


def profile_overrides(name: str) -> list[str]:
    """A training profile (PROFILES) as `dvc exp run` arguments: ["-S", "key=value", ...] (YAML flow values)."""
    import yaml

    if name not in PROFILES:
        raise ConfigError(f"profile {name!r}: choose one of {', '.join(PROFILES)}")

    def walk(prefix: str, value: Any) -> list[str]:
        if isinstance(value, Mapping):
            return [item for k, v in value.items() for item in walk(f"{prefix}{k}.", v)]
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        return ["-S", f"{prefix[:-1]}={text.replace(', ', ',')}"]  # no spaces: safe in $(...)

    wipe = ["-S", "pipeline.overrides={}"] if name in WIPES_LINE_OVERRIDES else []
    return [*walk("", PROFILES[name]), *wipe]


def validate_augment(cfg: AugmentConfig, data: DataConfig) -> None:
    """Check each transform exists in albumentations and accepts its arguments; detection needs bbox-safe ones.

    Imports albumentations (~4 s) only when there is a transform to check.
    """
    if not cfg.transforms:
        return
    from crux.train.augment import build_augment

    build_augment(cfg, data.kind or "classify", data.image_size, data.channels)  # no kind: no bbox/mask targets
