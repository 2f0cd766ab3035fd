"""`crux export`: a trained bundle (`model.pt`) → one self-contained ONNX file + parity report + model card.

OUT_DIR/model.onnx        weights inside (no .onnx.data), dynamic batch, input "input" (B, C, S, S) float32,
                          output "output" (the raw tensor of crux.postprocess); `onnx.checker` full check
OUT_DIR/model.int8.onnx   optional INT8 static quantisation (QDQ), calibrated on train images
OUT_DIR/card.json         the model card: kind, classes, input spec, post-processing, metrics, parity,
                          quantisation, lineage (dataset version, git revision, bundle hash), creation time

Parity runs torch and ONNX Runtime on the same preprocessed validation images and fails the export when the
raw outputs differ by more than `parity_atol`, a top-1 class differs, or the post-processed boxes differ.
torch/onnx are imported inside functions; the card and ONNX evaluation need only onnxruntime and numpy.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from crux.config import ConfigError
from crux.data.store import sha256_file
from crux.errors import CruxError
from crux.inference import CARD_FORMAT
from crux.monitor.drift import CARD_KEY
from crux.postprocess import (
    Detections,
    DetectSpec,
    InputSpec,
    box_iou,
    load_image,
    mask_channels,
    open_image,
    preprocess,
)

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CARD_FILE = "card.json"
INPUT_NAME = "input"
OUTPUT_NAME = "output"
EXPORTERS = ("dynamo", "torchscript")
# Test-time augmentation generators and the albumentations transforms that make them label-preserving in training.
TTA_GENERATORS = {"hflip": "HorizontalFlip", "vflip": "VerticalFlip", "rot90": "RandomRotate90"}


def tta_views(generators: Sequence[str]) -> list[tuple[int, bool]]:
    """The group the generators span, as (quarter turns k, then flip left-right?) pairs, identity first.

    Every flip/rotation of a square is rot90^k optionally followed by a horizontal flip (the dihedral group D4);
    composing on a labelled 2x2 grid finds which of the 8 the generators reach."""
    base = np.arange(4).reshape(2, 2)

    def apply(a: NDArray[Any], view: tuple[int, bool]) -> NDArray[Any]:
        a = np.rot90(a, view[0])
        return a[:, ::-1] if view[1] else a

    elements = {(k, f): apply(base, (k, f)).tobytes() for k in range(4) for f in (False, True)}
    by_bytes = {v: k for k, v in elements.items()}
    gens = {"hflip": (0, True), "vflip": (2, True), "rot90": (1, False)}
    found = [(0, False)]
    frontier = [(0, False)]
    while frontier:
        nxt = []
        for view in frontier:
            for g in generators:
                composed = by_bytes[apply(apply(base, view), gens[g]).tobytes()]
                if composed not in found:
                    found.append(composed)
                    nxt.append(composed)
        frontier = nxt
    return found


def tta_module(model: Any, views: Sequence[tuple[int, bool]]) -> Any:
    """`model` wrapped to average its raw output (classifier logits) over the views, traceable to ONNX."""
    import torch

    class TTA(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            outs = []
            for k, flip in views:
                # torch.rot90(x, k, (2, 3)) from transpose and flip (the TorchScript exporter has no rot90).
                v = x if k == 0 else x.transpose(2, 3).flip(2) if k == 1 else x.flip(2).flip(3) if k == 2 else None
                v = x.transpose(2, 3).flip(3) if v is None else v
                outs.append(self.model(v.flip(3) if flip else v))
            return torch.stack(outs).mean(0)

    return TTA().eval()


OUTPUT_LAYOUTS = {
    "classify": "(B, classes) logits",
    "detect": "(B, N, 5 + classes) ltrb, ctr, cls",
    "segment": "(B, 1 + defect classes, S, S) logits, channel 0 background",
    "anomaly": "(B, 2, S, S) logits, channel 0 normal, channel 1 anomalous",
}


class ExportError(CruxError, RuntimeError):
    """The ONNX model failed a check (onnx.checker, parity); nothing is left in the output folder."""


@dataclass(frozen=True)
class ExportConfig:
    """params.yaml `export`."""

    # dynamo: torch.export-based exporter (opset 18+, the supported path); torchscript: legacy, faster.
    exporter: str = "dynamo"
    # ONNX opset; null: the exporter's default (dynamo 20 on torch 2.13, torchscript 17).
    opset: int | None = None
    # Validation images compared between torch and ONNX Runtime.
    parity_images: int = 32
    # Largest accepted absolute difference of raw outputs (logits / box distances) torch vs ORT.
    parity_atol: float = 1e-4
    # Detector: the score at which the edge reports a box and calls the image NG (recorded in the card).
    box_threshold: float = 0.3
    # Also write model.int8.onnx (static INT8, QDQ) and report its accuracy change on the test split.
    quantize: bool = False
    # Train images used to calibrate INT8 activation ranges.
    calibration_images: int = 64
    # Test-time augmentation baked into the ONNX graph (classification): the logits averaged over the group the
    # listed label-preserving transforms generate (hflip, vflip, rot90: all three give the 8 flips/rotations).
    # The card's metrics are then re-measured on the exported graph, so the edge runs exactly what was measured.
    tta: tuple[str, ...] = ()
    # Val images whose NG-score histogram and NG rate the card records as the drift monitor's reference
    # (crux.monitor.drift); the whole split up to this many (a few thousand bin the scores finely enough).
    reference_images: int = 2000

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tta) - set(TTA_GENERATORS))
        if unknown:
            raise ConfigError(f"export.tta: {unknown} not among {', '.join(TTA_GENERATORS)}")
        if self.exporter not in EXPORTERS:
            raise ConfigError(f"export.exporter: {self.exporter!r} is not one of {', '.join(EXPORTERS)}")
        if self.opset is not None and not 13 <= self.opset <= 23:
            raise ConfigError(f"export.opset: {self.opset} must be in 13..23")
        if self.parity_images < 1 or self.calibration_images < 1 or self.reference_images < 1:
            raise ConfigError("export.parity_images, calibration_images and reference_images must be >= 1")
        if not self.parity_atol > 0:
            raise ConfigError(f"export.parity_atol: {self.parity_atol} must be > 0")
        if not 0.0 <= self.box_threshold <= 1.0:
            raise ConfigError(f"export.box_threshold: {self.box_threshold} must be in 0..1")


# ----------------------------------------------------------------------------------------------------------------
# Lineage helpers (the CLI passes their results in)


def dataset_version(dvc_file: Path) -> str | None:
    """The md5 DVC records for the dataset folder (`data/LINE.dvc`, or the old `data.dvc`: outs[0].md5), or None
    when absent."""
    import yaml

    path = Path(dvc_file)
    if not path.is_file():
        return None
    doc = yaml.safe_load(path.read_text()) or {}
    outs = doc.get("outs") or []
    return str(outs[0].get("md5")) if outs and outs[0].get("md5") else None


def git_revision(repo: Path) -> str | None:
    """HEAD commit, with "-dirty" when tracked files differ from it; None outside a git checkout."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev


