"""PatchCore-style anomaly model: a frozen ImageNet-pretrained encoder, locally averaged multi-block patch features,
and a memory bank of the OK parts' patches; a patch's anomaly is its distance to the nearest bank entry.

Nothing is trained: `crux.train.patchcore_fit` fills the bank (greedy coreset of the train split's OK patches) and the
score scale. The nearest-neighbour search is part of the graph as plain MatMul / Add / ReduceMin ops
(||a||^2 - 2ab + ||b||^2, then the min over the bank), so the model exports to ONNX, quantises and runs on the edge
like any network. Its output keeps the anomaly kind's contract: (B, 2, S, S) logits, channel 0 zero and channel 1
the calibrated patch score (distance - centre) / scale, so softmax gives p(anomalous) = sigmoid(score) and
`crux.postprocess.postprocess_segment` decodes it as it decodes the synthesis model's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crux.errors import CruxError
from crux.train.models.encoders import build_encoder


@dataclass(frozen=True)
class PatchCoreConfig:
    in_channels: int = 1
    # An encoder with ImageNet weights (crux.train.models.encoders): random features make a blind bank.
    backbone: str = "efficientnet-lite0"
    # The encoder maps whose features are concatenated (the coarser upsampled to the finest): PatchCore's
    # mid-level blocks, generic enough to transfer, fine enough for defects of a few pixels.
    strides: tuple[int, ...] = (8, 16)
    # Rows of the memory bank (the coreset size); fixed here so a saved bank always fits the rebuilt buffer.
    bank_size: int = 4096
    # Side of the local average over each map (PatchCore's neighbourhood aggregation; 1 = none).
    neighbourhood: int = 3
    # Bank rows per MatMul: bounds the (patches x rows) distance matrix of a large batch (evaluation's 64 images).
    chunk: int = 2048
    # Marks the bundle's config as this anomaly method (crux.train.models.ANOMALY_METHODS).
    method: str = "patchcore"

    def __post_init__(self) -> None:
        if self.bank_size < 1 or self.chunk < 1:
            raise CruxError(f"patchcore: bank_size {self.bank_size} and chunk {self.chunk} must be >= 1")
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise CruxError(f"patchcore: neighbourhood {self.neighbourhood} must be an odd number >= 1")
        if not self.strides or list(self.strides) != sorted(set(self.strides)):
            raise CruxError(f"patchcore: strides {list(self.strides)} must be increasing and distinct")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["strides"] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatchCoreConfig:
        return cls(**{**data, "strides": tuple(data["strides"])})


class PatchCore(nn.Module):
    """forward(x) → (B, 2, S, S) logits: [0, (d - centre) / scale] with d a patch's distance to the bank, bilinearly
    upsampled from the finest chosen stride to the input size."""

    # Buffers (registered in __init__), declared for the type checker: nn.Module's __getattr__ types them loosely.
    mean: torch.Tensor
    bank_t: torch.Tensor
    bank_sq: torch.Tensor
    centre: torch.Tensor
    scale: torch.Tensor

    def __init__(self, cfg: PatchCoreConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_encoder(cfg.backbone, cfg.in_channels)
        strides = list(self.backbone.strides)
        missing = [s for s in cfg.strides if s not in strides]
        if missing:
            raise CruxError(f"patchcore: stride(s) {missing} not produced by {cfg.backbone} (strides {strides})")
        self.taps = [strides.index(s) for s in cfg.strides]
        self.dim = sum(self.backbone.channels[i] for i in self.taps)
        # The bank as MatMul wants it: -2 * bank^T (D, M) and ||b||^2 (M,), so a patch's squared distance is
        # ||a||^2 + a @ bank_t + bank_sq: one MatMul and two Adds, no transposes or scalings in the graph.
        # Features are centred on the bank's mean before the distances: ||a||^2 - 2ab + ||b||^2 then subtracts
        # numbers of the size of the distances, not of the raw norms, and float32 (torch vs ONNX Runtime, INT8)
        # loses far less to the cancellation.
        self.register_buffer("mean", torch.zeros(self.dim, 1, 1))
        self.register_buffer("bank_t", torch.zeros(self.dim, cfg.bank_size))
        self.register_buffer("bank_sq", torch.zeros(cfg.bank_size))
        # Score calibration from the OK train patches' own distances (crux.train.patchcore_fit.fit_patchcore).
        self.register_buffer("centre", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    def set_bank(self, bank: torch.Tensor) -> None:
        """Install a (bank_size, D) bank of patch features (as `patch_features` gave them before any bank: with
        a zero mean)."""
        if tuple(bank.shape) != (self.cfg.bank_size, self.dim):
            raise CruxError(
                f"patchcore: bank of shape {tuple(bank.shape)}, expected ({self.cfg.bank_size}, {self.dim})"
            )
        bank = bank.detach().float()
        mean = bank.mean(dim=0)
        self.mean.copy_(mean[:, None, None])
        bank = bank - mean
        self.bank_t.copy_(-2.0 * bank.T)
        self.bank_sq.copy_((bank * bank).sum(dim=1))

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) locally averaged features at the finest chosen stride, minus the bank's mean."""
        maps = self.backbone(x, max(self.taps) + 1)
        k = self.cfg.neighbourhood
        feats = []
        size = maps[self.taps[0]].shape[-2:]
        for i in self.taps:
            f = maps[i]
            if k > 1:
                f = F.avg_pool2d(f, k, 1, k // 2, count_include_pad=False)
            if i != self.taps[0]:  # every other map is coarser (taps are finest first)
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            feats.append(f)
        return torch.cat(feats, dim=1) - self.mean

    def distances(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, N, D) patch features → (B, N) Euclidean distance to the nearest bank row."""
        a2 = (feats * feats).sum(dim=-1, keepdim=True)
        best: torch.Tensor | None = None
        m, step = self.cfg.bank_size, self.cfg.chunk
        for start in range(0, m, step):  # a fixed number of chunks: the exported graph unrolls them
            d2 = torch.matmul(feats, self.bank_t[:, start : start + step]) + self.bank_sq[start : start + step]
            low = d2.amin(dim=-1)
            best = low if best is None else torch.minimum(best, low)
        assert best is not None
        # ||a||^2 - 2ab + ||b||^2 can dip just below 0 in float32 for a patch that is (nearly) in the bank.
        return torch.sqrt(torch.clamp(best + a2.squeeze(-1), min=1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.patch_features(x)
        b, _, h, w = f.shape
        dist = self.distances(f.flatten(2).transpose(1, 2))
        score = ((dist - self.centre) / self.scale).reshape(b, 1, h, w)
        score = F.interpolate(score, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([torch.zeros_like(score), score], dim=1)
