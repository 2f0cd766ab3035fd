"""Building blocks and weight loading shared by the classifier and the detector."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from crux.errors import CruxError


class WeightsError(CruxError, FileNotFoundError):
    """`train.init_weights` names a file that is not there."""


class ConvBNAct(nn.Sequential):
    """conv k x k (same padding) + BatchNorm + SiLU: BatchNorm folds into the conv at export."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False),
            nn.BatchNorm2d(c_out),
            nn.SiLU(inplace=True),
        )


class BasicBlock(nn.Module):
    """ResNet basic block; a strided 1x1 projection on the shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(c_in, c_out, 3, stride)
        conv = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        bn = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Sequential(conv, bn)
        self.shortcut: nn.Module = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )
        self.act = nn.SiLU(inplace=True)
        # Zero-init the last BN gamma: each block starts as identity, which trains deeper nets from scratch stably.
        nn.init.zeros_(bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.act(self.conv2(self.conv1(x)) + self.shortcut(x))
        return y


def conv_bias(conv: nn.Conv2d) -> torch.Tensor:
    """A convolution's bias, which torch types as optional (a conv built with bias=False has none)."""
    if conv.bias is None:
        raise CruxError(f"{conv} has no bias")
    return conv.bias


class Encoder(nn.Module):
    """What every encoder is (crux.train.models.encoders): forward(x) returns its feature maps, finest first;
    `channels` and `strides` have one entry per map."""

    channels: list[int]
    strides: list[int]


class ResNetBackbone(Encoder):
    """Stem (stride 2) then len(depth) stages, each halving resolution; returns every stage's features.

    Stage i has stride 2 ** (i + 2) and width * 2 ** i channels.
    """

    def __init__(self, in_channels: int, width: int, depth: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = ConvBNAct(in_channels, width, 3, 2)
        stages = []
        c_in = width
        for i, n in enumerate(depth):
            c_out = width * 2**i
            blocks = [BasicBlock(c_in, c_out, 2)] + [BasicBlock(c_out, c_out, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.channels = [width * 2**i for i in range(len(depth))]
        self.strides = [2 ** (i + 2) for i in range(len(depth))]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def load_initial_weights(model: nn.Module, path: Path) -> dict[str, list[str]]:
    """Load a local state_dict (or a crux model bundle / Lightning checkpoint) into `model`, non-strictly.

    Tensors whose shape differs (e.g. another number of classes) are skipped, so a model trained on one line can
    seed another. Returns the skipped, missing and unexpected keys for the training log.
    """
    if not path.is_file():
        raise WeightsError(f"train.init_weights: initial weights {path} not found")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob
    if isinstance(blob, dict) and "state_dict" in blob:
        state = blob["state_dict"]
    # Lightning prefixes the model's keys with the attribute name of the module.
    state = {k.removeprefix("model."): v for k, v in state.items()}
    own = model.state_dict()
    skipped = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    state = {k: v for k, v in state.items() if k not in skipped}
    result = model.load_state_dict(state, strict=False)
    return {"skipped": skipped, "missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
