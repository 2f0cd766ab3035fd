"""Dataset versions in the contract layout (what `crux snapshot` writes) built straight from ../shared/datasets.

The benchmarks train on these without a Label Studio round trip; the layout, manifest fields and content-addressed
images are the ones `crux prepare` reads from `data/<project>/`.

Splits are deterministic and stratified: per class, in file-name order, every `every`-th image goes to test and the
one after it to val, the rest to train (60/20/20 with every=5).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# Magnetic Tile folder -> class name; MT_Free is the line's "OK".
MAGNETIC_TILE_CLASSES = {
    "MT_Free": "ok",
    "MT_Blowhole": "blowhole",
    "MT_Break": "break",
    "MT_Crack": "crack",
    "MT_Fray": "fray",
    "MT_Uneven": "uneven",
}


def _split(position: int, every: int) -> str:
    return "test" if position % every == 0 else "val" if position % every == 1 else "train"


def _store(data: Path, img: Path) -> tuple[str, str, int, int]:
    """Copy one image into the content-addressed store; (relative path, sha256, width, height)."""
    from PIL import Image

    blob = img.read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    rel = f"images/{sha[:2]}/{sha}{img.suffix.lower()}"
    (data / rel).parent.mkdir(parents=True, exist_ok=True)
    (data / rel).write_bytes(blob)
    with Image.open(img) as im:
        w, h = im.size
    return rel, sha, w, h


def _row(task_id: int, img: Path, rel: str, sha: str, w: int, h: int, labels: list, split: str) -> dict[str, Any]:
    return {
        "annotation_ids": [task_id],
        "annotators": ["source"],
        "conflicted": False,
        "height": h,
        "image": rel,
        "labels": labels,
        "original_name": img.name,
        "sha256": sha,
        "split": split,
        "task_id": task_id,
        "width": w,
    }


def _write_version(data: Path, rows: list[dict], classes: list[str], kind: str, ok: str | None, project: str) -> Path:
    rows.sort(key=lambda r: r["sha256"])
    (data / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    (data / "classes.json").write_text(json.dumps({"classes": classes, "kind": kind, "ok_class": ok}, sort_keys=True))
    (data / "dataset.json").write_text(json.dumps({"project": project, "counts": {"items": len(rows)}, "excluded": []}))
    return data


def make_neu_dataset(src: Path, dst: Path, kind: str, every: int = 5) -> Path:
    """NEU-DET as `dst/data/`: classification takes each image's class from its file name, detection its boxes."""
    classes = (src / "classes.txt").read_text().split()
    data = dst / "data"
    by_class: dict[str, list[Path]] = {c: [] for c in classes}
    for img in sorted((src / "images").glob("*.jpg")):
        by_class[img.stem.rsplit("_", 1)[0]].append(img)
    rows, task_id = [], 0
    for cls, images in by_class.items():
        images.sort(key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        for i, img in enumerate(images):
            task_id += 1
            rel, sha, w, h = _store(data, img)
            if kind == "classify":
                labels: list[dict[str, Any]] = [{"box": None, "class": cls}]
            else:
                labels = []
                for line in (src / "labels" / f"{img.stem}.txt").read_text().splitlines():
                    if not line.strip():
                        continue
                    k, cx, cy, bw, bh = line.split()
                    cx, cy, bw, bh = float(cx) * w, float(cy) * h, float(bw) * w, float(bh) * h
                    box = [
                        round(max(cx - bw / 2, 0), 3),
                        round(max(cy - bh / 2, 0), 3),
                        round(min(cx + bw / 2, w), 3),
                        round(min(cy + bh / 2, h), 3),
                    ]
                    labels.append({"box": box, "class": classes[int(k)]})
            rows.append(_row(task_id, img, rel, sha, w, h, labels, _split(i, every)))
    return _write_version(data, rows, classes, kind, None, f"neu-{kind}")


def make_magnetic_tile_dataset(src: Path, dst: Path, every: int = 5, kind: str = "classify") -> Path:
    """Magnetic Tile as a 6-class version (`ok` + five defect types) with `ok` as the OK class, so evaluation reports
    the inspection view (NG recall at a bounded false-reject rate) beside the class accuracy.

    kind "segment" also stores each tile's mask as `crux snapshot` does (content-addressed class-index PNG: 0
    background, 1 + class index for defect pixels) with the folder's class as the verdict."""
    data = dst / "data"
    classes = list(MAGNETIC_TILE_CLASSES.values())
    rows, task_id = [], 0
    for folder, cls in MAGNETIC_TILE_CLASSES.items():
        for i, img in enumerate(sorted((src / folder).glob("*.jpg"))):
            task_id += 1
            rel, sha, w, h = _store(data, img)
            labels: list[dict[str, Any]] = [{"box": None, "class": cls}]
            extra: dict[str, Any] = {}
            if kind == "segment":
                labels, extra = _segment_labels(data, img.with_suffix(".png"), classes.index(cls) + 1, cls)
            rows.append({**_row(task_id, img, rel, sha, w, h, labels, _split(i, every)), **extra})
    return _write_version(data, rows, classes, kind, "ok", "magnetic-tile")


def _segment_labels(data: Path, mask_file: Path, value: int, cls: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import io

    import numpy as np
    from PIL import Image

    with Image.open(mask_file) as m:
        fg = np.asarray(m.convert("L")) > 127
    buf = io.BytesIO()
    Image.fromarray((fg * value).astype(np.uint8), mode="L").save(buf, format="PNG")
    blob = buf.getvalue()
    sha = hashlib.sha256(blob).hexdigest()
    rel = f"masks/{sha[:2]}/{sha}.png"
    (data / rel).parent.mkdir(parents=True, exist_ok=True)
    (data / rel).write_bytes(blob)
    labels = []
    if fg.any():
        ys, xs = np.nonzero(fg)
        labels = [{"box": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)], "class": cls}]
    return labels, {"mask": rel, "verdict": cls}
