"""Compact ResNet-style image classifier."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from crux.train.models.common import ResNetBackbone

POOLS = ("avg", "avgmax")


@dataclass(frozen=True)
class ClassifierConfig:
    num_classes: int
    in_channels: int = 1
    width: int = 32
    depth: tuple[int, ...] = (1, 1, 2, 1)
    dropout: float = 0.0
    # "avg": global average pooling. "avgmax": average and max concatenated; a defect covering one cell of the last
    # feature map is diluted ~50x by the average alone, the max keeps it.
    pool: str = "avg"

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
    """ResNet backbone, global average pool, linear head. forward returns logits (B, num_classes)."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNetBackbone(cfg.in_channels, cfg.width, cfg.depth)
        self.dropout = nn.Dropout(cfg.dropout)
        pooled = self.backbone.channels[-1] * (2 if cfg.pool == "avgmax" else 1)
        self.fc = nn.Linear(pooled, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.backbone(x)[-1]
        pooled = feat.mean(dim=(2, 3))
        if self.cfg.pool == "avgmax":
            pooled = torch.cat([pooled, feat.amax(dim=(2, 3))], dim=1)
        return self.fc(self.dropout(pooled))
