"""Synthetic anomalies on normal images (DRAEM-style), torch only: what the `anomaly` kind learns to segment.

A new line has good parts but no labelled defects. The segmenter is trained to find anomalies pasted on OK images:
Perlin-noise masks filled with a foreign texture (another image of the line, jittered; or noise; or the image itself
darkened / brightened), cut-paste patches and thin scars moved from elsewhere on the same part, and, when a line
has some, real defect crops. Nothing is downloaded: every texture comes from the line's own images or from noise.

Contract: `synthesize` changes pixels only inside the mask it returns (a pixel outside it is bit-identical to the
input), and the mask marks every pasted pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# The ways an anomaly is made (see `synthesize`); weights are relative draw frequencies.
METHODS = ("foreign", "noise", "shade", "cutpaste", "scar", "defect")


@dataclass(frozen=True)
class SynthesisConfig:
    # Share of training images that get an anomaly (DRAEM: 0.5); the rest teach "nothing here".
    anomaly_prob: float = 0.5
    # Perlin scales 2**k cells per side, k in [min_scale, max_scale): large blobs down to specks.
    min_scale: int = 0
    max_scale: int = 6
    # Thresholded Perlin noise above this is anomalous (0.5 of a noise in about [-0.7, 0.7]: ~10-25% area).
    threshold: float = 0.5
    # Opacity of the pasted texture, uniform in [min_opacity, 1]: faint anomalies teach the subtle ones.
    min_opacity: float = 0.3
    # Only pixels that change by at least this much (of the 0..1 range) are pasted and labelled: texture from the
    # same line often equals the part's own, and an invisible "anomaly" labelled as one teaches the model to fire
    # on normal surface (on Magnetic Tile: high OK scores, val AUROC stuck near 0.7 without this).
    min_change: float = 8 / 255
    # Relative frequency of each method in METHODS ("defect" only counts when crops are given).
    weights: tuple[float, ...] = (3.0, 1.0, 2.0, 1.0, 1.0, 2.0)


def perlin_noise(height: int, width: int, res: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """2-D gradient (Perlin) noise of `res` = (cells down, cells across), float32 (height, width), about in [-1, 1]."""
    ry, rx = res
    gh, gw = math.ceil(height / ry) * ry, math.ceil(width / rx) * rx  # a whole number of pixels per cell
    angles = 2 * math.pi * torch.rand(ry + 1, rx + 1, generator=generator)
    grads = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)
    ys = torch.arange(gh, dtype=torch.float32) * ry / gh
    xs = torch.arange(gw, dtype=torch.float32) * rx / gw
    iy, ix = ys.floor().long(), xs.floor().long()
    fy, fx = (ys - iy)[:, None].expand(gh, gw), (xs - ix)[None, :].expand(gh, gw)

    def corner(oy: int, ox: int) -> torch.Tensor:
        g = grads[(iy + oy)[:, None], (ix + ox)[None, :]]
        return g[..., 0] * (fx - ox) + g[..., 1] * (fy - oy)

    def fade(t: torch.Tensor) -> torch.Tensor:
        return t * t * t * (t * (t * 6 - 15) + 10)

    ux, uy = fade(fx), fade(fy)
    top = torch.lerp(corner(0, 0), corner(0, 1), ux)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), ux)
    return (math.sqrt(2) * torch.lerp(top, bottom, uy))[:height, :width]


def perlin_mask(size: int, generator: torch.Generator, cfg: SynthesisConfig) -> torch.Tensor:
    """A bool (size, size) blob mask: thresholded Perlin noise of a random scale per axis (rarely empty)."""

    def scale() -> int:
        power: int = 2 ** int(torch.randint(cfg.min_scale, cfg.max_scale, (1,), generator=generator))
        return power

    mask = torch.zeros(size, size, dtype=torch.bool)
    for _ in range(4):  # a coarse noise can stay below the threshold everywhere: draw again
        mask = perlin_noise(size, size, (scale(), scale()), generator) > cfg.threshold
        if mask.any():
            break
    return mask


def _uniform(lo: float, hi: float, generator: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _jitter(texture: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips / transpose and a gain and offset: another part's texture, not a copy of this one."""
    if torch.rand((), generator=generator) < 0.5:
        texture = texture.flip(-1)
    if torch.rand((), generator=generator) < 0.5:
        texture = texture.flip(-2)
    if torch.rand((), generator=generator) < 0.5:
        texture = texture.transpose(-1, -2)
    return texture * _uniform(0.6, 1.4, generator) + _uniform(-0.25, 0.25, generator)


def _rect(size: int, h: int, w: int, generator: torch.Generator) -> tuple[int, int]:
    y = int(torch.randint(0, max(size - h, 0) + 1, (1,), generator=generator))
    x = int(torch.randint(0, max(size - w, 0) + 1, (1,), generator=generator))
    return y, x


