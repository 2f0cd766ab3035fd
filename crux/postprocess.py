"""Pre- and post-processing shared by training, evaluation and the edge runtime — numpy and Pillow only.

The edge runtime has no torch, so everything between an image file and a model input, and between a model's raw
output and a prediction, lives here once. Evaluation calls the same functions on the same raw outputs, so an
edge box and `crux evaluate` measure the same thing.

Conventions
- Model input: float32 (C, S, S), x = (pixel / 255 - mean) / std; the original image is resized to S x S
  (bilinear, aspect ratio not kept) by Pillow — training uses `resize` too, so there is no resampling mismatch.
- Classifier raw output: logits (B, C).
- Detector raw output: (B, N, 5 + C) over the N anchor points of all pyramid levels (level by level, row-major):
  [l, t, r, b] distances in input pixels from the point to the box sides (>= 0), a centerness logit and C class
  logits. Score = sqrt(sigmoid(class) * sigmoid(centerness)), as in FCOS. NMS is not inside the model (export).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from crux.errors import CruxError

# ----------------------------------------------------------------------------------------------------------------
# Input


@dataclass(frozen=True)
class InputSpec:
    """What the model expects; recorded in the model bundle and the model card."""

    image_size: int
    channels: int
    mean: float = 0.5
    std: float = 0.25

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        return cls(int(data["image_size"]), int(data["channels"]), float(data["mean"]), float(data["std"]))


# Decompression bombs: a tiny PNG can declare 100k x 100k pixels. Every reader refuses more than this before
# decoding (Pillow's own DecompressionBombError, which is not an OSError, is turned into ImageError too).
MAX_PIXELS = 40_000_000


class ImageError(CruxError, ValueError):
    """An image that cannot be decoded. `reason`: "missing", "unidentified" (not an image of an allowed
    format), "too_large" (over the pixel limit) or "corrupt" (truncated or damaged)."""

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason


@contextlib.contextmanager
def open_image(
    source: str | Path | IO[bytes],
    *,
    max_pixels: int = MAX_PIXELS,
    formats: Sequence[str] | None = None,
    name: str | None = None,
) -> Iterator[Image.Image]:
    """THE way CRUX opens an image (edge frames, `crux predict`, imports, dataset checks, ingest uploads).

    Refuses images over `max_pixels` from the header, before anything is decoded, and turns every decoding
    failure inside the block (OSError, SyntaxError, ValueError, DecompressionBombError) into an ImageError that
    names the image, so a caller can record that one frame as an error and go on.
    """
    where = name or (str(source) if isinstance(source, str | Path) else "image")
    try:
        img = Image.open(source, formats=None if formats is None else tuple(formats))
    except FileNotFoundError as exc:
        raise ImageError(f"{where}: file not found", "missing") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{where}: over the pixel limit (decompression bomb?): {exc}", "too_large") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{where}: not a readable image ({exc})", "unidentified") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{where}: not a readable image ({type(exc).__name__}: {exc})") from exc
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError(
                f"{where}: {width}x{height} pixels, over the {max_pixels} pixel limit (decompression bomb?)",
                "too_large",
            )
        try:
            yield img
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{where}: over the pixel limit (decompression bomb?): {exc}", "too_large") from exc
        except (OSError, SyntaxError) as exc:
            raise ImageError(f"{where}: cannot decode ({type(exc).__name__}: {exc})") from exc


def load_image(path: str | Path | IO[bytes], channels: int, *, max_pixels: int = MAX_PIXELS) -> NDArray[Any]:
    """Decode an image file to uint8 (H, W, channels); ImageError when it cannot (see `open_image`)."""
    with open_image(path, max_pixels=max_pixels) as img:
        img.draft("L" if channels == 1 else "RGB", img.size)  # JPEG: decode straight to the target mode
        return to_channels(np.asarray(img.convert("L" if channels == 1 else "RGB")), channels)


def to_channels(image: NDArray[Any], channels: int) -> NDArray[Any]:
    """uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) to (H, W, channels); RGB→gray as Pillow (ITU-R 601-2)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if image.shape[2] == channels:
        return np.ascontiguousarray(image)
    if channels == 3:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    # Pillow's conversion, so an array from a camera and a decoded file give the same gray values.
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).convert("L"))[:, :, None]


