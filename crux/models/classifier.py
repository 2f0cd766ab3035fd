"""Compact ResNet-style image classifier."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from crux.models.common import ResNetBackbone


@dataclass(frozen=True)
class ClassifierConfig:
    num_classes: int
    in_channels: int = 1
    width: int = 32
    depth: tuple[int, ...] = (1, 1, 2, 1)
    dropout: float = 0.0

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
        self.fc = nn.Linear(self.backbone.channels[-1], cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.backbone(x)[-1]
        return self.fc(self.dropout(feat.mean(dim=(2, 3))))
