"""EfficientNet-Lite in plain torch, with efficientnet_pytorch's key names, and the strict loader of its ImageNet
weights (the registry in `crux.train.models.encoders` finds both by name).

EfficientNet-Lite is EfficientNet without squeeze-excitation, with ReLU6 and a fixed stem and head: built for INT8
edge inference.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from crux.data.store import sha256_file
from crux.errors import CruxError, PretrainedWeightsError
from crux.train.models.common import Encoder

# EfficientNet-B0's block table: (kernel, stride, expand ratio, in channels, out channels, repeats).
_B0_BLOCKS = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
# (width multiplier, depth multiplier) of each Lite variant; Lite keeps the stem (32) and the head (1280) fixed and
# does not repeat the first and last block rows (efficientnet_lite_builder's fix_head_stem).
_LITE_SCALING = {"efficientnet-lite0": (1.0, 1.0), "efficientnet-lite1": (1.0, 1.1), "efficientnet-lite2": (1.1, 1.2)}
# The block rows after which a feature map is returned, and their strides: 4, 8, 16, 32 like the ResNet backbone's
# four stages, so every head (FPN, decoder, pooling) works on either.
_LITE_OUT_ROWS = (1, 2, 4, 6)
LITE_OUT_STRIDES = (4, 8, 16, 32)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * scaled else new


class _MBConv(nn.Module):
    """Inverted residual block with efficientnet_pytorch's attribute names (so the package's file loads as is)."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=1e-3, momentum=0.01)
        # Symmetric k // 2 padding (not TensorFlow's asymmetric "same"): measured to transfer the weights as well,
        # and an ordinary Conv2d for every exporter and runtime.
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=1e-3, momentum=0.01)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        out: torch.Tensor = self._bn2(self._project_conv(y))
        return out + x if self.residual else out


class EfficientNetLite(Encoder):
    """The EfficientNet-Lite feature extractor (stem + blocks; the 1280-channel head and the ImageNet classifier
    are not part of it): forward returns the maps at strides 4, 8, 16 and 32."""

    def __init__(self, variant: str = "efficientnet-lite0", in_channels: int = 3) -> None:
        super().__init__()
        if variant not in _LITE_SCALING:
            raise CruxError(f"train.model.backbone: unknown EfficientNet-Lite variant {variant!r}")
        width, depth = _LITE_SCALING[variant]
        self.variant = variant
        self._conv_stem = nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
        self.act = nn.ReLU6(inplace=True)
        blocks: list[nn.Module] = []
        self._row_ends: list[int] = []
        for row, (k, s, e, c_in, c_out, n) in enumerate(_B0_BLOCKS):
            c_in = 32 if row == 0 else _round_filters(c_in, width)
            c_out = _round_filters(c_out, width)
            repeats = n if row in (0, len(_B0_BLOCKS) - 1) else math.ceil(depth * n)
            for i in range(repeats):
                blocks.append(_MBConv(k, s if i == 0 else 1, e, c_in if i == 0 else c_out, c_out))
            self._row_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._taps = {self._row_ends[r]: i for i, r in enumerate(_LITE_OUT_ROWS)}
        self.channels = [_round_filters(_B0_BLOCKS[r][4], width) for r in _LITE_OUT_ROWS]
        self.strides = list(LITE_OUT_STRIDES)

    def forward(self, x: torch.Tensor, maps: int | None = None) -> list[torch.Tensor]:
        """The feature maps, finest first; with `maps`, only the first `maps` of them, and the blocks after the
        last one are not run (PatchCore stops at stride 16: a third of Lite0's compute is after it)."""
        x = self.act(self._bn0(self._conv_stem(x)))
        feats: list[torch.Tensor] = []
        wanted = len(self.channels) if maps is None else maps
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._taps:
                feats.append(x)
                if len(feats) == wanted:
                    break
        return feats


# The tensors of the package's file that the feature extractor does not use: the 1280-channel head conv, its
# BatchNorm and the ImageNet classifier. A strict load accounts for them by name and shape, nothing else.
_LITE_HEAD_KEYS = (
    "_conv_head.weight",
    "_bn1.weight",
    "_bn1.bias",
    "_bn1.running_mean",
    "_bn1.running_var",
    "_bn1.num_batches_tracked",
    "_fc.weight",
    "_fc.bias",
)


def load_pretrained(encoder: nn.Module, name: str, path: Path) -> dict[str, object]:
    """Load encoder `name`'s ImageNet weights into `encoder`, strictly: every tensor of the file is either loaded
    (same name, same shape) or one of the ImageNet head's tensors the encoder leaves out; anything missing,
    unexpected or of another shape is a PretrainedWeightsError naming the file and the tensor.

    A one-channel (grayscale) encoder gets the stem's RGB kernels summed over the colour axis: on a gray image
    replicated to RGB that is the very same convolution, at a third of the stem's input.
    Returns what the training log records (file, sha256, folded stem).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        raise PretrainedWeightsError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path}: not a state_dict of tensors")
    own = encoder.state_dict()
    head = {k: state[k] for k in _LITE_HEAD_KEYS if k in state}
    body = {k: v for k, v in state.items() if k not in head}
    missing_head = sorted(set(_LITE_HEAD_KEYS) - set(head))
    if missing_head:
        raise PretrainedWeightsError(f"{path}: missing tensor(s) {', '.join(missing_head)}: not {name} weights")
    folded = False
    stem = body.get("_conv_stem.weight")
    if stem is not None and "_conv_stem.weight" in own and own["_conv_stem.weight"].shape[1] != stem.shape[1]:
        if own["_conv_stem.weight"].shape[1] != 1 or stem.shape[1] != 3:
            raise PretrainedWeightsError(
                f"{path}: stem takes {stem.shape[1]} channels, the encoder {own['_conv_stem.weight'].shape[1]}"
            )
        body["_conv_stem.weight"] = stem.sum(dim=1, keepdim=True)
        folded = True
    for key, value in body.items():
        if key in own and own[key].shape != value.shape:
            raise PretrainedWeightsError(
                f"{path}: tensor {key} has shape {tuple(value.shape)}, {name} needs {tuple(own[key].shape)}"
            )
    if not all(torch.isfinite(v).all() for v in body.values() if v.is_floating_point()):
        raise PretrainedWeightsError(f"{path}: holds non-finite values (a corrupted file?)")
    result = encoder.load_state_dict(body, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise PretrainedWeightsError(
            f"{path}: not {name} weights: missing {', '.join(result.missing_keys[:5]) or 'none'}, "
            f"unexpected {', '.join(result.unexpected_keys[:5]) or 'none'}"
        )
    return {"file": str(path), "sha256": sha256_file(path), "stem_folded_to_gray": folded, "tensors": len(state)}