# ----------------------------------------------------------------------------------------------------------------
# Inputs from the prepared dataset


def _split_records(prepared_dir: Path | None, split: str) -> list[dict[str, Any]]:
    if prepared_dir is None:
        return []
    from crux.train.prepare import read_split

    try:
        return read_split(Path(prepared_dir), split)
    except ValueError:
        return []


def validation_images(prepared_dir: Path | None, n: int) -> list[Path]:
    """The first `n` images of a prepared dataset's val split (publish runs a candidate on them), [] without one."""
    records = (
        _split_records(prepared_dir, "val")[:n] if prepared_dir is not None and Path(prepared_dir).is_dir() else []
    )
    return [Path(prepared_dir) / r["image"] for r in records]  # type: ignore[arg-type]


def _load_batch(
    prepared_dir: Path, records: Sequence[Mapping[str, Any]], spec: InputSpec
) -> tuple[NDArray[Any], list[tuple[int, int]]]:
    xs: list[NDArray[Any]] = []
    sizes: list[tuple[int, int]] = []
    for r in records:
        x, size = preprocess(load_image(Path(prepared_dir) / r["image"], spec.channels), spec)
        xs.append(x)
        sizes.append(size)
    return np.stack(xs), sizes


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# ----------------------------------------------------------------------------------------------------------------
# Export


