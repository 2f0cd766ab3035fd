"""Benchmark: decode + augment throughput of the training data pipeline on NEU-DET.

    .venv/bin/python bench/dataloader.py [--src ../shared/datasets/neu-det] [--kind classify|detect]
        [--workers 0 1 2] [--size 200] [--batches 20]

Builds a dataset version in the contract layout from NEU-DET (classification: the image's class from its
file name; detection: the YOLO boxes), prepares it, then times the train DataLoader (Pillow decode, resize, the
params.yaml albumentations pipeline, collate) per worker count. Target (issue 5): >= 1,500 images/s on 2 cores
at 200 px.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from datasets import make_neu_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det")
    ap.add_argument("--kind", choices=["classify", "detect"], default="detect")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=15)
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON figures (default bench/results/dataloader_<kind>.json)"
    )
    args = ap.parse_args()
    import torch
    import yaml
    from torch.utils.data import DataLoader

    from crux.postprocess import InputSpec
    from crux.train.augment import build_augment
    from crux.train.prepare import prepare
    from crux.train.recipe import load_pipeline_config
    from crux.train.torch_dataset import InspectionDataset, collate, worker_init

    torch.set_num_threads(1)
    # The shipped augment pipeline: the figure is what `dvc repro` trains with.
    augment_params = yaml.safe_load((ROOT / "params.yaml").read_text())["augment"]
    cfg = load_pipeline_config({"data": {"kind": args.kind, "image_size": args.size}, "augment": augment_params})
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
    figures = {"kind": args.kind, "image_size": args.size, "batch": args.batch, "cpus": os.cpu_count(), "runs": results}
    print(json.dumps(figures))
    out = args.out or ROOT / "bench" / "results" / f"dataloader_{args.kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
