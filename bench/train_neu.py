"""Benchmark: train on NEU-DET from scratch with the shipped params and measure the frozen test split.

    .venv/bin/python bench/train_neu.py [--kind classify|detect] [--epochs 30] [--image-size 200]
        [--width 32] [--out bench/results/train_neu_<kind>.json]

Builds the dataset version from ../shared/datasets/neu-det (classification: each image's class from its
file name; detection: its YOLO boxes; a stratified 60/20/20 split), then runs the very functions the dvc.yaml
stages call — prepare, train, evaluate — with params.yaml plus the overrides given. Prints and writes the
test metrics, the epoch time and the hardware. Targets (issue 5): classification accuracy >= 0.99, detection
mAP@0.5 >= 0.75, both from scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dataloader import make_neu_dataset  # noqa: E402

from crux.training.config import load_pipeline_config, merge_params  # noqa: E402


def export_and_time(root: Path, src: Path, params: dict) -> dict:
    """The trained model as the edge gets it: fp32 and INT8 ONNX, their test metrics and latencies."""
    import statistics

    from crux.config import from_mapping
    from crux.edge.predict import OnnxModel, timed_predict
    from crux.export import ExportConfig, export

    cfg = from_mapping(ExportConfig, {**params["export"], "quantize": True}, "export")
    postprocess = json.loads((root / "eval" / "postprocess.json").read_text())
    card = export(
        root / "model",
        root / "export",
        cfg,
        prepared_dir=root / "prepared",
        metrics=json.loads((root / "eval" / "metrics.json").read_text()),
        postprocess=postprocess,
    )
    frames = [p.read_bytes() for p in sorted((src / "images").glob("*.jpg"))[:100]]
    latency = {}
    for name in ("model.onnx", "model.int8.onnx"):
        model = OnnxModel.from_dir(root / "export", version=None, threads=1, model_file=name)
        for frame in frames[:10]:
            timed_predict(model, frame)  # warm-up
        latency[name] = round(statistics.median(timed_predict(model, f)[1] for f in frames), 3)
    return {"parity": card.get("parity"), "quantized": card.get("quantized"), "frame_ms_median": latency}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det")
    parser.add_argument("--kind", choices=("classify", "detect"), default="classify")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=200)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--export", action="store_true", help="also export ONNX + INT8; report both on the test split")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    # Absolute before the chdir into the work folder below.
    out = (args.out or ROOT / "bench" / "results" / f"train_neu_{args.kind}.json").resolve()

    import torch

    from crux.training.pipeline import evaluate, prepare, train

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = {
        "data": {"image_size": args.image_size},
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "model": {"width": args.width},
            "progress_bar": False,
        },
    }
    cfg = load_pipeline_config(merge_params(params, overrides))
    with tempfile.TemporaryDirectory(prefix="crux-bench-train-") as tmp:
        root = Path(tmp)
        os.chdir(root)  # dvclive writes beside the working directory; keep it out of the project's git
        data = make_neu_dataset(args.src, root, args.kind)
        prepare(data, root / "prepared", cfg.data)
        started = time.perf_counter()
        summary = train(root / "prepared", root / "model", cfg)
        train_s = time.perf_counter() - started
        metrics = evaluate(root / "model", root / "prepared", root / "eval", cfg.evaluate)
        exported = export_and_time(root, args.src, params) if args.export else None
    headline = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    figures = {
        "kind": args.kind,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "width": args.width,
        "train_wall_s": round(train_s, 1),
        "epoch_s": round(train_s / args.epochs, 1),
        "train_step_s": summary.get("train_step_s"),
        "best_val": summary.get("best_val"),
        "test": headline,
        "onnx": exported,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores",
        "machine": platform.machine(),
    }
    print(json.dumps(figures, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
