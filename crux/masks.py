"""Pixel masks: the conversions segmentation shares between import, snapshot, export and health checks.

Conventions (the dataset contract of the `segment` kind, see README "Segment projects"):

- A *region* is a bool array H x W at the image's original resolution (True = the region's pixels).
- A *class mask* is a uint8 array H x W: 0 = background, v = 1 + the index of the class in the
  dataset's classes (classes.json order, which includes the OK class when one is declared).
- Continuous pixel coordinates put the image between 0 and W (pixel i covers [i, i + 1)); Label Studio's
  percent coordinates are those times 100 / W. A polygon covers the pixels whose centres lie inside it or on
  its edge.

numpy and Pillow only; OpenCV (connected components, contours) and pycocotools are imported where needed.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crux.errors import CruxError

if TYPE_CHECKING:
    from numpy.typing import NDArray

MASKS = "masks"  # folder of a dataset version holding the class masks, beside images/
# Source masks (Magnetic Tile, a mask folder): a single-channel image, white (or 1) = defect. The public Magnetic
# Tile masks were resized with interpolation, so their edges hold grey values; those are binarised at this level.
BINARY_THRESHOLD = 128
# …but a "mask" with more grey than this share of its pixels is something else (a photo, a soft map) and refused.
MAX_GREY_FRACTION = 0.10


class MaskError(CruxError, ValueError):
    """A mask cannot be read or does not fit its image; the message says why (callers add the file)."""


# --------------------------------------------------------------------------------------------------
# Class masks as PNG: the bytes a dataset version stores


def encode_png(class_mask: NDArray[Any]) -> bytes:
    """8-bit single-channel PNG of a class mask; no metadata, so equal masks give equal bytes."""
    import numpy as np
    from PIL import Image

    array = np.ascontiguousarray(class_mask, dtype=np.uint8)
    if array.ndim != 2:
        raise MaskError(f"a class mask is 2-D, got shape {array.shape}")
    out = io.BytesIO()
    Image.fromarray(array, mode="L").save(out, format="PNG")
    return out.getvalue()


def decode_png(data: bytes) -> NDArray[Any]:
    """A stored class mask (mode L PNG) → uint8 array H x W."""
    import numpy as np

    from crux.postprocess import open_image

    try:
        with open_image(io.BytesIO(data), name="mask") as image:
            if image.mode != "L":
                raise MaskError(f"a class mask is an 8-bit single-channel PNG, got mode {image.mode}")
            return np.array(image, dtype=np.uint8)
    except MaskError:
        raise
    except Exception as exc:  # ImageError (unreadable, over the pixel limit) and whatever else Pillow raises
        raise MaskError(f"not a readable PNG ({type(exc).__name__}: {exc})") from exc


def mask_relpath(sha256: str) -> str:
    """Content-addressed place of a mask PNG in a dataset version: masks/ab/<sha256>.png."""
    return f"{MASKS}/{sha256[:2]}/{sha256}.png"


def write_mask(root: Path, png: bytes) -> str:
    """Store PNG bytes under `root` by their sha256 (idempotent); returns the path relative to `root`."""
    rel = mask_relpath(hashlib.sha256(png).hexdigest())
    path = root / rel
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(png)
        tmp.replace(path)
    return rel


def paint(regions: Iterable[tuple[int, NDArray[Any]]], width: int, height: int) -> NDArray[Any]:
    """A class mask from (class index, region) pairs, painted in the order given (later wins on overlap)."""
    import numpy as np

    out = np.zeros((height, width), dtype=np.uint8)
    for index, region in regions:
        if region.shape != (height, width):
            raise MaskError(f"a region of {region.shape[1]}x{region.shape[0]} px on a {width}x{height} image")
        if not 0 <= index < 255:
            raise MaskError(f"class index {index} does not fit an 8-bit mask")
        out[region] = index + 1
    return out


def class_pixels(class_mask: NDArray[Any], n_classes: int) -> list[int]:
    """Pixel count per class index (0 … n_classes - 1); background and out-of-range values are not counted."""
    import numpy as np

    counts = np.bincount(class_mask.ravel(), minlength=n_classes + 1)
    return [int(c) for c in counts[1 : n_classes + 1]]


def mask_iou(a: NDArray[Any], b: NDArray[Any]) -> float:
    """Class-aware pixel IoU of two class masks: pixels that agree on a defect class over pixels either marks.
    Two empty masks agree fully (1.0); masks of different sizes do not at all (0.0)."""
    import numpy as np

    if a.shape != b.shape:
        return 0.0
    union = int(np.count_nonzero((a > 0) | (b > 0)))
    if union == 0:
        return 1.0
    return int(np.count_nonzero((a == b) & (a > 0))) / union


# --------------------------------------------------------------------------------------------------
# Regions


def bbox(region: NDArray[Any]) -> tuple[float, float, float, float] | None:
    """Pixel box (x1, y1, x2, y2) around a region in continuous coordinates (x2 = last column + 1); None if empty."""
    import numpy as np

    ys = np.flatnonzero(region.any(axis=1))
    xs = np.flatnonzero(region.any(axis=0))
    if len(xs) == 0:
        return None
    return (float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1))


def components(region: NDArray[Any]) -> list[NDArray[Any]]:
    """The 8-connected parts of a region, ordered by their first pixel in row-major order (deterministic)."""
    import cv2
    import numpy as np

    count, labels = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
    parts = [labels == n for n in range(1, count)]
    return sorted(parts, key=lambda p: int(np.argmax(p.ravel())))


def component_sizes(region: NDArray[Any]) -> list[int]:
    """Pixel counts of the 8-connected parts of a region."""
    import cv2
    import numpy as np

    count, _, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    return [int(s) for s in stats[1:count, cv2.CC_STAT_AREA]]


def binary_source_mask(array: NDArray[Any], mode: str) -> NDArray[Any]:
    """A source mask image (white or 1 = defect, black = background) → bool region; MaskError when it is not one.

    Single channel only (mode L or 1). Values {0, 1} mean 1 = defect; otherwise the mask is binarised at
    BINARY_THRESHOLD, and refused when more than MAX_GREY_FRACTION of its pixels are neither 0 nor 255.
    """
    import numpy as np

    if mode not in ("L", "1") or array.ndim != 2:
        raise MaskError(f"not a single-channel mask (mode {mode}); masks are 8-bit grayscale, white = defect")
    values = np.unique(array)
    if mode == "1" or set(values.tolist()) <= {0, 1}:
        return array.astype(bool)
    others = [int(v) for v in values.tolist() if v not in (0, 255)]
    if others and len(values) == 2 and values[0] == 0:
        # Two values, the defect one neither 1 nor 255 (a 0/7 mask): binarising at BINARY_THRESHOLD would keep or
        # drop the whole defect depending on its value. Which one the source meant is not ours to guess.
        raise MaskError(f"a 0/{others[0]} mask: defect pixels must be 255 (or 1), background 0")
    grey = int(np.count_nonzero((array > 0) & (array < 255)))
    if grey > MAX_GREY_FRACTION * array.size:
        raise MaskError(
            f"not a 0/255 mask: {100 * grey / array.size:.1f}% of its pixels are grey "
            f"(at most {100 * MAX_GREY_FRACTION:.0f}% of edge pixels are tolerated and binarised at {BINARY_THRESHOLD})"
        )
    region = array >= BINARY_THRESHOLD
    if not region.any() and others:
        raise MaskError(f"pixel values {others[:5]} but none >= {BINARY_THRESHOLD}: binarising would drop the defect")
    return region


def read_image_array(data: bytes) -> tuple[NDArray[Any], str]:
    """Decode image bytes (a mask file) into an array and its Pillow mode; MaskError when it does not decode."""
    import numpy as np

    from crux.postprocess import open_image

    try:
        with open_image(io.BytesIO(data)) as image:
            image.load()
            return np.array(image), image.mode
    except Exception as exc:  # ImageError (unreadable, over the pixel limit) and whatever else Pillow raises
        raise MaskError(f"not a readable image ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------------------------------
# Polygons


def rasterize_polygon(points: Sequence[tuple[float, float]], width: int, height: int) -> NDArray[Any]:
    """Region of a polygon in continuous pixel coordinates: the pixels whose centres lie inside it (even-odd
    rule) or exactly on an edge. Exact, unlike Pillow's ImageDraw.polygon, which rounds the vertices to whole
    pixels (a box from 10 to 50 would cover pixels 9 to 49 there, 10 to 49 here)."""
    import numpy as np

    out = np.zeros((height, width), dtype=bool)
    if len(points) < 1 or width < 1 or height < 1:
        return out
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    # Scanlines through the pixel centres; each edge counts on [min y, max y) so a vertex is crossed once.
    ys = np.arange(height, dtype=np.float64)[:, None] + 0.5
    lo, hi = np.minimum(y0, y1)[None, :], np.maximum(y0, y1)[None, :]
    crosses = (ys >= lo) & (ys < hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = np.where(crosses, x0 + (ys - y0) * (x1 - x0) / (y1 - y0), np.nan)
    xs.sort(axis=1)  # NaN last
    if xs.shape[1] >= 2:
        starts, ends = xs[:, 0::2], xs[:, 1::2]
        starts = starts[:, : ends.shape[1]]
        rows = np.broadcast_to(np.arange(height)[:, None], starts.shape)
        valid = ~np.isnan(starts) & ~np.isnan(ends)
        first = np.clip(np.ceil(starts[valid] - 0.5 - 1e-9), 0, width).astype(np.int64)
        last = np.clip(np.floor(ends[valid] - 0.5 + 1e-9) + 1, 0, width).astype(np.int64)
        keep = last > first
        diff = np.zeros((height, width + 1), dtype=np.int32)
        np.add.at(diff, (rows[valid][keep], first[keep]), 1)
        np.add.at(diff, (rows[valid][keep], last[keep]), -1)
        out |= np.cumsum(diff[:, :width], axis=1) > 0
    # Centres exactly on an edge (horizontal edges and vertices the scanlines miss): walk each edge.
    for ax, ay, bx, by in zip(x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist(), strict=True):
        for i, j in _centres_on_segment(ax, ay, bx, by, width, height):
            if 0 <= i < width and 0 <= j < height:
                out[j, i] = True
    return out


def _centres_on_segment(ax: float, ay: float, bx: float, by: float, width: int, height: int) -> list[tuple[int, int]]:
    """Pixels (i, j) of the width x height image whose centre (i + 0.5, j + 0.5) lies on the segment a-b (to 1e-6
    px). The walk is clipped to the image: a vertex at 1e9 must cost the image's size, not a billion steps."""
    swap = abs(by - ay) > abs(bx - ax)  # walk along the longer axis, one pixel centre at a time
    if swap:
        ax, ay, bx, by = ay, ax, by, bx
    if ax > bx:
        ax, ay, bx, by = bx, by, ax, ay
    if not all(math.isfinite(v) for v in (ax, ay, bx, by)):
        return []
    limit = height if swap else width
    found = []
    for k in range(max(0, math.ceil(ax - 0.5 - 1e-6)), min(limit - 1, math.floor(bx - 0.5 + 1e-6)) + 1):
        c = k + 0.5
        other = ay if bx == ax else ay + (c - ax) * (by - ay) / (bx - ax)
        m = round(other - 0.5)
        if abs(other - 0.5 - m) < 1e-6:
            found.append((m, k) if swap else (k, m))
    return found


