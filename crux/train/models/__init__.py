"""The models registry: for each task kind (by name), how params become a model config and a config a network.

Every network is an encoder (`crux.train.models.encoders.ENCODERS`: CRUX's ResNet or an ImageNet-pretrained
EfficientNet-Lite, by `train.model.backbone`) and a kind's head; the anomaly kind has two methods
(ANOMALY_METHODS). Plain torch, no torchvision. The network modules
(`classifier`, `detector`, `segmenter`) import lazily, so this package is cheap to import;
`crux.train.models.bundle` rebuilds a saved network through `build_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crux.errors import CruxError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelFamily:
    """How one kind's network is configured (from params `train.model`) and built (from the bundle's config)."""

    config: Callable[[Any, int, int], dict[str, Any]]  # (ModelParams, head classes, input channels) → config dict
    build: Callable[[Mapping[str, Any]], nn.Module]


def _classifier_config(params: Any, num_classes: int, in_channels: int) -> dict[str, Any]:
    from crux.train.models.classifier import ClassifierConfig

    cfg = ClassifierConfig(
        num_classes, in_channels, params.width, tuple(params.depth), params.dropout, params.pool, params.backbone
    )
    return cfg.to_dict()


def _classifier(config: Mapping[str, Any]) -> nn.Module:
    from crux.train.models.classifier import Classifier, ClassifierConfig

    return Classifier(ClassifierConfig.from_dict(dict(config)))


def _detector_config(params: Any, num_classes: int, in_channels: int) -> dict[str, Any]:
    from crux.train.models.detector import DetectorConfig

    cfg = DetectorConfig(
        num_classes,
        in_channels,
        params.width,
        tuple(params.depth),
        params.neck_width,
        tuple(params.strides),
        backbone=params.backbone,
    )
    return cfg.to_dict()


def _detector(config: Mapping[str, Any]) -> nn.Module:
    from crux.train.models.detector import Detector, DetectorConfig

    return Detector(DetectorConfig.from_dict(dict(config)))


def _segmenter_config(params: Any, num_classes: int, in_channels: int) -> dict[str, Any]:
    # `num_classes` is the kind's head classes (the defect classes); the segmenter adds the background channel.
    from crux.train.models.segmenter import SegmenterConfig

    cfg = SegmenterConfig(
        1 + num_classes, in_channels, params.width, tuple(params.depth), params.neck_width, params.backbone
    )
    return cfg.to_dict()


def _segmenter(config: Mapping[str, Any]) -> nn.Module:
    from crux.train.models.segmenter import Segmenter, SegmenterConfig

    return Segmenter(SegmenterConfig.from_dict(dict(config)))


def _patchcore(config: Mapping[str, Any]) -> nn.Module:
    from crux.train.models.patchcore import PatchCore, PatchCoreConfig

    return PatchCore(PatchCoreConfig.from_dict(dict(config)))


# The anomaly kind's methods (params `train.anomaly_method`), by the `method` key of the bundle's model config
# (absent in a synthesis model's: the segmenter's config, as before methods existed).
ANOMALY_METHODS: Mapping[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    # A segmenter with one defect channel (the line's NG class) trained on synthetic anomalies.
    "synthesis": _segmenter,
    # A memory bank of pretrained patch features of the OK parts (crux.train.models.patchcore): no training.
    "patchcore": _patchcore,
}


def _anomaly(config: Mapping[str, Any]) -> nn.Module:
    method = config.get("method", "synthesis")
    try:
        build = ANOMALY_METHODS[method]
    except KeyError:
        raise CruxError(f"anomaly model method {method!r} unknown (known: {', '.join(ANOMALY_METHODS)})") from None
    return build(config)


MODELS: Mapping[str, ModelFamily] = {
    "classify": ModelFamily(_classifier_config, _classifier),
    "detect": ModelFamily(_detector_config, _detector),
    "segment": ModelFamily(_segmenter_config, _segmenter),
    # The config side is the synthesis model's; a PatchCore model's config is made by its fit
    # (crux.train.patchcore_fit), which fills the bank whose size the config records.
    "anomaly": ModelFamily(_segmenter_config, _anomaly),
}


def model_family(kind: str) -> ModelFamily:
    try:
        return MODELS[kind]
    except KeyError:
        raise CruxError(f"no model for task kind {kind!r} (known: {', '.join(MODELS)})") from None


def model_config(kind: str, params: Any, num_classes: int, in_channels: int) -> dict[str, Any]:
    """The model config dict (stored in the bundle) of a `kind` network from params `train.model`."""
    return model_family(kind).config(params, num_classes, in_channels)


def build_model(kind: str, config: Mapping[str, Any]) -> nn.Module:
    """A fresh `kind` network from its config dict (the bundle's `model_config`)."""
    return model_family(kind).build(config)
