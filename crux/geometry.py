"""Box coordinate conventions and exact conversions between them.

Three conventions meet in CRUX: YOLO text files (class cx cy w h, normalised 0..1), Label Studio
rectangle results (x, y, width, height in percent of the image, top-left origin) and pixel boxes
(x1, y1, x2, y2) that training, evaluation and the edge use. Every conversion goes through the
pixel form so that a round trip is exact up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PixelBox:
    """Axis-aligned box in pixels of the original image, (x1, y1) top-left, (x2, y2) bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


def yolo_to_pixel(cx: float, cy: float, w: float, h: float, image_w: int, image_h: int) -> PixelBox:
    return PixelBox(
        x1=(cx - w / 2) * image_w,
        y1=(cy - h / 2) * image_h,
        x2=(cx + w / 2) * image_w,
        y2=(cy + h / 2) * image_h,
    )


def pixel_to_yolo(box: PixelBox, image_w: int, image_h: int) -> tuple[float, float, float, float]:
    return (
        (box.x1 + box.x2) / 2 / image_w,
        (box.y1 + box.y2) / 2 / image_h,
        box.width / image_w,
        box.height / image_h,
    )


def pixel_to_ls_percent(box: PixelBox, image_w: int, image_h: int) -> dict[str, float]:
    """Label Studio rectangle `value` geometry (percent of the image, top-left origin)."""
    return {
        "x": box.x1 / image_w * 100.0,
        "y": box.y1 / image_h * 100.0,
        "width": box.width / image_w * 100.0,
        "height": box.height / image_h * 100.0,
    }


def ls_percent_to_pixel(value: dict[str, float], image_w: int, image_h: int) -> PixelBox:
    """Inverse of `pixel_to_ls_percent`. Rotated rectangles are refused: CRUX models are axis-aligned."""
    if abs(float(value.get("rotation", 0.0) or 0.0)) > 1e-6:
        raise ValueError(f"rotated rectangles are not supported (rotation={value['rotation']})")
    x1 = float(value["x"]) / 100.0 * image_w
    y1 = float(value["y"]) / 100.0 * image_h
    return PixelBox(
        x1=x1,
        y1=y1,
        x2=x1 + float(value["width"]) / 100.0 * image_w,
        y2=y1 + float(value["height"]) / 100.0 * image_h,
    )


def clip_box(box: PixelBox, image_w: int, image_h: int) -> PixelBox:
    return PixelBox(
        x1=min(max(box.x1, 0.0), image_w),
        y1=min(max(box.y1, 0.0), image_h),
        x2=min(max(box.x2, 0.0), image_w),
        y2=min(max(box.y2, 0.0), image_h),
    )


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 for disjoint or degenerate boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