def polygons(region: NDArray[Any]) -> list[list[tuple[float, float]]]:
    """Outer contours of a region's parts (OpenCV), in continuous coordinates (pixel centres), ≥ 3 points each.

    `rasterize_polygon` of each gives the part back, except holes and some one-pixel-wide diagonal spurs: the
    rasterisation error of a contour (round trips are checked at IoU ≥ 0.9 per region).
    """
    import cv2
    import numpy as np

    found, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for contour in found:
        pts = [(float(x) + 0.5, float(y) + 0.5) for x, y in contour.reshape(-1, 2).tolist()]
        while len(pts) < 3:  # one- or two-pixel parts: repeat a point so every format can hold the polygon
            pts.append(pts[-1])
        out.append(pts)
    # Deterministic order: by first point, row-major.
    return sorted(out, key=lambda p: (p[0][1], p[0][0]))


# --------------------------------------------------------------------------------------------------
# COCO RLE (pycocotools)


def coco_rle(region: NDArray[Any]) -> dict[str, Any]:
    """A region as COCO compressed RLE {"size": [h, w], "counts": str} (pycocotools.mask.encode)."""
    import numpy as np
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(region.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


# A polygon point may sit this far outside its image (pixels, relative to the image's larger side) and still count as
# on its border: the importers' tolerance for boxes (crux.label.sources.source_files.COORD_TOLERANCE) in pixel units.
POLYGON_TOLERANCE = 1e-6


def _number(value: Any, what: str) -> float:
    """A finite JSON number; bool (a subclass of int) and strings are refused, not coerced."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MaskError(f"{what} {value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise MaskError(f"{what} must be finite numbers (NaN or inf found)")
    return number


def coco_polygon(poly: Any, width: int, height: int) -> NDArray[Any]:
    """One COCO polygon `[x1, y1, x2, y2, …]` (pixel coordinates) → its bool region, MaskError when it has fewer than
    3 points or a point outside the image."""
    if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
        size = len(poly) if isinstance(poly, list) else type(poly).__name__
        raise MaskError(f"a polygon is a list of at least 3 x,y pairs, got {size}")
    coords = [_number(v, "polygon coordinate") for v in poly]
    pts = list(zip(coords[0::2], coords[1::2], strict=True))
    tol = POLYGON_TOLERANCE * max(width, height) + 1e-3
    outside = [(x, y) for x, y in pts if not (-tol <= x <= width + tol and -tol <= y <= height + tol)]
    if outside:
        x, y = outside[0]
        raise MaskError(f"polygon point ({x:g}, {y:g}) is outside the {width}x{height} image")
    # No area check: the contour of a one-pixel-wide region (crux.masks.polygons) runs through pixel centres on one
    # line and covers exactly those pixels. A polygon covering no pixel at all is the callers' to report.
    return rasterize_polygon(pts, width, height)


def coco_segmentation(segmentation: Any, width: int, height: int) -> NDArray[Any]:
    """A COCO `segmentation` (compressed or uncompressed RLE, or a list of polygons) → bool region H x W. Every
    malformed value (negative or non-integer counts, counts that do not cover the image, non-ASCII compressed counts,
    polygons outside the image) is a MaskError saying what, never a pycocotools exception."""
    import numpy as np

    if isinstance(segmentation, list):
        if not segmentation:
            raise MaskError("empty segmentation")
        region = np.zeros((height, width), dtype=bool)
        for poly in segmentation:
            region |= coco_polygon(poly, width, height)
        return region
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise MaskError("segmentation is neither RLE {size, counts} nor a list of polygons")
    size = segmentation["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int and v > 0 for v in size)):
        raise MaskError(f"RLE size {size!r} is not [height, width]")
    h, w = size
    if (w, h) != (width, height):
        raise MaskError(f"segmentation size {w}x{h} differs from the image's {width}x{height}")
    counts = segmentation["counts"]
    if isinstance(counts, str):
        counts = _rle_counts_from_string(counts)
    if not isinstance(counts, list):
        raise MaskError("RLE counts are neither a list of integers nor a compressed string")
    if not all(type(v) is int and v >= 0 for v in counts):
        bad = next(v for v in counts if not (type(v) is int and v >= 0))
        raise MaskError(f"RLE counts hold {bad!r}: counts are non-negative integers")
    if sum(counts) != h * w:
        raise MaskError(f"RLE counts sum to {sum(counts)}, the {w}x{h} image has {h * w} pixels")
    return _rle_decode(counts, h, w)


def _rle_counts_from_string(text: str) -> list[int]:
    """COCO's compressed RLE string → run lengths (crux.postprocess.rle_runs: one parser for the edge's masks and
    imported ones), a malformed string a MaskError."""
    from crux.postprocess import rle_runs

    if not text.isascii():
        raise MaskError("compressed RLE counts must be an ASCII string")
    try:
        return rle_runs(text)
    except ValueError as exc:
        raise MaskError(f"compressed RLE counts: {exc}") from exc


def _rle_decode(counts: list[int], h: int, w: int) -> NDArray[Any]:
    """Uncompressed COCO RLE (alternating background/foreground runs, column-major) → bool region, in numpy."""
    import numpy as np

    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy()


__all__ = [
    "MASKS",
    "MaskError",
    "bbox",
    "binary_source_mask",
    "class_pixels",
    "coco_polygon",
    "coco_rle",
    "coco_segmentation",
    "component_sizes",
    "components",
    "decode_png",
    "encode_png",
    "mask_iou",
    "mask_relpath",
    "paint",
    "polygons",
    "rasterize_polygon",
    "read_image_array",
    "write_mask",
]
