"""Benchmark: edge inference latency, ONNX Runtime vs torch eager, on 200x200 NEU-DET images (issue 6) and, for
the segmenter, on Magnetic Tile tiles at the line's input size (issue 12).

    .venv/bin/python bench/edge_latency.py [--src ../shared/datasets/neu-det/images] [--images 100]
        [--size 200] [--exporter dynamo|torchscript] [--bundle-classify model.pt] [--bundle-detect model.pt]
        [--kinds classify,detect,segment] [--bundle-segment model.pt] [--segment-src ../shared/datasets/magnetic-tile]
        [--out bench/results/edge_latency.json]

For the classifier and the detector (the default training architecture, or the given bundles): export with
`crux.ship.export`, then time on the same preprocessed images, one thread, batch 1:
  - ort_ms:     ONNX Runtime session.run only (what the issue's targets are about)
  - torch_ms:   torch eager forward of the same model (inference_mode), same inputs, same run
  - edge_ms:    the edge's whole per-frame path: JPEG decode + preprocess + ORT + crux.postprocess
  - int8_ort_ms: session.run of the static INT8 (QDQ) model, calibrated on the first 32 inputs
  - int8_edge_ms: the whole per-frame path with the INT8 model (decode to verdict; the segmenter's target)
Reports medians (and p90), the torch/ORT ratio, and checks targets: classifier <= 2 ms, detector <= 8 ms,
ratio >= 2x. Weights are random when no bundle is given (latency does not depend on their values).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_MS = {"classify": 2.0, "detect": 8.0, "segment": 15.0}
# The segmenter's target is the whole INT8 frame (decode to verdict); the others' is ORT's session.run.
TARGET_OF = {"classify": "ort_ms", "detect": "ort_ms", "segment": "int8_edge_ms"}
MAGNETIC_TILE_CLASSES = ["ok", "blowhole", "break", "crack", "fray", "uneven"]
TARGET_RATIO = 2.0


def default_bundle(path: Path, kind: str, size: int) -> Path:
    """The architecture `crux train` builds with default params (train.model defaults), random weights."""
    import torch

    from crux.kinds import get_kind
    from crux.postprocess import DetectSpec, InputSpec
    from crux.train.models.bundle import save_bundle
    from crux.train.recipe import ModelParams

    torch.manual_seed(0)
    classes = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    params, ok = ModelParams(), None
    if kind == "segment":  # the Magnetic Tile line's model (params.yaml pipeline.overrides.magnetic-tile)
        classes, ok, params = MAGNETIC_TILE_CLASSES, "ok", ModelParams(width=16, neck_width=32)
    task_kind = get_kind(kind)
    model_config = task_kind.model_config(params, len(task_kind.head_classes(classes, ok)), 1)
    model = task_kind.build_model(model_config).eval()
    detect = DetectSpec(tuple(params.strides), len(classes)).to_dict() if kind == "detect" else None
    meta = {
        "kind": kind,
        "classes": classes,
        "ok_class": ok,
        "input": InputSpec(size, 1).to_dict(),
        "model_config": model_config,
        "detect": detect,
        **({kind: spec} if (spec := task_kind.decode_spec(classes, ok)) else {}),
        "info": {"note": "random weights (benchmark)"},
    }
    save_bundle(path, model, meta)
    return path


def _stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median": round(statistics.median(s), 4),
        "p90": round(s[int(0.9 * (len(s) - 1))], 4),
        "min": round(s[0], 4),
    }


def _int8_model(out: Path, card: dict[str, Any], calib: list[Any]) -> Any:
    """Static INT8 of the exported model with `crux export`'s own quantisation, calibrated on the first benchmark
    inputs."""
    from crux.edge.predict import OnnxModel
    from crux.ship.export import quantize_onnx

    path = out / "model.int8.onnx"
    quantize_onnx(out / "model.onnx", path, calib)
    return OnnxModel(path, card, threads=1)


def bench_kind(kind: str, bundle: Path, images: list[Path], work: Path, exporter: str, repeats: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from crux.edge.predict import OnnxModel
    from crux.postprocess import load_image, preprocess
    from crux.ship.export import ExportConfig, export
    from crux.train.models.bundle import load_bundle

    out = work / f"export-{kind}"
    t0 = time.perf_counter()
    card = export(bundle, out, ExportConfig(exporter=exporter, parity_images=4))
    export_s = time.perf_counter() - t0
    model = OnnxModel.from_dir(out, threads=1)
    torch_model, _ = load_bundle(bundle)
    inputs = [preprocess(load_image(p, model.spec.channels), model.spec)[0][None] for p in images]
    encoded = [p.read_bytes() for p in images]

    def timed(fn: Any, x: Any) -> float:
        t = time.perf_counter()
        fn(x)
        return (time.perf_counter() - t) * 1000.0

    with torch.inference_mode():
        tx = [torch.from_numpy(x) for x in inputs]
        for x, t in zip(inputs[:10], tx[:10], strict=False):  # warm-up both
            model.run_raw(x)
            torch_model(t)
        ort_ms, torch_ms, edge_ms = [], [], []
        # Interleaved so both see the same machine state (other processes, frequency scaling).
        for _ in range(repeats):
            for x, t, data in zip(inputs, tx, encoded, strict=True):
                ort_ms.append(timed(model.run_raw, x))
                torch_ms.append(timed(torch_model, t))
                edge_ms.append(timed(model.predict_bytes, data))
        diff = max(
            float(np.abs(model.run_raw(x) - torch_model(t).numpy()).max())
            for x, t in zip(inputs[:5], tx[:5], strict=True)
        )
    int8 = _int8_model(out, card, inputs[:32])
    int8_ms, int8_edge_ms = [], []
    for data in encoded[:10]:
        int8.predict_bytes(data)  # warm-up
    for _ in range(repeats):
        for x, data in zip(inputs, encoded, strict=True):
            int8_ms.append(timed(int8.run_raw, x))
            int8_edge_ms.append(timed(int8.predict_bytes, data))
    ort, tor, edge = _stats(ort_ms), _stats(torch_ms), _stats(edge_ms)
    ratio = round(tor["median"] / ort["median"], 2)
    timings = {"ort_ms": ort, "int8_edge_ms": _stats(int8_edge_ms)}
    return {
        "kind": kind,
        "input": card["input"]["image_size"],
        "onnx_bytes": card["onnx"]["bytes"],
        "opset": card["onnx"]["opset"],
        "export_s": round(export_s, 2),
        "frames": len(ort_ms),
        "ort_ms": ort,
        "torch_ms": tor,
        "edge_ms": edge,
        "int8_ort_ms": _stats(int8_ms),
        "int8_edge_ms": timings["int8_edge_ms"],
        "torch_over_ort": ratio,
        "max_abs_diff": diff,
        "target_ms": TARGET_MS[kind],
        "target_of": TARGET_OF[kind],
        "meets_latency_target": timings[TARGET_OF[kind]]["median"] <= TARGET_MS[kind],
        "meets_ratio_target": ratio >= TARGET_RATIO,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "datasets" / "neu-det" / "images")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    ap.add_argument("--bundle-classify", type=Path)
    ap.add_argument("--bundle-detect", type=Path)
    ap.add_argument("--bundle-segment", type=Path)
    ap.add_argument("--kinds", default="classify,detect,segment", help="comma-separated kinds to time")
    ap.add_argument("--segment-src", type=Path, default=ROOT.parent / "shared" / "datasets" / "magnetic-tile")
    ap.add_argument("--segment-size", type=int, default=224, help="the Magnetic Tile line's input size")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "edge_latency.json")
    args = ap.parse_args()

    import onnxruntime
    import torch

    torch.set_num_threads(1)  # the issue's setting: one thread, for both runtimes
    torch.set_num_interop_threads(1)

    def spread(found: list[Path]) -> list[Path]:
        return found[:: max(1, len(found) // args.images)][: args.images]

    images = spread(sorted(args.src.glob("*.jpg")))
    tiles = spread(sorted(args.segment_src.rglob("*.jpg")))
    if not images:
        sys.exit(f"no images under {args.src}")
    results = []
    kinds = [k for k in args.kinds.split(",") if k]
    with tempfile.TemporaryDirectory(prefix="crux-bench-") as tmp:
        work = Path(tmp)
        for kind, given in (
            ("classify", args.bundle_classify),
            ("detect", args.bundle_detect),
            ("segment", args.bundle_segment),
        ):
            if kind not in kinds:
                continue
            size = args.segment_size if kind == "segment" else args.size
            frames = tiles if kind == "segment" else images
            bundle = given or default_bundle(work / f"{kind}.pt", kind, size)
            r = bench_kind(kind, bundle, frames, work, args.exporter, args.repeats)
            r["bundle"] = str(given) if given else "default architecture, random weights"
            results.append(r)
            print(
                f"{kind:9s} ORT median {r['ort_ms']['median']:.3f} ms (p90 {r['ort_ms']['p90']:.3f}) | torch eager "
                f"{r['torch_ms']['median']:.3f} ms | int8 ORT {r['int8_ort_ms']['median']:.3f} ms | "
                f"ratio {r['torch_over_ort']:.2f}x | edge frame "
                f"{r['edge_ms']['median']:.3f} ms | int8 frame {r['int8_edge_ms']['median']:.3f} ms | "
                f"target {r['target_of']} <= {r['target_ms']} ms: "
                f"{'ok' if r['meets_latency_target'] else 'MISSED'}, ratio >= {TARGET_RATIO}x: "
                f"{'ok' if r['meets_ratio_target'] else 'MISSED'}"
            )
    report = {
        "benchmark": "edge_latency",
        "images": len(images),
        "source": str(args.src),
        "threads": 1,
        "batch": 1,
        "exporter": args.exporter,
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
