"""Tiny synthetic dataset versions in the `data/` layout, for tests, demos and benchmarks (numpy + Pillow).

Defects are drawn on a noisy background: "scratch" a bright bar, "spot" a dark disc; "ok" images have none.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


def _draw(rng: np.random.Generator, size: int, defects: list[str]) -> tuple[Image.Image, list[list[float]]]:
    base = rng.normal(128, 12, (size, size)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    boxes = []
    for cls in defects:
        w, h = int(rng.integers(size // 6, size // 3)), int(rng.integers(size // 6, size // 3))
        if cls == "scratch":
            h = max(4, h // 3)
        x1, y1 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        box = [float(x1), float(y1), float(x1 + w), float(y1 + h)]
        if cls == "scratch":
            draw.rectangle(box, fill=235)
        else:
            draw.ellipse(box, fill=25)
        boxes.append(box)
    return img, boxes


def write_synthetic_dataset(
    root: Path,
    kind: str,
    n_per_split: tuple[int, int, int] = (24, 8, 8),
    size: int = 64,
    seed: int = 0,
    ok_class: bool = True,
) -> Path:
    """Write `root/data/` (images, manifest.jsonl, classes.json, dataset.json); returns the data folder."""
    rng = np.random.default_rng(seed)
    data = Path(root) / "data"
    classes = (["ok"] if kind in ("classify", "segment") and ok_class else []) + ["scratch", "spot"]
    if kind == "anomaly":  # a new line: OK parts to train on; NG parts (either defect) in val and test only
        classes = ["ok", "ng"]
    records: list[dict[str, Any]] = []
    task_id = 0
    for split, n in zip(("train", "val", "test"), n_per_split, strict=True):
        for i in range(n):
            task_id += 1
            extra: dict[str, Any] = {}
            labels: list[dict[str, Any]]
            if kind == "classify":
                cls = classes[i % len(classes)]
                img, _ = _draw(rng, size, [] if cls == "ok" else [cls])
                labels = [{"box": None, "class": cls}]
            elif kind == "segment":
                cls = classes[i % len(classes)]
                img, boxes = _draw(rng, size, [] if cls == "ok" else [cls])
                labels = [{"box": b, "class": cls} for b in boxes]
                extra = _mask(data, size, boxes, cls, classes)
            elif kind == "anomaly":
                cls = "ok" if split == "train" or i % 2 == 0 else "ng"
                shape = ["scratch", "spot"][(i // 2) % 2]
                img, boxes = _draw(rng, size, [] if cls == "ok" else [shape])
                labels = [{"box": None, "class": cls}]
                extra = {"mask": _mask(data, size, boxes, shape, ["scratch", "spot"])["mask"]}
            else:
                picks = [classes[(i + j) % len(classes)] for j in range(1 + i % 2)]
                img, boxes = _draw(rng, size, picks)
                labels = [{"box": b, "class": c} for b, c in zip(boxes, picks, strict=True)]
            buf = io.BytesIO()
            img.save(buf, format="PNG")  # lossless: the drawn boxes stay exact
            blob = buf.getvalue()
            sha = hashlib.sha256(blob).hexdigest()
            rel = f"images/{sha[:2]}/{sha}.png"
            (data / rel).parent.mkdir(parents=True, exist_ok=True)
            (data / rel).write_bytes(blob)
            records.append(
                {
                    "annotation_ids": [task_id],
                    "annotators": ["synthetic"],
                    "conflicted": False,
                    "height": size,
                    "image": rel,
                    "labels": labels,
                    "original_name": f"{split}_{i}.png",
                    "sha256": sha,
                    "split": split,
                    "task_id": task_id,
                    "width": size,
                    **extra,
                }
            )
    records.sort(key=lambda r: r["sha256"])
    (data / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    (data / "classes.json").write_text(
        json.dumps({"kind": kind, "classes": classes, "ok_class": "ok" if "ok" in classes else None}, sort_keys=True)
    )
    (data / "dataset.json").write_text(
        json.dumps({"project": "synthetic", "counts": {"items": len(records)}, "excluded": []})
    )
    return data


def _mask(data: Path, size: int, boxes: list[list[float]], cls: str, classes: list[str]) -> dict[str, Any]:
    """The class-index mask of a drawn defect (the same shape `_draw` drew), stored as `crux snapshot` stores it:
    content-addressed PNG, 0 background, 1 + class index; returns the manifest's `mask` and `verdict` fields."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for box in boxes:
        (draw.rectangle if cls == "scratch" else draw.ellipse)(box, fill=classes.index(cls) + 1)
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    blob = buf.getvalue()
    sha = hashlib.sha256(blob).hexdigest()
    rel = f"masks/{sha[:2]}/{sha}.png"
    (data / rel).parent.mkdir(parents=True, exist_ok=True)
    (data / rel).write_bytes(blob)
    return {"mask": rel, "verdict": cls}
