"""Figures drawn on the server: matplotlib (Agg) for the metric trend and the confusion matrix, Pillow for a
capture with its prediction over it. Pure functions: values in, image bytes out."""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping, Sequence
from typing import Any

# pyplot keeps global state; figures are built through the object API under one lock.
_MPL_LOCK = threading.Lock()


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def trend_svg(
    versions: Sequence[Mapping[str, Any]], metrics: Sequence[str], production: int | None, title: str = ""
) -> bytes:
    """The metrics of every published version (x: version); production and forced releases marked."""
    from crux.ship.gate import metric_value

    with _MPL_LOCK:
        fig = _figure(7.0, 3.2)
        ax = fig.add_subplot()
        xs = [int(v["version"]) for v in versions]
        for index, name in enumerate(metrics):
            ys = [metric_value(v.get("metrics"), name) for v in versions]
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
            if pts:
                (drawn,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
                # The newest value written beside its point: one version reads as a value, not as a zoomed axis.
                ax.annotate(
                    f"{pts[-1][1]:.3f}", pts[-1], textcoords="offset points", xytext=(6, 4 - 11 * index),
                    fontsize="small", color=drawn.get_color(),
                )  # fmt: skip
        forced = [int(v["version"]) for v in versions if v.get("forced")]
        for x in forced:
            ax.axvline(x, color="tab:red", alpha=0.25, linewidth=6)
        if production is not None:
            ax.axvline(production, color="tab:green", linestyle="--", linewidth=1, label=f"production v{production}")
        ax.set_xlabel("published version")
        ax.set_ylabel("test-split metric")
        ax.set_xticks(xs)
        # Every metric shown is a share in [0, 1]: a fixed axis, so that a change of 0.002 does not fill the plot
        # (matplotlib zooms to the data: one version at 0.965 became an axis from 0.964 to 0.9665).
        ax.set_ylim(0.0, 1.05)
        if xs:
            ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
        ax.grid(alpha=0.3)
        if title:
            ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize="small")
        buf = io.BytesIO()
        import matplotlib

        # Text as text, not outlines: a third of the bytes, and the values can be read (and checked) in the SVG.
        with matplotlib.rc_context({"svg.fonttype": "none"}):
            fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def confusion_png(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str = "") -> bytes:
    """Rows actual, columns predicted; colour by row share, counts written in each cell."""
    import numpy as np

    cm = np.asarray(matrix, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(classes)
    # Room for the longest class name beside and below the cells, so that no name is cut.
    label = 0.09 * max((len(str(c)) for c in classes), default=4)
    with _MPL_LOCK:
        fig = _figure(2.0 + label + 0.75 * k, 1.6 + label + 0.75 * k)
        ax = fig.add_subplot()
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(
                    j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=12,
                    color="white" if share[i, j] > 0.5 else "black",
                )  # fmt: skip
        ax.set_xticks(range(k), classes, rotation=45, ha="right")
        ax.set_yticks(range(k), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        if title:
            ax.set_title(title)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    return buf.getvalue()


def overlay_png(
    image: bytes, boxes: Sequence[Mapping[str, Any]], max_side: int = 320, caption: str | None = None
) -> bytes:
    """The capture with each predicted box (and a segmenter region's mask, COCO RLE) drawn over it, and `caption`
    (a classifier's class and score, which no box carries) written in a band across the top."""
    from PIL import Image, ImageDraw, ImageFont

    from crux.postprocess import open_image, rle_decode

    with open_image(io.BytesIO(image), name="capture") as img:
        base = img.convert("RGB")
    w, h = base.size
    red = Image.new("RGB", base.size, (230, 30, 30))
    for b in boxes:
        if b.get("mask"):
            try:
                mask = rle_decode(str(b["mask"]), h, w)
            except (ValueError, IndexError):
                continue  # a mask that does not fit this image is skipped, its box still drawn
            alpha = Image.fromarray((mask * 110).astype("uint8"))
            base = Image.composite(red, base, alpha)
    scale = min(1.0, max_side / max(w, h))
    if scale < 1.0:
        base = base.resize((max(1, round(w * scale)), max(1, round(h * scale))))
    draw = ImageDraw.Draw(base)
    for b in boxes:
        x1, y1, x2, y2 = (float(v) * scale for v in b["box"])
        draw.rectangle([x1, y1, x2, y2], outline=(255, 40, 40), width=2)
        label = str(b.get("class", ""))
        if b.get("score") is not None:
            label += f" {float(b['score']):.2f}"
        draw.text((x1 + 2, max(0.0, y1 - 11)), label, fill=(255, 230, 0))
    if caption:
        # Sized to the image so it stays readable in a 220 px card and in the full-size view.
        font = ImageFont.load_default(size=max(11, base.size[0] // 16))
        band = draw.textbbox((0, 0), caption, font=font)
        draw.rectangle([0, 0, base.size[0], band[3] + 6], fill=(20, 24, 33))
        draw.text((4, 2), caption, fill=(255, 230, 0), font=font)
    buf = io.BytesIO()
    base.save(buf, format="PNG")
    return buf.getvalue()


def thumbnail_png(image: bytes, max_side: int) -> bytes:
    """A dataset image scaled down to `max_side` pixels (its longest side), as PNG."""
    from PIL import Image

    from crux.postprocess import open_image

    with open_image(io.BytesIO(image), name="dataset image") as img:
        small = img.convert("RGB")
    small.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    return buf.getvalue()


def pr_curve_svg(rows: Sequence[Mapping[str, Any]], title: str = "") -> bytes:
    """Precision over recall at IoU 0.5 from `crux evaluate`'s plots/pr_curve.json: the class mean and each class."""
    with _MPL_LOCK:
        fig = _figure(5.0, 3.6)
        ax = fig.add_subplot()
        recall = [float(r["recall"]) for r in rows]
        names = ["precision", *sorted({k for r in rows for k in r if k.startswith("precision_")})]
        for name in names:
            label = "mean" if name == "precision" else name[len("precision_") :]
            ax.plot(
                recall, [float(r.get(name) or 0.0) for r in rows], linewidth=2.5 if label == "mean" else 1, label=label
            )
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize="small")
        if title:
            ax.set_title(title)
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()
