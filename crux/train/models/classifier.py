"""Compact ResNet-style image classifier."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from crux.train.models.encoders import build_encoder

POOLS = ("avg", "avgmax", "pyramid")


@dataclass(frozen=True)
class ClassifierConfig:
    num_classes: int
    in_channels: int = 1
    width: int = 32
    depth: tuple[int, ...] = (1, 1, 2, 1)
    dropout: float = 0.0
    # "avg": global average pooling. "avgmax": average and max concatenated; a defect covering one cell of the last
    # feature map is diluted ~50x by the average alone, the max keeps it. "pyramid": average and max of every
    # encoder level (strides 4-32): fine texture and small defects beside the deep semantics (the probe that put
    # frozen ImageNet features at 98-100% on NEU and Magnetic Tile pooled four blocks this way).
    pool: str = "avg"
    # The encoder (crux.train.models.encoders): "resnet" (width, depth size it) or an EfficientNet-Lite.
    backbone: str = "resnet"

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"pool {self.pool!r} is not one of {', '.join(POOLS)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["depth"] = list(self.depth)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        return cls(**{**data, "depth": tuple(data["depth"])})


class Classifier(nn.Module):
    """Encoder, global pooling, linear head. forward returns logits (B, num_classes); `pooled` is what the head
    sees (the fast-head mode caches it)."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_encoder(cfg.backbone, cfg.in_channels, cfg.width, cfg.depth)
        self.dropout = nn.Dropout(cfg.dropout)
        channels = self.backbone.channels
        pooled = {"avg": channels[-1], "avgmax": 2 * channels[-1], "pyramid": 2 * sum(channels)}[cfg.pool]
        self.fc = nn.Linear(pooled, cfg.num_classes)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        if self.cfg.pool == "pyramid":
            stats = [t for f in feats for t in (f.mean(dim=(2, 3)), f.amax(dim=(2, 3)))]
            pyramid: torch.Tensor = torch.cat(stats, dim=1)
            return pyramid
        feat = feats[-1]
        pooled: torch.Tensor = feat.mean(dim=(2, 3))
        if self.cfg.pool == "avgmax":
            pooled = torch.cat([pooled, feat.amax(dim=(2, 3))], dim=1)
        return pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(self.dropout(self.pooled(x)))
        return logits
