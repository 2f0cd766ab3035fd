"""Benchmark: train from scratch with the shipped params on a real dataset and measure its frozen test split.

    .venv/bin/python bench/train.py [--dataset neu-det|magnetic-tile] [--kind classify|detect] [--epochs 30]
        [--image-size 200] [--width 32] [--set train.ema_decay=0.998 ...] [--export]
        [--out bench/results/train_<dataset>_<kind>.json]

Builds the dataset version from ../shared/datasets (NEU-DET: each image's class from its file name, or its YOLO
boxes; Magnetic Tile: `ok` + five defect types, `ok` the OK class), with a stratified 60/20/20 split, then runs the
very functions the dvc.yaml stages call (prepare, train, evaluate) with params.yaml plus the overrides given.
Prints and writes the test metrics, the epoch time and the hardware. Targets (issue 5): NEU classification
accuracy >= 0.99, NEU detection mAP@0.5 >= 0.75, Magnetic Tile NG recall >= 0.99 at <= 2% false rejects and
6-class accuracy >= 0.987, all from scratch.
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
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from datasets import make_magnetic_tile_dataset, make_neu_dataset  # noqa: E402

from crux.train.recipe import load_pipeline_config, merge_params  # noqa: E402


def export_and_time(root: Path, src: Path, params: dict) -> dict:
    """The trained model as the edge gets it: fp32 and INT8 ONNX, their test metrics and latencies."""
    import statistics

    from crux.config import from_mapping
    from crux.inference import OnnxModel, timed_predict
    from crux.ship.export import ExportConfig, export

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
    frames = [p.read_bytes() for p in sorted(src.rglob("*.jpg"))[:100]]
    latency = {}
    for name in ("model.onnx", "model.int8.onnx"):
        model = OnnxModel.from_dir(root / "export", version=None, threads=1, model_file=name)
        for frame in frames[:10]:
            timed_predict(model, frame)  # warm-up
        latency[name] = round(statistics.median(timed_predict(model, f)[1] for f in frames), 3)
    return {"parity": card.get("parity"), "quantized": card.get("quantized"), "frame_ms_median": latency}


def _misclassified(root: Path) -> list[dict[str, str]]:
    """The test images the model got wrong, by their source file name (the evaluator's confusion plot follows
    the order of prepared/test.jsonl)."""
    names = {}
    for line in (root / "data" / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        names[row["sha256"]] = row["original_name"]
    items = [json.loads(line) for line in (root / "prepared" / "test.jsonl").read_text().splitlines() if line]
    pairs = json.loads((root / "eval" / "plots" / "confusion.json").read_text())
    return [
        {"image": names[item["sha256"]], "actual": pair["actual"], "predicted": pair["predicted"]}
        for item, pair in zip(items, pairs, strict=True)
        if pair["actual"] != pair["predicted"]
    ]


def run_benchmark(
    dataset: str,
    kind: str,
    overrides: dict[str, Any],
    src: Path | None = None,
    export: bool = False,
    splits: tuple[str, ...] = ("val", "test"),
) -> dict[str, Any]:
    """params.yaml + `overrides` trained on the benchmark split of `dataset`; the figures of each split in `splits`
    (val chooses recipes, test is reported once) and the training summary. Also used by bench/pretrained.py."""
    from crux.train.pipeline import evaluate, prepare, train

    src = src or ROOT.parent / "shared" / "datasets" / dataset
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg = load_pipeline_config(merge_params(params, overrides))
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="crux-bench-train-") as tmp:
        root = Path(tmp)
        os.chdir(root)  # dvclive writes beside the working directory; keep it out of the project's git
        try:
            if dataset == "magnetic-tile":
                data = make_magnetic_tile_dataset(src, root, kind=kind)
            else:
                data = make_neu_dataset(src, root, kind)
            prepare(data, root / "prepared", cfg.data)
            started, cpu0 = time.perf_counter(), time.process_time()
            summary = train(root / "prepared", root / "model", cfg)
            train_s, train_cpu_s = time.perf_counter() - started, time.process_time() - cpu0
            measured = {}
            for split in splits:
                metrics = evaluate(root / "model", root / "prepared", root / f"eval-{split}", cfg.evaluate, split=split)
                headline = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
                if "inspection" in metrics:
                    headline["inspection"] = metrics["inspection"]
                measured[split] = headline
            if "test" in splits:
                (root / "eval").symlink_to(root / "eval-test")
            misclassified = _misclassified(root) if kind == "classify" and "test" in splits else None
            exported = export_and_time(root, src, params) if export else None
        finally:
            os.chdir(cwd)
    return {
        "train_wall_s": round(train_s, 1),
        # Process CPU time of the fit (all threads): the figure to compare machines and recipes by.
        "train_cpu_min": round(train_cpu_s / 60, 2),
        "summary": summary,
        **measured,
        "misclassified": misclassified,
        "onnx": exported,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("neu-det", "magnetic-tile"), default="neu-det")
    parser.add_argument("--src", type=Path, default=None, help="default ../shared/datasets/<dataset>")
    parser.add_argument("--kind", choices=("classify", "detect", "segment"), default="classify")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=200)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any params.yaml key (YAML value), e.g. --set train.ema_decay=0.998; repeatable",
    )
    parser.add_argument("--export", action="store_true", help="also export ONNX + INT8; report both on the test split")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.dataset == "magnetic-tile" and args.kind == "detect":
        parser.error("magnetic-tile is benchmarked as classification or segmentation (its masks are not boxes)")
    if args.dataset == "neu-det" and args.kind == "segment":
        parser.error("neu-det has boxes, not masks: it cannot be benchmarked as segmentation")
    # Absolute before the chdir into the work folder.
    out = (args.out or ROOT / "bench" / "results" / f"train_{args.dataset}_{args.kind}.json").resolve()
    overrides = {
        "data": {"image_size": args.image_size},
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "model": {"width": args.width},
            "progress_bar": False,
        },
    }
    apply_sets(overrides, args.set)
    result = run_benchmark(args.dataset, args.kind, overrides, args.src, args.export)
    summary = result["summary"]
    figures = {
        "dataset": args.dataset,
        "kind": args.kind,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "width": args.width,
        "overrides": args.set,
        "train_wall_s": result["train_wall_s"],
        "train_cpu_min": result["train_cpu_min"],
        "epoch_s": round(result["train_wall_s"] / args.epochs, 1),
        "train_step_s": summary.get("train_step_s"),
        "best_val": summary.get("best_val"),
        # Head mode: the L2 search on validation (metric, log-loss) and the feature cache's work.
        "head": summary.get("head"),
        "val": result["val"],
        "test": result["test"],
        "misclassified": result["misclassified"],
        "onnx": result["onnx"],
    }
    report(figures, out)
    return 0


def apply_sets(overrides: dict[str, Any], assignments: list[str]) -> None:
    """`--set SECTION.KEY=VALUE` (a YAML value) into the nested overrides, in place."""
    for assignment in assignments:
        dotted, _, value = assignment.partition("=")
        *parents, leaf = dotted.split(".")
        node = overrides
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = yaml.safe_load(value)


def report(figures: dict[str, Any], out: Path) -> None:
    """Print a benchmark's figures with the machine they came from, and write them as JSON to `out`."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    figures = {**figures, "device": device, "machine": platform.machine()}
    print(json.dumps(figures, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
