"""Compact encoder–decoder for defect segmentation: the classifier's residual backbone, an FPN-style decoder with
skip connections down to stride 4, and per-pixel logits at the input size.

forward returns logits (B, 1 + D, S, S): channel 0 background, channel j the j-th defect class (see
`crux.postprocess.postprocess_segment`, the one decoding path of evaluation and the edge).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crux.train.models.common import ConvBNAct, conv_bias
from crux.train.models.encoders import build_encoder


@dataclass(frozen=True)
class SegmenterConfig:
    # Output channels: background + defect classes.
    num_outputs: int
    in_channels: int = 1
    width: int = 32
    depth: tuple[int, ...] = (1, 1, 2, 1)
    # Decoder channels at every scale (params train.model.neck_width).
    decoder_width: int = 64
    # The encoder (crux.train.models.encoders); its stride-4..32 maps feed the decoder.
    backbone: str = "resnet"

    def __post_init__(self) -> None:
        if self.num_outputs < 2:
            raise ValueError(f"a segmenter needs background + at least one defect class, got {self.num_outputs}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["depth"] = list(self.depth)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmenterConfig:
        return cls(**{**data, "depth": tuple(data["depth"])})


class Segmenter(nn.Module):
    """Top-down decoder: each backbone stage is projected to `decoder_width` (1x1), the coarser map is upsampled
    and added, and a 3x3 conv smooths the sum; the stride-4 result goes through a 3x3 conv and a 1x1 classifier,
    and the logits are upsampled (bilinear) to the input size."""

    def __init__(self, cfg: SegmenterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_encoder(cfg.backbone, cfg.in_channels, cfg.width, cfg.depth)
        d = cfg.decoder_width
        self.lateral = nn.ModuleList(nn.Conv2d(c, d, 1) for c in self.backbone.channels)
        self.smooth = nn.ModuleList(ConvBNAct(d, d, 3) for _ in self.backbone.channels[:-1])
        mix = ConvBNAct(d, d, 3)
        classifier = nn.Conv2d(d, cfg.num_outputs, 1)
        self.head = nn.Sequential(mix, classifier)
        # Start every pixel at ~1% defect probability: the loss is not swamped by background in the first steps
        # (the focal-loss prior of RetinaNet).
        nn.init.constant_(conv_bias(classifier), 0.0)
        with torch.no_grad():
            conv_bias(classifier)[0] = 4.6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        y = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            skip = self.lateral[i](feats[i])
            y = self.smooth[i](skip + F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False))
        return F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)