def resize(image: NDArray[Any], size: int) -> NDArray[Any]:
    """uint8 (H, W, C) to (size, size, C), bilinear (Pillow). A no-op when already that size."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    if image.shape[2] == 1:
        out = np.asarray(Image.fromarray(image[:, :, 0]).resize((size, size), Image.Resampling.BILINEAR))
        return out[:, :, None]
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def normalise(image: NDArray[Any], spec: InputSpec) -> NDArray[Any]:
    """uint8 (S, S, C) to float32 (C, S, S)."""
    x = image.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.float32(spec.mean)) / np.float32(spec.std)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(image: NDArray[Any], spec: InputSpec) -> tuple[NDArray[Any], tuple[int, int]]:
    """An original uint8 image to the model input; also returns the original (width, height) for box mapping."""
    image = to_channels(image, spec.channels)
    h, w = image.shape[:2]
    return normalise(resize(image, spec.image_size), spec), (w, h)


def preprocess_batch(images: Sequence[NDArray[Any]], spec: InputSpec) -> tuple[NDArray[Any], list[tuple[int, int]]]:
    items = [preprocess(img, spec) for img in images]
    return np.stack([x for x, _ in items]), [size for _, size in items]


# ----------------------------------------------------------------------------------------------------------------
# Classification


def softmax(logits: NDArray[Any], axis: int = -1) -> NDArray[Any]:
    z = logits.astype(np.float64) - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    probs: NDArray[Any] = (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)
    return probs


def sigmoid(x: NDArray[Any]) -> NDArray[Any]:
    # Split by sign so large |x| neither overflows nor loses precision.
    x = x.astype(np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out.astype(np.float32)


def postprocess_classify(logits: NDArray[Any]) -> NDArray[Any]:
    """Raw classifier logits (B, C) to class probabilities (B, C)."""
    return softmax(np.asarray(logits), axis=-1)


def ng_scores(probs: NDArray[Any], ok_index: int) -> NDArray[Any]:
    """The inspection score of each image: probability that it is not OK."""
    return 1.0 - probs[:, ok_index]


# ----------------------------------------------------------------------------------------------------------------
# Detection


@dataclass(frozen=True)
class DetectSpec:
    """Decoding and NMS parameters; recorded in the model bundle so the edge decodes exactly as evaluation."""

    strides: tuple[int, ...]
    num_classes: int
    score_threshold: float = 0.05
    nms_iou: float = 0.6
    max_detections: int = 100
    # Candidates kept per image before NMS (bounds NMS cost on a noisy, untrained model).
    pre_nms_topk: int = 1000

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["strides"] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectSpec:
        return cls(
            strides=tuple(int(s) for s in data["strides"]),
            num_classes=int(data["num_classes"]),
            score_threshold=float(data.get("score_threshold", 0.05)),
            nms_iou=float(data.get("nms_iou", 0.6)),
            max_detections=int(data.get("max_detections", 100)),
            pre_nms_topk=int(data.get("pre_nms_topk", 1000)),
        )


@dataclass(frozen=True)
class Detections:
    """Detections of one image: boxes (K, 4) x1 y1 x2 y2 in original-image pixels, scores (K,), class ids (K,)."""

    boxes: NDArray[Any]
    scores: NDArray[Any]
    class_ids: NDArray[Any]

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def feature_sizes(image_size: int, strides: Sequence[int]) -> list[int]:
    """Side of each pyramid level: every stride-2 conv (k3, p1) maps n to ceil(n / 2), so level s has ceil(S / s)."""
    return [-(-image_size // s) for s in strides]


def anchor_points(image_size: int, strides: Sequence[int]) -> tuple[NDArray[Any], NDArray[Any]]:
    """Centres (N, 2) as x, y in input pixels and the stride (N,) of every anchor point, in raw-output order.

    Cached per (size, strides) — the edge decodes every frame with the same model — and returned read-only.
    """
    return _anchor_points(int(image_size), tuple(int(s) for s in strides))


@functools.lru_cache(maxsize=16)
def _anchor_points(image_size: int, strides: tuple[int, ...]) -> tuple[NDArray[Any], NDArray[Any]]:
    points, point_strides = [], []
    for s, n in zip(strides, feature_sizes(image_size, strides), strict=True):
        c = (np.arange(n, dtype=np.float32) + 0.5) * s
        yy, xx = np.meshgrid(c, c, indexing="ij")
        points.append(np.stack([xx.ravel(), yy.ravel()], axis=1))
        point_strides.append(np.full(n * n, s, dtype=np.float32))
    out = np.concatenate(points), np.concatenate(point_strides)
    for a in out:
        a.flags.writeable = False
    return out


def distances_to_boxes(points: NDArray[Any], ltrb: NDArray[Any]) -> NDArray[Any]:
    return np.concatenate([points - ltrb[:, :2], points + ltrb[:, 2:4]], axis=1)


def detection_scores(raw: NDArray[Any]) -> NDArray[Any]:
    """Per-point, per-class scores (N, C) from one image's raw output (N, 5 + C)."""
    scores: NDArray[Any] = np.sqrt(sigmoid(raw[:, 5:]) * sigmoid(raw[:, 4:5]))
    return scores