def synthesize(
    image: torch.Tensor,
    other: torch.Tensor,
    generator: torch.Generator,
    cfg: SynthesisConfig = SynthesisConfig(),
    defects: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    method: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One anomaly on one image. image, other: float (C, S, S) in [0, 1] (other: another image of the line, the
    source of foreign texture); defects: real defect crops (float (C, h, w), bool (h, w)). Returns (image with the
    anomaly, bool (S, S) mask); pixels outside the mask are the input's, pixels inside it (synthetic methods) differ
    by at least cfg.min_change. `method`: one of METHODS, else drawn."""
    c, s, _ = image.shape
    if method is None:
        weights = torch.tensor(cfg.weights[: len(METHODS)], dtype=torch.float32)
        if not defects:
            weights[METHODS.index("defect")] = 0.0
        method = METHODS[int(torch.multinomial(weights, 1, generator=generator))]
    mask = torch.zeros(s, s, dtype=torch.bool)
    source = image
    if method in ("foreign", "noise", "shade"):
        mask = perlin_mask(s, generator, cfg)
        if method == "foreign":
            source = _jitter(other, generator)
        elif method == "noise":
            res = 2 ** int(torch.randint(2, 7, (1,), generator=generator))
            noise = perlin_noise(s, s, (res, res), generator)
            source = (0.5 + _uniform(0.2, 0.5, generator) * noise).expand(c, s, s)
        else:
            # Darker or brighter than the part itself: holes, stains, uneven lighting.
            gain = (
                _uniform(0.3, 0.75, generator)
                if torch.rand((), generator=generator) < 0.6
                else _uniform(1.3, 1.8, generator)
            )
            source = image * gain
    elif method in ("cutpaste", "scar"):
        if method == "cutpaste":
            h, w = (int(torch.randint(max(s // 16, 2), max(s // 4, 3), (1,), generator=generator)) for _ in range(2))
        else:  # a thin long patch: scratches and cracks
            h = int(torch.randint(max(s // 16, 4), max(s // 3, 5), (1,), generator=generator))
            w = int(torch.randint(1, max(s // 40, 2) + 1, (1,), generator=generator))
            if torch.rand((), generator=generator) < 0.5:
                h, w = w, h
        sy, sx = _rect(s, h, w, generator)
        patch = _jitter(image[:, sy : sy + h, sx : sx + w], generator)
        if patch.shape[-2:] != (h, w):  # transposed
            h, w = patch.shape[-2:]
        ty, tx = _rect(s, h, w, generator)
        source = image.clone()
        source[:, ty : ty + h, tx : tx + w] = patch
        mask[ty : ty + h, tx : tx + w] = True
    elif method == "defect":
        crop, crop_mask = defects[int(torch.randint(0, len(defects), (1,), generator=generator))]
        h, w = min(crop.shape[-2], s), min(crop.shape[-1], s)
        ty, tx = _rect(s, h, w, generator)
        source = image.clone()
        source[:, ty : ty + h, tx : tx + w] = crop[:c, :h, :w]
        mask[ty : ty + h, tx : tx + w] = crop_mask[:h, :w]
    else:
        raise ValueError(f"unknown anomaly method {method!r}; known: {', '.join(METHODS)}")
    opacity = 1.0 if method == "defect" else _uniform(cfg.min_opacity, 1.0, generator)
    blended = (image * (1 - opacity) + source.clamp(0, 1) * opacity).clamp(0, 1)
    if method != "defect":
        mask = mask & ((blended - image).abs().amax(dim=0) >= cfg.min_change)
    return torch.where(mask[None], blended, image), mask


def synthesize_batch(
    images: torch.Tensor,
    generator: torch.Generator,
    cfg: SynthesisConfig = SynthesisConfig(),
    defects: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    prob: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 (B, C, S, S) OK images → (uint8 images, int64 (B, S, S) masks with 1 = anomaly, bool (B,) is_ng).

    Each image gets an anomaly with probability `prob` (default cfg.anomaly_prob); foreign texture comes from the
    batch's other images. An image whose drawn mask is empty stays OK (its mask is all zero)."""
    b, _, s, _ = images.shape
    out = images.clone()
    masks = torch.zeros(b, s, s, dtype=torch.int64)
    p = cfg.anomaly_prob if prob is None else prob
    chosen = torch.rand(b, generator=generator) < p
    for i in torch.nonzero(chosen).flatten().tolist():
        j = (i + 1 + int(torch.randint(0, max(b - 1, 1), (1,), generator=generator))) % b
        image = images[i].float() / 255.0
        result, mask = synthesize(image, images[j].float() / 255.0, generator, cfg, defects)
        # Quantise inside the mask only: outside it the uint8 input is kept bit for bit.
        out[i] = torch.where(mask[None], (result * 255.0).round().to(torch.uint8), images[i])
        masks[i] = mask.to(torch.int64)
    return out, masks, masks.flatten(1).any(dim=1)


def defect_crops(
    images: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], margin: int = 2
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Real defect crops (float (C, h, w) in [0, 1], bool (h, w)) from uint8 images and their bool defect masks:
    the box around each mask's pixels plus `margin`; images without defect pixels give none."""
    crops = []
    for image, mask in zip(images, masks, strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if ys.numel() == 0:
            continue
        y0, y1 = max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin + 1, mask.shape[0])
        x0, x1 = max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin + 1, mask.shape[1])
        crops.append((image[:, y0:y1, x0:x1].float() / 255.0, mask[y0:y1, x0:x1].bool()))
    return crops
