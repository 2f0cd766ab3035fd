"""Anchor-free detector: ResNet backbone, FPN, FCOS-style decoupled head, and its training loss.

forward returns the raw tensor described in `crux.postprocess` (B, N, 5 + C): [l, t, r, b] distances in input
pixels, a centerness logit and class logits per anchor point — decoding and NMS happen in `crux.postprocess`,
outside the exported graph.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crux.postprocess import anchor_points
from crux.train.models.common import ConvBNAct, conv_bias
from crux.train.models.encoders import build_encoder, encoder_strides


@dataclass(frozen=True)
class DetectorConfig:
    num_classes: int
    in_channels: int = 1
    width: int = 32
    depth: tuple[int, ...] = (1, 1, 2, 1)
    neck_width: int = 64
    strides: tuple[int, ...] = (8, 16, 32)
    head_convs: int = 2
    backbone: str = "resnet"

    def __post_init__(self) -> None:
        available = encoder_strides(self.backbone, self.depth)
        missing = [s for s in self.strides if s not in available]
        if missing:
            raise ValueError(f"strides {missing} not produced by the backbone (available {available})")
        if self.neck_width % 8:
            raise ValueError(f"neck_width {self.neck_width} must be a multiple of 8 (GroupNorm groups)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["depth"] = list(self.depth)
        d["strides"] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        return cls(**{**data, "depth": tuple(data["depth"]), "strides": tuple(data["strides"])})


def _gn_conv(c: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: the head is shared across pyramid levels whose statistics differ (as in FCOS).
    return nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.GroupNorm(8, c), nn.SiLU(inplace=True))


class Detector(nn.Module):
    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_encoder(cfg.backbone, cfg.in_channels, cfg.width, cfg.depth)
        self.level_idx = [self.backbone.strides.index(s) for s in cfg.strides]
        c = cfg.neck_width
        self.lateral = nn.ModuleList(nn.Conv2d(self.backbone.channels[i], c, 1) for i in self.level_idx)
        self.smooth = nn.ModuleList(ConvBNAct(c, c, 3) for _ in self.level_idx)
        self.cls_tower = nn.Sequential(*[_gn_conv(c) for _ in range(cfg.head_convs)])
        self.reg_tower = nn.Sequential(*[_gn_conv(c) for _ in range(cfg.head_convs)])
        self.cls_pred = nn.Conv2d(c, cfg.num_classes, 3, 1, 1)
        self.reg_pred = nn.Conv2d(c, 4, 3, 1, 1)
        self.ctr_pred = nn.Conv2d(c, 1, 3, 1, 1)
        # One learnable scale per level: the shared head regresses distances of very different sizes.
        self.scales = nn.Parameter(torch.ones(len(cfg.strides)))
        for m in [self.cls_pred, self.reg_pred, self.ctr_pred]:
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(conv_bias(m))
        # Focal-loss prior: start predicting "background" with p = 0.01, or the loss explodes on the first steps.
        nn.init.constant_(conv_bias(self.cls_pred), -math.log((1 - 0.01) / 0.01))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        laterals = [lat(feats[i]) for lat, i in zip(self.lateral, self.level_idx, strict=True)]
        # Top-down FPN: coarse semantics flow into the fine levels.
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = []
        for level, (smooth, lat) in enumerate(zip(self.smooth, laterals, strict=True)):
            p = smooth(lat)
            cls = self.cls_pred(self.cls_tower(p))
            reg_feat = self.reg_tower(p)
            ltrb = F.softplus(self.reg_pred(reg_feat) * self.scales[level]) * float(self.cfg.strides[level])
            ctr = self.ctr_pred(reg_feat)
            out = torch.cat([ltrb, ctr, cls], dim=1)  # (B, 5 + C, H, W)
            outs.append(out.flatten(2).transpose(1, 2))  # (B, H*W, 5 + C), row-major like anchor_points
        return torch.cat(outs, dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Loss


def _giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_p = (pred[:, 2:] - pred[:, :2]).clamp(min=0).prod(dim=1)
    area_t = (target[:, 2:] - target[:, :2]).clamp(min=0).prod(dim=1)
    union = area_p + area_t - inter
    iou = inter / union.clamp(min=1e-6)
    enclose = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(min=0).prod(dim=1)
    giou = iou - (enclose - union) / enclose.clamp(min=1e-6)
    return 1.0 - giou


class DetectionLoss(nn.Module):
    """FCOS loss: focal loss on classes, GIoU on boxes, BCE on centerness; FCOS assignment with centre sampling."""

    # Buffers (registered in __init__), declared for the type checker: nn.Module's __getattr__ types them loosely.
    points: torch.Tensor
    point_strides: torch.Tensor
    range_lo: torch.Tensor
    range_hi: torch.Tensor

    def __init__(self, image_size: int, strides: tuple[int, ...], num_classes: int, center_radius: float = 2.5) -> None:
        super().__init__()
        points, point_strides = anchor_points(image_size, strides)
        self.register_buffer("points", torch.from_numpy(points.copy()), persistent=False)
        self.register_buffer("point_strides", torch.from_numpy(point_strides.copy()), persistent=False)
        # Regression range per level (FCOS: 8x the stride); the last level takes everything larger.
        lo, hi = [], []
        for i, s in enumerate(strides):
            n = (-(-image_size // s)) ** 2
            lo.append(np.full(n, 0.0 if i == 0 else 8.0 * strides[i - 1], np.float32))
            hi.append(np.full(n, np.inf if i == len(strides) - 1 else 8.0 * s, np.float32))
        self.register_buffer("range_lo", torch.from_numpy(np.concatenate(lo)), persistent=False)
        self.register_buffer("range_hi", torch.from_numpy(np.concatenate(hi)), persistent=False)
        self.num_classes = num_classes
        self.center_radius = center_radius

    @torch.no_grad()
    def assign(self, boxes: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per point: class index (num_classes = background) and target box (N, 4)."""
        n = self.points.shape[0]
        if boxes.numel() == 0:
            return torch.full((n,), self.num_classes, dtype=torch.long, device=boxes.device), torch.zeros(
                n, 4, device=boxes.device
            )
        px, py = self.points[:, 0:1], self.points[:, 1:2]
        ltrb = torch.stack([px - boxes[:, 0], py - boxes[:, 1], boxes[:, 2] - px, boxes[:, 3] - py], dim=2)  # N,M,4
        inside = ltrb.min(dim=2).values > 0
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        r = self.point_strides[:, None] * self.center_radius
        near_centre = ((px - cx).abs() < r) & ((py - cy).abs() < r)
        max_d = ltrb.max(dim=2).values
        in_range = (max_d >= self.range_lo[:, None]) & (max_d <= self.range_hi[:, None])
        ok = inside & near_centre & in_range
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None, :].expand(n, -1)
        area = torch.where(ok, area, torch.full_like(area, float("inf")))
        min_area, gt_idx = area.min(dim=1)  # ambiguous points go to the smallest box
        cls = torch.where(torch.isinf(min_area), torch.full_like(gt_idx, self.num_classes), labels[gt_idx])
        return cls, boxes[gt_idx]

    def forward(self, raw: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        raw = raw.float()
        cls_each, box_each = zip(*(self.assign(t["boxes"].float(), t["labels"]) for t in targets), strict=True)
        cls_t = torch.stack(cls_each)  # B, N
        box_t = torch.stack(box_each)  # B, N, 4
        pos = cls_t < self.num_classes
        num_pos = max(float(pos.sum().item()), 1.0)
        onehot = F.one_hot(cls_t, self.num_classes + 1)[..., : self.num_classes].float()
        from torch.nn.functional import binary_cross_entropy_with_logits as bce

        logits = raw[..., 5:]
        p = torch.sigmoid(logits)
        ce = bce(logits, onehot, reduction="none")
        p_t = p * onehot + (1 - p) * (1 - onehot)
        alpha_t = 0.25 * onehot + 0.75 * (1 - onehot)
        loss_cls = (alpha_t * (1 - p_t) ** 2 * ce).sum() / num_pos
        if pos.any():
            pts = self.points[None].expand(raw.shape[0], -1, -1)[pos]
            pred_boxes = torch.cat([pts - raw[..., :2][pos], pts + raw[..., 2:4][pos]], dim=1)
            tgt = box_t[pos]
            t_ltrb = torch.cat([pts - tgt[:, :2], tgt[:, 2:] - pts], dim=1)
            lr, tb = t_ltrb[:, [0, 2]], t_ltrb[:, [1, 3]]
            centerness = torch.sqrt(
                (lr.min(dim=1).values / lr.max(dim=1).values) * (tb.min(dim=1).values / tb.max(dim=1).values)
            )
            loss_box = (_giou_loss(pred_boxes, tgt) * centerness).sum() / centerness.sum().clamp(min=1e-6)
            loss_ctr = bce(raw[..., 4][pos], centerness, reduction="mean")
        else:
            loss_box = raw[..., :4].sum() * 0.0
            loss_ctr = raw[..., 4].sum() * 0.0
        total = loss_cls + 2.0 * loss_box + loss_ctr
        return {
            "loss": total,
            "loss_cls": loss_cls.detach(),
            "loss_box": loss_box.detach(),
            "loss_ctr": loss_ctr.detach(),
        }