def _torch_export(model: Any, spec: InputSpec, path: Path, cfg: ExportConfig) -> None:
    import torch

    example = torch.zeros(2, spec.channels, spec.image_size, spec.image_size)
    if cfg.exporter == "dynamo":
        kwargs: dict[str, Any] = {
            "dynamo": True,
            "external_data": False,  # one file: the edge downloads and hashes exactly one model
            "dynamic_shapes": {"x": {0: torch.export.Dim("batch")}},
            "verbose": False,
        }
    else:
        kwargs = {"dynamo": False, "dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}}
    if cfg.opset is not None:
        kwargs["opset_version"] = cfg.opset
    elif cfg.exporter == "torchscript":
        kwargs["opset_version"] = 17
    with torch.no_grad():
        torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], **kwargs)


def _parity(
    model: Any, onnx_model: Any, x: NDArray[Any], sizes: list[tuple[int, int]], kind: str, cfg: ExportConfig
) -> dict[str, Any]:
    """torch vs ORT on the same inputs: raw max abs diff, top-1 agreement / box matching."""
    import torch

    diffs, top1_mismatch, box_mismatch, n_boxes = [], 0, 0, 0
    pixels = pixels_same = label_mismatch = 0
    for sl in _batches(len(x), 8):
        with torch.inference_mode():
            ref = model(torch.from_numpy(x[sl])).numpy()
        got = onnx_model.run_raw(x[sl])
        if ref.shape != got.shape:
            raise ExportError(f"ONNX output shape {got.shape} differs from torch {ref.shape}")
        diffs.append(float(np.abs(ref - got).max()))
        ref_res = onnx_model.results_from_raw(ref, sizes[sl])
        got_res = onnx_model.results_from_raw(got, sizes[sl])
        for a, b in zip(ref_res, got_res, strict=True):
            if kind == "classify":
                top1_mismatch += int(a.label != b.label)
                continue
            if kind in ("segment", "anomaly"):
                # Labels are reported but not failed on: an NG score sitting on the threshold flips on 1e-6.
                label_mismatch += int(a.label != b.label)
                pixels += a.class_map.size
                pixels_same += int((a.class_map == b.class_map).sum())
                continue
            n_boxes += len(a.boxes)
            box_mismatch += _unmatched_boxes(a.boxes, b.boxes)
    # Batch 1 vs batch N on the same image: the dynamic batch axis must not change results.
    single = onnx_model.run_raw(x[:1])
    batched = onnx_model.run_raw(x[: min(len(x), 4)])[:1]
    batch_diff = float(np.abs(single - batched).max())
    max_diff = max([*diffs, batch_diff])
    report: dict[str, Any] = {
        "images": len(x),
        "max_abs_diff": max_diff,
        "batch1_vs_batchN_max_abs_diff": batch_diff,
        "atol": cfg.parity_atol,
        "top1_mismatches": top1_mismatch if kind == "classify" else None,
        "boxes": n_boxes if kind == "detect" else None,
        "unmatched_boxes": box_mismatch if kind == "detect" else None,
    }
    agreement_ok = True
    if kind in ("segment", "anomaly"):
        # Class maps of torch and ORT must agree on >= 99.9% of pixels (logits within atol almost always give 100%).
        report["pixel_agreement"] = round(pixels_same / max(pixels, 1), 6)
        report["label_mismatches"] = label_mismatch
        agreement_ok = report["pixel_agreement"] >= 0.999
    report["passed"] = bool(max_diff <= cfg.parity_atol and top1_mismatch == 0 and box_mismatch == 0 and agreement_ok)
    return report


