"""Benchmark: the `anomaly` kind on Magnetic Tile, trained from scratch on the train split's OK tiles only.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/anomaly.py [--epochs 60] [--image-size 224] [--width 16]
        [--max-time 00:00:30:00] [--set train.lr=0.003 ...] [--subset 0] [--export] [--test]
        [--method synthesis|patchcore]  (patchcore: --set train.patchcore.bank_size=4096 ...)
        [--out bench/results/anomaly_magnetic-tile.json]

The dataset version is Magnetic Tile as an OK/NG line (`OK` = MT_Free, every defect folder = `NG`, each tile's
mask kept for pixel metrics), split 60/20/20 per folder like bench/train.py. Training sees the train split's OK tiles
(its NG tiles are dropped by the anomaly kind); validation (checkpoint choice, threshold calibration at
evaluate.max_false_reject) sees val OK + NG. `--test` evaluates the test split once; without it the figures are
validation's (for choosing a recipe). `--export` adds ONNX + INT8 parity and one-thread frame latency.
Targets (issue 18): test image AUROC >= 0.977, NG recall >= 0.95 at <= 2% false rejects, INT8 median <= 15 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from datasets import MAGNETIC_TILE_CLASSES, _row, _split, _store  # noqa: E402

from crux.train.recipe import load_pipeline_config, merge_params  # noqa: E402


def make_anomaly_dataset(src: Path, dst: Path, every: int = 5, subset: int = 0) -> Path:
    """Magnetic Tile as an OK/NG anomaly line in `dst/data/` (masks as 0/1 PNGs: any non-zero pixel anomalous)."""
    import io

    import numpy as np
    from PIL import Image

    data = dst / "data"
    rows, task_id = [], 0
    for folder, cls in MAGNETIC_TILE_CLASSES.items():
        images = sorted((src / folder).glob("*.jpg"))
        if subset:
            images = images[:subset]
        for i, img in enumerate(images):
            task_id += 1
            rel, sha, w, h = _store(data, img)
            with Image.open(img.with_suffix(".png")) as m:
                fg = np.asarray(m.convert("L")) > 127
            buf = io.BytesIO()
            Image.fromarray(fg.astype(np.uint8), mode="L").save(buf, format="PNG")
            msha = hashlib.sha256(buf.getvalue()).hexdigest()
            mrel = f"masks/{msha[:2]}/{msha}.png"
            (data / mrel).parent.mkdir(parents=True, exist_ok=True)
            (data / mrel).write_bytes(buf.getvalue())
            label = "OK" if cls == "ok" else "NG"
            row = _row(task_id, img, rel, sha, w, h, [{"box": None, "class": label}], _split(i, every))
            rows.append({**row, "mask": mrel})
    rows.sort(key=lambda r: r["sha256"])
    (data / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    (data / "classes.json").write_text(json.dumps({"classes": ["OK", "NG"], "kind": "anomaly", "ok_class": "OK"}))
    (data / "dataset.json").write_text(json.dumps({"project": "magnetic-tile-ok", "counts": {"items": len(rows)}}))
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "datasets" / "magnetic-tile")
    parser.add_argument(
        "--method",
        choices=("synthesis", "patchcore"),
        default="synthesis",
        help="train.anomaly_method: synthesis trains the segmenter; patchcore fills a memory bank (no training)",
    )
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-time", default=None, help="train.max_time, DD:HH:MM:SS")
    parser.add_argument("--subset", type=int, default=0, help="at most N images per folder (a quick look)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--test", action="store_true", help="evaluate the test split (once, for the final recipe)")
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="copy the work folder (model, export) here")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = (args.out or ROOT / "bench" / "results" / "anomaly_magnetic-tile.json").resolve()
    keep = args.keep.resolve() if args.keep else None

    from crux.train.pipeline import evaluate, prepare, train

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides: dict[str, Any] = {
        "data": {"image_size": args.image_size},
        "augment": {
            "transforms": [
                {"name": "HorizontalFlip", "args": {"p": 0.5}},
                {"name": "VerticalFlip", "args": {"p": 0.5}},
            ]
        },
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "model": {"width": args.width, "neck_width": 2 * args.width},
            "lr": 0.003,
            "progress_bar": False,
            "max_time": args.max_time,
            "val_every": 5,
        },
    }
    if args.method == "patchcore":
        # Pretrained Lite0 features, no epochs (the synthesis knobs above are then unused).
        overrides["train"]["anomaly_method"] = "patchcore"
        overrides["train"]["model"] = {"backbone": "efficientnet-lite0", "pretrained": "imagenet"}
    from train import apply_sets

    apply_sets(overrides, args.set)
    cfg = load_pipeline_config(merge_params(params, overrides))
    with tempfile.TemporaryDirectory(prefix="crux-bench-anomaly-") as tmp:
        root = Path(tmp)
        os.chdir(root)
        data = make_anomaly_dataset(args.src, root, subset=args.subset)
        counts = prepare(data, root / "prepared", cfg.data)["class_counts"]
        started = time.perf_counter()
        summary = train(root / "prepared", root / "model", cfg)
        train_s = time.perf_counter() - started
        val_metrics = evaluate(root / "model", root / "prepared", root / "eval_val", cfg.evaluate, split="val")
        split = "test" if args.test else "val"
        metrics = val_metrics
        if args.test:
            metrics = evaluate(root / "model", root / "prepared", root / "eval", cfg.evaluate, split="test")
        else:
            import shutil

            shutil.copytree(root / "eval_val", root / "eval")
        exported = None
        if args.export:
            from train import export_and_time

            exported = export_and_time(root, args.src, params)
            from crux.inference import OnnxModel
            from crux.ship.export import evaluate_onnx

            int8 = OnnxModel.from_dir(root / "export", threads=1, model_file="model.int8.onnx")
            exported["int8_metrics"] = evaluate_onnx(int8, root / "prepared", split)
        if keep:
            import shutil

            shutil.copytree(root, keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("data", "checkpoints"))
    figures = {
        "dataset": "magnetic-tile (OK/NG)",
        "kind": "anomaly",
        "method": args.method,
        "patchcore": summary.get("patchcore"),
        "split_counts": counts,
        "epochs_run": summary.get("epochs"),
        "stopped_by": summary.get("stopped_by"),
        "image_size": args.image_size,
        "width": args.width,
        "overrides": args.set,
        "train_wall_s": round(train_s, 1),
        "train_step_s": summary.get("train_step_s"),
        "best_val_auroc": summary.get("best_val"),
        "val": val_metrics,
        **({"test": metrics} if args.test else {}),
        "onnx": exported,
    }
    from train import report

    report(figures, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