def box_iou(a: NDArray[Any], b: NDArray[Any]) -> NDArray[Any]:
    """Pairwise IoU (N, M) of xyxy boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: NDArray[Any], scores: NDArray[Any], iou_threshold: float) -> NDArray[Any]:
    """Greedy NMS: indices of kept boxes, highest score first. Ties keep the lower index (stable sort)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        ious = box_iou(boxes[i : i + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: NDArray[Any], scores: NDArray[Any], class_ids: NDArray[Any], iou_threshold: float
) -> NDArray[Any]:
    """Class-aware NMS: boxes of different classes never suppress each other (offset trick, one NMS pass)."""
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    offset = (boxes.max() + 1.0) * class_ids.astype(boxes.dtype)
    return nms(boxes + offset[:, None], scores, iou_threshold)


def postprocess_detect(
    raw: NDArray[Any], original_size: tuple[int, int], input_spec: InputSpec, spec: DetectSpec
) -> Detections:
    """One image's raw detector output (N, 5 + C) to detections in original-image pixels."""
    raw = np.asarray(raw, dtype=np.float32)
    points, _ = anchor_points(input_spec.image_size, spec.strides)
    if raw.shape != (points.shape[0], 5 + spec.num_classes):
        raise ValueError(f"raw output {raw.shape} does not match {points.shape[0]} points x {5 + spec.num_classes}")
    scores = detection_scores(raw)
    flat = scores.ravel()
    cand = np.flatnonzero(flat > spec.score_threshold)
    if cand.size > spec.pre_nms_topk:
        top = np.argsort(-flat[cand], kind="stable")[: spec.pre_nms_topk]
        cand = np.sort(cand[top])
    point_idx, class_ids = np.divmod(cand, spec.num_classes)
    size = float(input_spec.image_size)
    boxes = np.clip(distances_to_boxes(points[point_idx], np.maximum(raw[point_idx, :4], 0.0)), 0.0, size)
    cand_scores = flat[cand]
    keep = batched_nms(boxes, cand_scores, class_ids, spec.nms_iou)[: spec.max_detections]
    w, h = original_size
    scale = np.array([w / size, h / size, w / size, h / size], dtype=np.float32)
    return Detections(
        boxes=(boxes[keep] * scale).astype(np.float32),
        scores=cand_scores[keep].astype(np.float32),
        class_ids=class_ids[keep].astype(np.int64),
    )


def postprocess_detect_batch(
    raw: NDArray[Any], original_sizes: Sequence[tuple[int, int]], input_spec: InputSpec, spec: DetectSpec
) -> list[Detections]:
    return [postprocess_detect(r, size, input_spec, spec) for r, size in zip(raw, original_sizes, strict=True)]


# ----------------------------------------------------------------------------------------------------------------
# Segmentation
#
# Segmenter raw output: logits (B, 1 + D, S, S) at the model input size; channel 0 is background, channel j >= 1 the
# j-th defect class (the card's classes without the OK class, in order). A pixel's defect probability is
# 1 - p(background). The image's NG score is the maximum of that map after a `smooth` x `smooth` box filter, so one
# stray pixel cannot reject a part while a real defect of a few pixels still can; the image's defect class is the
# class whose own smoothed probability peaks highest (the strongest region).


@dataclass(frozen=True)
class SegmentSpec:
    """Decoding parameters of a segmenter; recorded in the model bundle and the card (the edge decodes the same)."""

    # Defect classes in output-channel order (channel j + 1 is defect_classes[j]).
    defect_classes: tuple[str, ...]
    # A pixel belongs to a defect region when its defect probability is at least this.
    pixel_threshold: float = 0.5
    # Side of the box filter before the max that gives the NG score (odd; 1 = no smoothing).
    smooth: int = 3
    # Regions smaller than this (original-image pixels) are not reported (they still count in the NG score).
    min_region_px: int = 4

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["defect_classes"] = list(self.defect_classes)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentSpec:
        return cls(
            defect_classes=tuple(str(c) for c in data["defect_classes"]),
            pixel_threshold=float(data.get("pixel_threshold", 0.5)),
            smooth=int(data.get("smooth", 3)),
            min_region_px=int(data.get("min_region_px", 4)),
        )


@dataclass(frozen=True)
class SegmentMaps:
    """One image's segmentation: the NG score, each defect class's peak score, and the class-index map in original
    pixels (0 = background, j = defect_classes[j - 1])."""

    ng_score: float
    class_scores: NDArray[Any]  # (D,) smoothed peak probability per defect class
    class_map: NDArray[Any]  # uint8 (H, W) at the original image size
    defect_prob: NDArray[Any]  # float32 (H, W): 1 - p(background) at the original image size

    @property
    def strongest(self) -> int:
        """Index into defect_classes of the strongest region's class."""
        return int(np.argmax(self.class_scores)) if self.class_scores.size else 0


def mask_channels(classes: Sequence[str], defect_classes: Sequence[str]) -> NDArray[Any]:
    """Lookup table: dataset mask pixel value (0 background, 1 + index in `classes`) → segmenter output channel
    (0 background, j = defect_classes[j - 1]); a class without a channel (the OK class) maps to background."""
    lut = np.zeros(256, np.uint8)
    for i, c in enumerate(classes):
        lut[i + 1] = 1 + list(defect_classes).index(c) if c in defect_classes else 0
    return lut


def box_filter(maps: NDArray[Any], k: int) -> NDArray[Any]:
    """Mean over a k x k window with zero padding (torch avg_pool2d(k, 1, k // 2), count_include_pad) on (..., H, W)."""
    if k <= 1:
        return maps
    p = k // 2
    padded = np.pad(maps, [(0, 0)] * (maps.ndim - 2) + [(p, p), (p, p)])
    c = np.cumsum(np.cumsum(padded, axis=-1, dtype=np.float64), axis=-2)
    c = np.pad(c, [(0, 0)] * (maps.ndim - 2) + [(1, 0), (1, 0)])
    h, w = maps.shape[-2:]
    total = c[..., k : k + h, k : k + w] - c[..., :h, k : k + w] - c[..., k : k + h, :w] + c[..., :h, :w]
    return (total / (k * k)).astype(np.float32)


def postprocess_segment(raw: NDArray[Any], original_size: tuple[int, int], spec: SegmentSpec) -> SegmentMaps:
    """One image's raw segmenter logits (1 + D, S, S) to its NG score, class scores and class-index map."""
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 3 or raw.shape[0] != 1 + len(spec.defect_classes):
        raise ValueError(f"raw output {raw.shape} does not match 1 + {len(spec.defect_classes)} defect classes")
    # float32 softmax: (1 + D) x S x S values a frame, where float64 cost the edge ~3 ms at 224 px.
    e = np.exp(raw - raw.max(axis=0, keepdims=True))
    probs = e / e.sum(axis=0, keepdims=True)
    smoothed = box_filter(probs[1:], spec.smooth)
    class_scores = smoothed.reshape(smoothed.shape[0], -1).max(axis=1)
    ng_score = float(box_filter(1.0 - probs[0], spec.smooth).max())
    # Background wins unless the defect probability reaches the pixel threshold; then the likeliest defect class.
    labels = np.where(1.0 - probs[0] >= spec.pixel_threshold, probs[1:].argmax(axis=0) + 1, 0).astype(np.uint8)
    defect = (1.0 - probs[0]).astype(np.float32)
    w, h = original_size
    if labels.shape != (h, w):
        labels = np.asarray(Image.fromarray(labels).resize((w, h), Image.Resampling.NEAREST))
        defect = np.asarray(Image.fromarray(defect, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    return SegmentMaps(ng_score, class_scores.astype(np.float32), labels, defect)


def postprocess_segment_batch(
    raw: NDArray[Any], original_sizes: Sequence[tuple[int, int]], spec: SegmentSpec
) -> list[SegmentMaps]:
    return [postprocess_segment(r, size, spec) for r, size in zip(raw, original_sizes, strict=True)]


@dataclass(frozen=True)
class Region:
    """One connected defect region of a class map, in original-image pixels."""

    class_index: int  # index into defect_classes
    area: int
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 (x2, y2 exclusive)
    mask: NDArray[Any]  # bool (H, W) of the whole image


def connected_regions(class_map: NDArray[Any], min_area: int = 1) -> list[Region]:
    """8-connected regions of each class of a class-index map, largest first (scipy.ndimage.label)."""
    from scipy import ndimage  # ~0.2 s; only when regions are asked for

    regions: list[Region] = []
    for value in np.unique(class_map):
        if value == 0:
            continue
        ids, _ = ndimage.label(class_map == value, structure=np.ones((3, 3), bool))
        for rid, found in enumerate(ndimage.find_objects(ids), 1):
            if found is None:
                continue
            ys, xs = found
            mask = ids == rid
            area = int(mask[ys, xs].sum())
            if area < min_area:
                continue
            regions.append(Region(int(value) - 1, area, (xs.start, ys.start, xs.stop, ys.stop), mask))
    regions.sort(key=lambda r: (-r.area, r.class_index, r.box))
    return regions


def rle_encode(mask: NDArray[Any]) -> str:
    """A bool (H, W) mask as a COCO compressed RLE string (column-major run lengths, first run background), the
    `counts` that `pycocotools.mask.decode({"size": [H, W], "counts": ...})` reads."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    out = []
    for i, run in enumerate(runs):
        x = int(run) - (int(runs[i - 2]) if i > 2 else 0)  # LEB128-like, deltas from two runs back (pycocotools)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_runs(counts: str) -> list[int]:
    """A COCO compressed RLE string → its run lengths (pycocotools' rleFrString): 5 bits a character from '0', a
    continuation bit, a sign bit on a value's last character, and each run after the second stored as the difference
    from the run two before. ValueError for a character outside '0'..'o' or a string cut in the middle of a value
    (outside input: the ingest API and `crux import` read these)."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("the RLE ends in the middle of a value")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"the RLE holds {counts[p]!r}, outside '0'..'o'")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def rle_decode(counts: str, height: int, width: int) -> NDArray[Any]:
    """A COCO compressed RLE string (`rle_encode`) back to a bool (height, width) mask."""
    runs = rle_runs(counts)
    if sum(runs) != height * width or any(r < 0 for r in runs):
        raise ValueError(f"RLE does not describe a {height}x{width} mask")
    values = np.zeros(len(runs), bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape((width, height)).T