def _unmatched_boxes(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Boxes of `a` without a same-class box in `b` at IoU >= 0.99 (and vice versa, counted once)."""
    if not a and not b:
        return 0
    if not a or not b:
        return max(len(a), len(b))
    ba = np.array([x.xyxy for x in a], np.float64)
    bb = np.array([x.xyxy for x in b], np.float64)
    iou = box_iou(ba, bb)
    same = np.array([[x.label == y.label for y in b] for x in a])
    ok = (iou >= 0.99) & same
    return int((~ok.any(axis=1)).sum() + (~ok.any(axis=0)).sum())


def build_card(
    meta: Mapping[str, Any],
    spec: InputSpec,
    detect: DetectSpec | None,
    ng_threshold: float,
    cfg: ExportConfig,
    model_path: Path,
    metrics: Mapping[str, Any] | None,
    lineage: Mapping[str, Any] | None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "format": CARD_FORMAT,
        "kind": meta["kind"],
        "classes": list(meta["classes"]),
        "ok_class": meta.get("ok_class"),
        "input": {
            **spec.to_dict(),
            "name": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "resize": "bilinear, aspect ratio not kept (crux.postprocess.preprocess)",
            "normalise": "(pixel / 255 - mean) / std",
        },
        "output": {"name": OUTPUT_NAME, "layout": OUTPUT_LAYOUTS[meta["kind"]]},
        "postprocess": {
            "detect": detect.to_dict() if detect else None,
            # An anomaly model decodes as a one-class segmenter: the edge reads the same `segment` parameters.
            **({"segment": meta[k]} if (k := "anomaly" if meta["kind"] == "anomaly" else "segment") in meta else {}),
            "box_threshold": cfg.box_threshold,
            "ng_threshold": ng_threshold,
        },
        "onnx": {
            "file": model_path.name,
            "sha256": sha256_file(model_path),
            "bytes": model_path.stat().st_size,
            "opset": opset,
            "ir_version": int(proto.ir_version),
            "exporter": cfg.exporter,
            "dynamic_batch": True,
        },
        "metrics": dict(metrics) if metrics else None,
        "lineage": {"train": meta.get("info"), **(dict(lineage) if lineage else {})},
        "created_at": (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def export(
    model_path: Path,
    out_dir: Path,
    cfg: ExportConfig,
    *,
    prepared_dir: Path | None = None,
    metrics: Mapping[str, Any] | None = None,
    postprocess: Mapping[str, Any] | None = None,
    lineage: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Export `model_path` (a model.pt bundle or a folder holding one) to `out_dir`; returns the card.

    `prepared_dir` (crux prepare output) supplies real validation images for parity, train images for INT8
    calibration and the test split for its accuracy report; without it parity uses seeded random inputs.
    `metrics` (metrics/metrics.json) and `postprocess` (metrics/postprocess.json: the decoding thresholds
    evaluation used) go into the card; `lineage` adds e.g. dataset_version and git_revision.
    """
    import onnx
    import torch

    from crux.inference import OnnxModel
    from crux.train.models.bundle import load_bundle

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model_path = Path(model_path)
    bundle = model_path / "model.pt" if model_path.is_dir() else model_path
    model, meta = load_bundle(bundle)
    spec = InputSpec.from_dict(meta["input"])
    detect = DetectSpec.from_dict(meta["detect"]) if meta.get("detect") else None
    pp = dict(postprocess or {})
    if detect is not None and pp.get("detect"):
        # Decode exactly as the evaluation that produced the card's metrics did.
        d = pp["detect"]
        detect = replace(
            detect,
            score_threshold=float(d.get("score_threshold", detect.score_threshold)),
            nms_iou=float(d.get("nms_iou", detect.nms_iou)),
            max_detections=int(d.get("max_detections", detect.max_detections)),
        )
    ng_threshold = float(pp.get("ng_threshold", 0.5))
    if meta["kind"] == "anomaly" and pp.get("anomaly"):
        meta = {**meta, "anomaly": dict(pp["anomaly"])}  # its region threshold follows the calibrated one

    views = tta_views(cfg.tta) if cfg.tta else []
    if views and meta["kind"] != "classify":
        raise ExportError("export.tta: test-time augmentation is implemented for classification only")
    plain_model = model
    if len(views) > 1:
        model = tta_module(model, views)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / ".export-tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        onnx_path = work / MODEL_FILE
        _torch_export(model, spec, onnx_path, cfg)
        for extra in work.glob("*.data"):
            raise ExportError(f"exporter wrote external data {extra.name}; expected one self-contained file")
        try:
            onnx.checker.check_model(str(onnx_path), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"onnx.checker: {exc}") from exc

        prepared_json = Path(prepared_dir) / "prepared.json" if prepared_dir is not None else None
        if prepared_json is not None and prepared_json.is_file():
            # Where the training labels came from, per class: imported, drawn, accepted pre-annotations, edited.
            mix = json.loads(prepared_json.read_text()).get("label_provenance")
            if mix:
                lineage = {**(lineage or {}), "label_provenance": mix}
        card0 = build_card(meta, spec, detect, ng_threshold, cfg, onnx_path, metrics, lineage, now)
        ort_model = OnnxModel(onnx_path, card0, threads=1)
        ort_model.warm_up()
        val = _split_records(prepared_dir, "val")[: cfg.parity_images]
        if val:
            x, sizes = _load_batch(prepared_dir, val, spec)  # type: ignore[arg-type]
            source = "val split"
        else:
            rng = np.random.default_rng(0)
            n = min(cfg.parity_images, 8)
            x = rng.normal(0, 1, (n, spec.channels, spec.image_size, spec.image_size)).astype(np.float32)
            sizes = [(spec.image_size, spec.image_size)] * n
            source = "random (no prepared dataset given)"
        parity = _parity(model, ort_model, x, sizes, meta["kind"], cfg)
        parity["source"] = source
        if not parity["passed"]:
            raise ExportError(f"parity failed: {json.dumps(parity)}")

        quant = None
        if cfg.quantize:
            quant = _quantize(onnx_path, work / INT8_FILE, card0, prepared_dir, spec, cfg)

        tta = None
        if len(views) > 1:
            tta, measured = _tta_report(plain_model, onnx_path, card0, spec, cfg, views, prepared_dir, work)
            if measured is not None:  # the card's metrics are those of the graph the edge runs
                card0 = {**card0, "metrics": measured}
        reference = monitor_reference(ort_model, prepared_dir, cfg.reference_images)
        card = {**card0, "parity": parity, "quantized": quant, "tta": tta, CARD_KEY: reference}
        for f in work.iterdir():
            f.replace(out_dir / f.name)
        (out_dir / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        if not cfg.quantize:
            (out_dir / INT8_FILE).unlink(missing_ok=True)  # a stale INT8 model from an earlier run
        return card
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _tta_report(
    plain_model: Any,
    tta_path: Path,
    card: Mapping[str, Any],
    spec: InputSpec,
    cfg: ExportConfig,
    views: Sequence[tuple[int, bool]],
    prepared_dir: Path | None,
    work: Path,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Test split with and without TTA through ONNX Runtime, and the frame latency of both (1 thread)."""
    import time

    from crux.inference import OnnxModel

    plain_path = work / "plain.onnx"
    _torch_export(plain_model, spec, plain_path, replace(cfg, exporter="torchscript"))
    report: dict[str, Any] = {
        "views": [{"rot90": k, "hflip": f} for k, f in views],
        "generators": list(cfg.tta),
    }
    models = {"tta": OnnxModel(tta_path, card), "plain": OnnxModel(plain_path, card)}
    x = np.zeros((1, spec.channels, spec.image_size, spec.image_size), np.float32)
    for name, m in models.items():
        m.run_raw(x)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            m.run_raw(x)
            times.append((time.perf_counter() - t) * 1000)
        report[f"{name}_ms"] = round(sorted(times)[10], 3)
    measured = None
    keys = ("accuracy", "macro_f1")
    if _split_records(prepared_dir, "val"):  # the split to decide on TTA by; test only reports
        on_val = {name: evaluate_onnx(m, prepared_dir, "val") for name, m in models.items()}  # type: ignore[arg-type]
        report["val"] = {name: {k: m.get(k) for k in keys} for name, m in on_val.items()}
    if _split_records(prepared_dir, "test"):
        measured = evaluate_onnx(models["tta"], prepared_dir, "test")  # type: ignore[arg-type]
        plain = evaluate_onnx(models["plain"], prepared_dir, "test")  # type: ignore[arg-type]
        report["test"] = {"tta": {k: measured.get(k) for k in keys}, "plain": {k: plain.get(k) for k in keys}}
        measured = {**measured, "tta_views": len(views)}
    plain_path.unlink(missing_ok=True)
    return report, measured


# ----------------------------------------------------------------------------------------------------------------
# INT8 and ONNX evaluation


def monitor_reference(model: Any, prepared_dir: Path | None, limit: int, batch_size: int = 16) -> dict[str, Any] | None:
    """The drift monitor's reference (crux.monitor.drift): the NG-score histogram and NG rate of the val split through
    the edge's decoding and the card's thresholds; None without a prepared val split."""
    from crux.monitor.drift import frame_ng, frame_score, reference_for_card

    records = _split_records(prepared_dir, "val")[:limit]
    if not records or prepared_dir is None:
        return None
    scores: list[float] = []
    ng: list[bool] = []
    for sl in _batches(len(records), batch_size):
        x, sizes = _load_batch(prepared_dir, records[sl], model.spec)
        for result in model.results_from_raw(model.run_raw(x), sizes):
            score = frame_score(model.kind, result, model.ok_class)
            scores.append(score)
            ng.append(frame_ng(model.kind, score, model.ok_class, model.ng_threshold, model.box_threshold))
    return reference_for_card(scores, ng)


def quantize_onnx(fp32: Path, int8: Path, calibration: Sequence[NDArray[Any]]) -> None:
    """Static INT8 (QDQ: per-channel int8 weights, uint8 activations) of `fp32`, calibrated on the given model
    inputs (each a batch of one); what `crux export` ships and `bench/edge_latency.py` times."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type information: Any
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self) -> dict[str, NDArray[Any]] | None:
            batch = next(self._it, None)
            return None if batch is None else {INPUT_NAME: batch}

    pre = int8.with_name("model.pre.onnx")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        source = pre
    except Exception as exc:  # pre-processing is an optimisation; quantise the raw graph if it fails
        log.warning("quant_pre_process failed (%s); quantising without it", exc)
        source = fp32
    quantize_static(
        str(source),
        str(int8),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    pre.unlink(missing_ok=True)


def _quantize(
    fp32: Path, int8: Path, card: Mapping[str, Any], prepared_dir: Path | None, spec: InputSpec, cfg: ExportConfig
) -> dict[str, Any]:
    train = _split_records(prepared_dir, "train")[: cfg.calibration_images]
    if not train:
        raise ExportError("export.quantize needs a prepared dataset with train images for calibration")
    x, _ = _load_batch(prepared_dir, train, spec)  # type: ignore[arg-type]
    quantize_onnx(fp32, int8, [x[i : i + 1] for i in range(len(x))])
    report: dict[str, Any] = {
        "file": int8.name,
        "sha256": sha256_file(int8),
        "bytes": int8.stat().st_size,
        "calibration_images": len(train),
        "format": "QDQ, per-channel int8 weights, uint8 activations",
    }
    test = _split_records(prepared_dir, "test")
    if test:
        from crux.inference import OnnxModel

        fp = evaluate_onnx(OnnxModel(fp32, card), prepared_dir, "test")  # type: ignore[arg-type]
        q = evaluate_onnx(OnnxModel(int8, card), prepared_dir, "test")  # type: ignore[arg-type]
        from crux.kinds import get_kind

        metric = get_kind(card["kind"]).monitor
        report["test"] = {
            "metric": metric,
            "fp32": fp.get(metric),
            "int8": q.get(metric),
            "change": None if fp.get(metric) is None else round(float(q[metric]) - float(fp[metric]), 6),
            "fp32_accuracy": fp.get("accuracy"),
            "int8_accuracy": q.get("accuracy"),
        }
        if "inspection" in fp:
            report["test"]["fp32_ng_recall"] = fp["inspection"].get("ng_recall")
            report["test"]["int8_ng_recall"] = q["inspection"].get("ng_recall")
            report["test"]["fp32_false_reject_rate"] = fp["inspection"].get("false_reject_rate")
            report["test"]["int8_false_reject_rate"] = q["inspection"].get("false_reject_rate")
    return report


def evaluate_onnx(model: Any, prepared_dir: Path, split: str = "test", batch_size: int = 16) -> dict[str, Any]:
    """Metrics of an ONNX model (`crux.inference.OnnxModel`) on a prepared split, through the edge code path
    (preprocess → ORT → crux.postprocess) and crux.evaluation. Used for the INT8 report and re-gating production."""
    from crux.evaluation import classification_metrics, detection_metrics

    records = _split_records(prepared_dir, split)
    if not records:
        raise ExportError(f"{prepared_dir}: the {split} split is empty")
    if model.kind == "segment":
        return _evaluate_onnx_segment(model, prepared_dir, records, split, batch_size)
    if model.kind == "anomaly":
        return _evaluate_onnx_anomaly(model, prepared_dir, records, split, batch_size)
    probs: list[NDArray[Any]] = []
    targets: list[int] = []
    dets: list[Detections] = []
    gt_boxes: list[NDArray[Any]] = []
    gt_labels: list[NDArray[Any]] = []
    sizes_all: list[tuple[int, int]] = []
    for sl in _batches(len(records), batch_size):
        chunk = records[sl]
        x, sizes = _load_batch(prepared_dir, chunk, model.spec)
        raw = model.run_raw(x)
        if model.kind == "classify":
            from crux.postprocess import postprocess_classify

            probs.append(postprocess_classify(raw))
            targets.extend(int(r["label"]) for r in chunk)
        else:
            from crux.postprocess import postprocess_detect_batch

            dets.extend(postprocess_detect_batch(raw, sizes, model.spec, model.detect))
            gt_boxes.extend(np.asarray(r["boxes"], np.float32).reshape(-1, 4) for r in chunk)
            gt_labels.extend(np.asarray(r["labels"], np.int64) for r in chunk)
            sizes_all.extend(sizes)
    if model.kind == "classify":
        metrics, _ = classification_metrics(
            np.concatenate(probs), np.asarray(targets), model.classes, model.ok_class, model.ng_threshold
        )
    else:
        metrics, _ = detection_metrics(dets, gt_boxes, gt_labels, sizes_all, model.classes)
    return {"split": split, "kind": model.kind, **metrics}


def _evaluate_onnx_segment(
    model: Any, prepared_dir: Path, records: Sequence[Mapping[str, Any]], split: str, batch_size: int
) -> dict[str, Any]:
    """Segmentation metrics of an ONNX model at the card's operating point, through `OnnxModel.results_from_raw`
    (the edge's own decoding)."""

    from crux.evaluation import pixel_confusion, segmentation_metrics

    assert model.segment is not None
    defects = list(model.segment.defect_classes)
    lut = mask_channels(model.classes, defects)  # as the training dataset maps masks
    cm = np.zeros((1 + len(defects),) * 2, np.int64)
    ng, strongest, targets = [], [], []
    for sl in _batches(len(records), batch_size):
        chunk = records[sl]
        x, sizes = _load_batch(prepared_dir, chunk, model.spec)
        for r, result in zip(chunk, model.results_from_raw(model.run_raw(x), sizes), strict=True):
            with open_image(Path(prepared_dir) / r["mask"]) as m:
                cm += pixel_confusion(lut[np.asarray(m)], result.class_map, cm.shape[0])
            ng.append(float(result.probs[0]))
            strongest.append(defects.index(max(defects, key=lambda c: result.scores[c])))
            targets.append(int(r["label"]))
    metrics, _ = segmentation_metrics(
        cm,
        np.asarray(ng),
        np.asarray(strongest),
        np.asarray(targets),
        model.classes,
        model.ok_class,
        defects,
        model.ng_threshold,
    )
    return {"split": split, "kind": model.kind, **metrics}


def _evaluate_onnx_anomaly(
    model: Any, prepared_dir: Path, records: Sequence[Mapping[str, Any]], split: str, batch_size: int
) -> dict[str, Any]:
    """Anomaly metrics of an ONNX model at the card's threshold through the edge's decoding (image level, and
    pixel AUROC / region overlap where masks exist)."""
    from crux.evaluation import anomaly_metrics, region_overlaps

    scores, is_ng, px_score, px_truth, overlaps = [], [], [], [], []
    for sl in _batches(len(records), batch_size):
        chunk = records[sl]
        x, sizes = _load_batch(prepared_dir, chunk, model.spec)
        raw = model.run_raw(x)
        for r, result, size in zip(chunk, model.results_from_raw(raw, sizes), sizes, strict=True):
            scores.append(float(result.probs[0]))
            is_ng.append(bool(r["is_ng"]))
            truth = None
            if r.get("mask"):
                with open_image(Path(prepared_dir) / r["mask"]) as m:
                    truth = np.asarray(m) > 0
            elif not r["is_ng"]:
                truth = np.zeros((size[1], size[0]), bool)
            if truth is not None:
                px_score.append(result.defect_prob[::4, ::4].ravel())
                px_truth.append(truth[::4, ::4].ravel())
                overlaps.extend(region_overlaps(truth, result.class_map > 0))
    metrics, _ = anomaly_metrics(
        np.asarray(scores),
        np.asarray(is_ng, bool),
        np.zeros(len(scores), bool),
        np.concatenate(px_score) if px_score else np.zeros(0, np.float32),
        np.concatenate(px_truth) if px_truth else np.zeros(0, bool),
        np.asarray(overlaps, np.float64),
        model.ng_threshold,
    )
    return {"split": split, "kind": model.kind, **metrics}
