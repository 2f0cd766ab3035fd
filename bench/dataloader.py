"""Benchmark: decode + augment throughput of the training data pipeline, and a NEU-DET dataset-version builder.

    .venv/bin/python bench/dataloader.py [--src ../shared/datasets/neu-det] [--kind classify|detect]
        [--workers 0 1 2] [--size 200] [--batches 20]

Builds a dataset version in the contract layout from NEU-DET (classification: the image's class from its
file name; detection: the YOLO boxes), prepares it, then times the train DataLoader (Pillow decode, resize,
albumentations, normalise, collate) per worker count. Target (issue 5): >= 1,500 images/s on 2 cores at 200 px.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# A realistic augment pipeline for steel-strip images: flips, small affine, photometric jitter.
AUGMENT: list[dict[str, Any]] = [
    {"name": "HorizontalFlip", "args": {"p": 0.5}},
    {"name": "VerticalFlip", "args": {"p": 0.5}},
    {"name": "Affine", "args": {"scale": [0.9, 1.1], "translate_percent": [-0.05, 0.05], "p": 0.5}},
    {"name": "RandomBrightnessContrast", "args": {"brightness_limit": 0.15, "contrast_limit": 0.15, "p": 0.5}},
]


def make_neu_dataset(src: Path, dst: Path, kind: str, val_every: int = 5, test_every: int = 5) -> Path:
    """NEU-DET as `dst/data/` (content-addressed images, manifest.jsonl, classes.json).

    Split: per class, by file-name order — every `test_every`-th image test, the next val, the rest train (60/20/20
    with the defaults); deterministic, stratified.
    """
    from PIL import Image

    classes = (src / "classes.txt").read_text().split()
    data = dst / "data"
    rows = []
    by_class: dict[str, list[Path]] = {c: [] for c in classes}
    for img in sorted((src / "images").glob("*.jpg")):
        cls = img.stem.rsplit("_", 1)[0]
        by_class[cls].append(img)
    task_id = 0
    for cls, images in by_class.items():
        images.sort(key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        for i, img in enumerate(images):
            task_id += 1
            blob = img.read_bytes()
            sha = hashlib.sha256(blob).hexdigest()
            rel = f"images/{sha[:2]}/{sha}.jpg"
            (data / rel).parent.mkdir(parents=True, exist_ok=True)
            (data / rel).write_bytes(blob)
            with Image.open(img) as im:
                w, h = im.size
            if kind == "classify":
                labels = [{"box": None, "class": cls}]
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
            split = "test" if i % test_every == 0 else "val" if i % val_every == 1 else "train"
            rows.append(
                {
                    "annotation_ids": [task_id],
                    "annotators": ["neu"],
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
            )
    rows.sort(key=lambda r: r["sha256"])
    (data / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    (data / "classes.json").write_text(json.dumps({"classes": classes, "kind": kind, "ok_class": None}, sort_keys=True))
    (data / "dataset.json").write_text(
        json.dumps({"project": f"neu-{kind}", "counts": {"items": len(rows)}, "excluded": []})
    )
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det")
    ap.add_argument("--kind", choices=["classify", "detect"], default="detect")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=15)
    args = ap.parse_args()

    import torch
    from torch.utils.data import DataLoader

    from crux.postprocess import InputSpec
    from crux.training.augment import build_augment
    from crux.training.config import load_pipeline_config
    from crux.training.dataset import InspectionDataset, collate, worker_init
    from crux.training.prepare import prepare

    torch.set_num_threads(1)
    cfg = load_pipeline_config(
        {"data": {"kind": args.kind, "image_size": args.size}, "augment": {"transforms": AUGMENT}}
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = make_neu_dataset(args.src, Path(tmp), args.kind)
        prepare(data, Path(tmp) / "prepared", cfg.data)
        print(f"dataset version + prepare: {time.perf_counter() - t0:.1f} s")
        spec = InputSpec(args.size, cfg.data.channels, cfg.data.mean, cfg.data.std)
        augment = build_augment(cfg.augment, args.kind, args.size, cfg.data.channels)
        ds = InspectionDataset(Path(tmp) / "prepared", "train", args.kind, spec, augment)
        ds.seed_augment(0)
        results = []
        for workers in args.workers:
            loader = DataLoader(
                ds,
                batch_size=args.batch,
                shuffle=True,
                num_workers=workers,
                collate_fn=collate,
                worker_init_fn=worker_init,
                persistent_workers=False,
            )
            it = iter(loader)
            next(it)  # worker start-up is not throughput
            n, t = 0, time.perf_counter()
            for _ in range(args.batches):
                try:
                    batch = next(it)
                except StopIteration:
                    it = iter(loader)
                    batch = next(it)
                n += batch["image"].shape[0]
            rate = n / (time.perf_counter() - t)
            results.append({"workers": workers, "images_per_s": round(rate, 1)})
            print(f"workers={workers}: {rate:,.0f} images/s ({args.kind}, {args.size}px, batch {args.batch})")
        shutil.rmtree(Path(tmp) / "prepared", ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
