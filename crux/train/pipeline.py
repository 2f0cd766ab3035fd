"""The pipeline functions the CLI calls: `prepare`, `train`, `evaluate` (one dvc.yaml stage each).

They take validated config objects and paths, and return summaries; they never read params.yaml or argv.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from crux.config import ConfigError
from crux.errors import CruxError
from crux.evaluation import compare_markdown, confusion_png, write_json
from crux.kinds import get_kind
from crux.postprocess import DetectSpec, InputSpec
from crux.train.prepare import DatasetError, prepare, read_prepared
from crux.train.recipe import (
    EvaluateConfig,
    PipelineConfig,
    max_time_seconds,
    parse_max_time,
    validate_augment,
)

__all__ = ["evaluate", "prepare", "resolve_precision", "train"]

# The plot files of `evaluate` (dvc.yaml's top-level `plots:` names each).
PLOT_FILES = ("confusion", "threshold_curve", "pr_curve", "score_histogram")


def resolve_precision(precision: str, accelerator: str) -> str:
    """'auto': mixed precision on a CUDA GPU (bf16 where supported: no loss scaling), full fp32 on CPU."""
    if precision not in ("auto", "fast"):
        return precision
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    # 'fast': bf16 autocast on CPUs that run it natively (~2x here); emulated bf16 would be slower than fp32.
    return "bf16-mixed" if precision == "fast" and cpu_has_native_bf16() else "32-true"


def training_threads(threads: int, num_workers: int, processes: int = 1) -> int:
    """`train.threads`, 0 = OMP_NUM_THREADS when the environment sets it (a machine shared by several runs), else
    this process's share of the cores (`processes` training processes on this machine: ddp's devices) minus one per
    loader worker (at least 1): two ddp processes on 2 cores get 1 thread each, not 2 spinning against each other."""
    if threads:
        return threads
    import os

    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(processes, 1) - num_workers)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in /proc/cpuinfo (Linux; False elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _step_timer() -> Any:
    """A callback timing training steps alone (no validation, no start-up): the figure to compare hardware by."""
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0

        def on_train_batch_start(self, *args: Any) -> None:
            self._t = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            self.times.append(time.perf_counter() - self._t)

        def median(self) -> float | None:
            return round(sorted(self.times)[len(self.times) // 2], 4) if self.times else None

    return StepTimer()


def ramped_ema(decay: float) -> Any:
    """EMA update whose decay ramps up as min(decay, (1 + n) / (10 + n)) over the n updates so far (as in
    TensorFlow's ExponentialMovingAverage): a fixed 0.998 would still carry ~20% of the random initialisation
    after a short run's 800 steps."""

    def update(averaged: Any, current: Any, n: Any) -> Any:
        d = ((1 + n) / (10 + n)).clamp(max=decay)
        return averaged + (current - averaged) * (1 - d)

    return update


def train(prepared_dir: Path, out_dir: Path, cfg: PipelineConfig) -> dict[str, Any]:
    """Train on the prepared train split, choose the checkpoint on val; write `out_dir/model.pt` and logs.

    out_dir/model.pt (bundle, best val checkpoint), checkpoints/{best,last}.ckpt, dvclive/ (metrics + plots),
    train.json (summary, timing). With `train.resume`, continues from checkpoints/last.ckpt. `train.mode: head`
    on a classification line fits the linear head on cached encoder features instead (`crux.train.head`);
    `train.anomaly_method: patchcore` on an anomaly line fills a PatchCore memory bank (`crux.train.patchcore_fit`).
    """
    prepared_dir, out_dir = Path(prepared_dir), Path(out_dir)
    prepared = read_prepared(prepared_dir)
    if cfg.data.kind is None:  # the dataset decides; re-validates the cross-section rules for that kind
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, kind=prepared["kind"]))
    if prepared["kind"] != cfg.data.kind:
        raise ConfigError(f"data.kind: params say {cfg.data.kind!r}, {prepared_dir} holds {prepared['kind']!r}")
    validate_augment(cfg.augment, cfg.data)
    kind_name: str = prepared["kind"]
    kind = get_kind(kind_name)
    classes, ok_class = list(prepared["classes"]), prepared.get("ok_class")
    t = cfg.train
    single_process = (t.mode == "head" and kind.name == "classify") or (
        t.anomaly_method == "patchcore" and kind.name == "anomaly"
    )
    if single_process and (t.processes() or 1) > 1:
        # Cached features + a linear head (or a memory bank) take a minute in one process; splitting them over ranks
        # would be a second implementation for no gain. Refused before anything is written.
        what = "train.mode: head" if t.mode == "head" else "train.anomaly_method: patchcore"
        raise ConfigError(
            f"train.devices: {t.devices!r} x train.num_nodes: {t.num_nodes} asks for several processes, but "
            f"{what} on a {kind.name} line fits in one process; set train.devices: 1 (or auto) or train.mode: full"
        )
    import pytorch_lightning as pl
    import torch

    from crux.train.models import model_config as model_config_of
    from crux.train.models.bundle import save_bundle
    from crux.train.models.common import load_initial_weights
    from crux.train.models.efficientnet_lite import load_pretrained
    from crux.train.models.encoders import pretrained_normalisation, pretrained_weights_path
    from crux.train.module import InspectionModule

    mean, std = cfg.data.mean, cfg.data.std
    if t.model.pretrained == "imagenet":
        # The weights were trained on one normalisation; the card records it, so the edge feeds them the same.
        mean, std = pretrained_normalisation(t.model.backbone)
    spec = InputSpec(cfg.data.image_size, cfg.data.channels, mean, std)
    model_config = model_config_of(kind.name, t.model, len(kind.head_classes(classes, ok_class)), cfg.data.channels)
    detect_spec = DetectSpec(tuple(t.model.strides), len(classes)).to_dict() if kind_name == "detect" else None
    pretrained = t.model.pretrained != "none"
    optim = {
        "optimizer": t.optimizer,
        "lr": t.lr,
        "weight_decay": t.weight_decay,
        "schedule": t.schedule,
        "warmup_epochs": t.warmup_epochs,
        "label_smoothing": t.label_smoothing,
        "anomaly_defect_crops": t.anomaly_defect_crops,
        # The schedule also anneals by elapsed time when the fit has a wall-clock budget.
        "max_time_s": max_time_seconds(t.max_time),
        # Fine-tuning a pretrained encoder: its learning-rate factor, frozen epochs (all of them in head mode)
        # and frozen BatchNorm (crux.train.module.InspectionModule applies them).
        # A randomly initialised encoder has nothing to protect: these apply to pretrained ones only.
        "encoder_lr": t.encoder_lr if pretrained else 1.0,
        "freeze_epochs": t.epochs if t.mode == "head" else t.freeze_epochs if pretrained else 0,
        "freeze_bn": (t.model.freeze_bn and pretrained) or t.mode == "head",
    }

    threads = training_threads(t.threads, t.num_workers, _local_processes(t))
    torch.set_num_threads(threads)
    pl.seed_everything(t.seed, workers=True, verbose=False)
    module = InspectionModule(kind_name, classes, ok_class, spec.to_dict(), model_config, detect_spec, optim)
    pretrained_report = None
    if t.model.pretrained == "imagenet":
        pretrained_report = load_pretrained(
            module.model.backbone, t.model.backbone, pretrained_weights_path(t.model.backbone)
        )
    init_report = None
    if t.model.init_weights is not None:
        init_report = load_initial_weights(module.model, t.model.init_weights)

    if t.mode == "head" and kind.name == "classify":
        from crux.train.head import fit_classifier_head

        fit = fit_classifier_head(module, prepared_dir, out_dir, spec, cfg, kind.monitor)
    elif t.anomaly_method == "patchcore" and kind.name == "anomaly":
        from crux.train.patchcore_fit import fit_patchcore

        # No training: a memory bank of the OK parts' pretrained patch features replaces the segmenter.
        module.model, model_config, fit = fit_patchcore(
            prepared_dir, out_dir, spec, cfg, classes, ok_class, kind.monitor
        )
    else:
        fit = _fit_lightning(module, prepared_dir, out_dir, spec, cfg, kind_name, prepared, kind.monitor)
    if fit.get("rank", 0) != 0:
        # A ddp rank other than 0 trained the same weights (fit checked their digests); rank 0 alone writes the
        # bundle and the summary, so two processes never race on one file.
        return {"monitor": f"val/{kind.monitor}", "mode": t.mode, **fit, "threads": threads}
    monitor, best_value = f"val/{kind.monitor}", fit.pop("best_val")
    meta = {
        "kind": kind_name,
        "classes": classes,
        "ok_class": ok_class,
        "input": spec.to_dict(),
        "model_config": model_config,
        "detect": detect_spec,
        # The kind's own decoding parameters (the segmenter's), under its name, beside the detector's.
        **({kind_name: decode} if (decode := kind.decode_spec(classes, ok_class)) else {}),
        "info": {
            "monitor": monitor,
            "best_val": best_value,
            "epochs": fit["epochs"],
            "seed": t.seed,
            "mode": t.mode,
            "backbone": t.model.backbone,
            "pretrained": t.model.pretrained,
        },
    }
    save_bundle(out_dir / "model.pt", module.model, meta)
    summary = {
        "monitor": monitor,
        "best_val": best_value,
        "mode": t.mode,
        **fit,
        "threads": threads,
        "backbone": t.model.backbone,
        "pretrained": pretrained_report,
        "init_weights": init_report,
        "n_parameters": sum(p.numel() for p in module.model.parameters()),
    }
    write_json(out_dir / "train.json", summary)
    return summary


def _local_processes(t: Any) -> int:
    """Training processes on this machine: devices when a count, else one per visible GPU (Lightning's auto on a
    GPU machine), else 1."""
    if isinstance(t.devices, int):
        return int(t.devices)
    import torch

    return max(1, torch.cuda.device_count()) if t.accelerator != "cpu" and torch.cuda.is_available() else 1


def _weights_digest() -> Any:
    """A callback that hashes the trained weights on every rank at the end of the fit and gathers the digests: ddp
    keeps the replicas equal, and this proves it (a digest per rank in train.json; a mismatch fails the run)."""
    import hashlib

    import pytorch_lightning as pl
    import torch

    class WeightsDigest(pl.Callback):
        def __init__(self) -> None:
            self.digests: list[str] = []

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            h = hashlib.sha256()
            for name, tensor in sorted(pl_module.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            mine = h.hexdigest()
            if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
                gathered: list[Any] = [None] * trainer.world_size
                torch.distributed.all_gather_object(gathered, mine)
                self.digests = [str(d) for d in gathered]
            else:
                self.digests = [mine]

    return WeightsDigest()


def _fit_lightning(
    module: Any,
    prepared_dir: Path,
    out_dir: Path,
    spec: InputSpec,
    cfg: PipelineConfig,
    kind_name: str,
    prepared: Any,
    metric: str,
) -> dict[str, Any]:
    """Epochs over the images with Lightning; loads the best validated weights into `module`."""
    import pytorch_lightning as pl
    import torch
    from dvclive.lightning import DVCLiveLogger
    from pytorch_lightning.callbacks import (
        EarlyStopping,
        LearningRateMonitor,
        ModelCheckpoint,
        RichProgressBar,
        WeightAveraging,
    )
    from pytorch_lightning.utilities import rank_zero_only

    from crux.train.augment import build_augment
    from crux.train.datamodule import InspectionDataModule

    t = cfg.train
    augment = build_augment(cfg.augment, kind_name, spec.image_size, spec.channels) if cfg.augment.transforms else None
    dm = InspectionDataModule(
        prepared_dir,
        kind_name,
        spec,
        augment,
        t.batch_size,
        t.num_workers,
        t.seed,
        class_balance=t.class_balance,
    )

    ckpt_dir, live_dir = out_dir / "checkpoints", out_dir / "dvclive"
    last = ckpt_dir / "last.ckpt"
    resume_from = last if t.resume and last.is_file() else None
    # Lightning's rank from the launcher's environment (LOCAL_RANK of a ddp child), before the Trainer exists: a child
    # starts while rank 0 is already fitting and must not delete what rank 0 has begun to write.
    # (rank_zero_only.rank is set by Lightning at import; its stubs type the decorator, not the attribute.)
    if resume_from is None and getattr(rank_zero_only, "rank", 0) == 0:
        # A fresh run must not mix with an earlier run's checkpoints (ModelCheckpoint would write best-v1.ckpt).
        for d in (ckpt_dir, live_dir):
            shutil.rmtree(d, ignore_errors=True)
    monitor = f"val/{metric}"
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=monitor,
        mode="max",
        save_last=True,
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    timer, digest = _step_timer(), _weights_digest()
    callbacks: list[Any] = [checkpoint, LearningRateMonitor(logging_interval="epoch"), timer]
    if t.ema_decay:
        # Lightning swaps the average in for validation and saves it as the checkpoint's state_dict, so the best
        # checkpoint (and the bundle made from it) is the averaged model; resuming restores both.
        callbacks.append(WeightAveraging(avg_fn=ramped_ema(t.ema_decay)))
    early_stop = None
    if t.early_stop_patience:
        early_stop = EarlyStopping(
            monitor=monitor, mode="max", patience=t.early_stop_patience, min_delta=t.early_stop_min_delta
        )
        callbacks.append(early_stop)
    if t.progress_bar:
        callbacks.append(RichProgressBar())
    callbacks.append(digest)  # last: after WeightAveraging has swapped the average in at the end of the fit
    # dvcyaml=False: the project's dvc.yaml declares metrics/plots; dvclive must not rewrite it.
    logger = DVCLiveLogger(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, resume=resume_from is not None)
    precision: Any = resolve_precision(t.precision, t.accelerator)  # one of Lightning's precision literals
    on_cpu = t.accelerator == "cpu" or not torch.cuda.is_available()
    trainer = pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=precision,
        max_epochs=t.epochs,
        max_steps=t.max_steps,
        max_time=parse_max_time(t.max_time) if t.max_time else None,
        # CPU runs are bit-reproducible; on GPU some kernels (e.g. upsampling backward) are not, so only warn.
        deterministic=True if on_cpu else "warn",
        callbacks=callbacks,
        logger=logger,
        check_val_every_n_epoch=t.val_every,
        gradient_clip_val=t.grad_clip or None,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        # Log train curves at least once an epoch even on a tiny dataset.
        log_every_n_steps=max(1, min(10, prepared["counts"]["train"] // t.batch_size)),
        default_root_dir=out_dir,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
    wall = time.perf_counter() - started
    stopped_by = _stopped_by(trainer, t, early_stop)
    # A stop requested mid-epoch (train.max_time, early stopping) still validates the last weights first
    # (Lightning's training epoch loop), so the best checkpoint has seen the annealed end of a budgeted run.
    if not checkpoint.best_model_path:
        # max_steps can end training before the first validation; validate once so the bundle has a score.
        trainer.validate(module, datamodule=dm, verbose=False)
        trainer.save_checkpoint(ckpt_dir / "best.ckpt")
        best_path, best_score = ckpt_dir / "best.ckpt", trainer.callback_metrics.get(monitor)
    else:
        best_path, best_score = Path(checkpoint.best_model_path), checkpoint.best_model_score
    if len(set(digest.digests)) > 1:
        raise CruxError(f"ddp ranks ended the fit with different weights (sha256 per rank: {digest.digests})")
    steps = int(trainer.global_step)
    ranks = {"rank": int(trainer.global_rank), "world_size": int(trainer.world_size), "strategy": t.strategy}
    if trainer.global_rank != 0:
        # Rank 0 alone loads the best checkpoint and writes the bundle (on another node the file is not even local).
        return {
            "best_val": None,
            "global_step": steps,
            "epochs": int(trainer.current_epoch),
            "train_step_s": timer.median(),
            **ranks,
        }
    state = torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    return {
        **ranks,
        # The fit's final weights, hashed on each rank (ddp keeps them equal; one entry per rank).
        "weights_sha256": digest.digests,
        "best_val": float(best_score) if best_score is not None else None,
        "best_checkpoint": best_path.name,
        "global_step": steps,
        "epochs": int(trainer.current_epoch),
        # What ended the fit: epochs, max_steps, max_time (train.max_time budget) or early_stopping.
        "stopped_by": stopped_by,
        "max_time": t.max_time,
        "precision": precision,
        "accelerator": str(trainer.accelerator.__class__.__name__),
        "wall_s": round(wall, 3),
        "s_per_step": round(wall / max(steps, 1), 4),
        # Median training step (forward, backward, optimiser; data loading excluded when workers keep up).
        "train_step_s": timer.median(),
        "batch_size": t.batch_size,
    }


def _stopped_by(trainer: Any, t: Any, early_stop: Any) -> str:
    if early_stop is not None and early_stop.stopped_epoch > 0:
        return "early_stopping"
    if t.max_steps != -1 and trainer.global_step >= t.max_steps:
        return "max_steps"
    if trainer.current_epoch >= t.epochs:
        return "epochs"
    return "max_time" if t.max_time else "interrupted"


def evaluate(
    model_dir: Path,
    prepared_dir: Path,
    out_dir: Path,
    cfg: EvaluateConfig,
    previous_metrics: Path | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """Evaluate `model_dir/model.pt` on a prepared split through `crux.postprocess` (the edge's code path).

    Writes out_dir/metrics.json, plots/*.json (DVC plots) and plots/confusion_matrix.png (classification),
    postprocess.json (the decoding parameters used, for export) and report.md (vs `previous_metrics` if given).
    """
    import torch
    from torch.utils.data import DataLoader

    from crux.train.models.bundle import load_bundle
    from crux.train.tasks import training_task
    from crux.train.torch_dataset import InspectionDataset, collate, normalise

    model_dir, prepared_dir, out_dir = Path(model_dir), Path(prepared_dir), Path(out_dir)
    bundle_path = model_dir / "model.pt" if model_dir.is_dir() else model_dir
    model, meta = load_bundle(bundle_path)
    prepared = read_prepared(prepared_dir)
    if list(prepared["classes"]) != list(meta["classes"]) or prepared["kind"] != meta["kind"]:
        raise DatasetError(
            f"model classes {meta['kind']} {meta['classes']} differ from {prepared_dir}: "
            f"{prepared['kind']} {prepared['classes']}"
        )
    spec = InputSpec.from_dict(meta["input"])
    detect_spec = None
    if meta.get("detect"):
        detect_spec = replace(
            DetectSpec.from_dict(meta["detect"]),
            score_threshold=cfg.score_threshold,
            nms_iou=cfg.nms_iou,
            max_detections=cfg.max_detections,
        )
    kind = get_kind(meta["kind"])
    task: Any = training_task(kind.name, meta["classes"], meta.get("ok_class"), spec, detect_spec, {})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)

    def run(on: str) -> tuple[Any, InspectionDataset]:
        dataset = InspectionDataset(prepared_dir, on, meta["kind"], spec, None)
        if len(dataset) == 0:
            raise DatasetError(f"{prepared_dir}: the {on} split is empty")
        state = task.new_state()
        with torch.inference_mode():
            for batch in DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate):
                raw = model(normalise(batch["image"].to(device), spec))
                task.collect(state, raw, batch)
        return state, dataset

    ng_threshold = cfg.ng_threshold
    calibrate = hasattr(task, "operating_threshold")
    if calibrate and split != "val":
        # The operating point is chosen on the validation split (never on the split being measured) for the
        # false-reject budget, and shipped in the card: the edge rejects at exactly this NG score. First, because
        # an anomaly task's region threshold follows it.
        ng_threshold = task.operating_threshold(run("val")[0], cfg.max_false_reject)
    started = time.perf_counter()
    state, dataset = run(split)
    wall = time.perf_counter() - started
    if calibrate and split == "val":
        ng_threshold = task.operating_threshold(state, cfg.max_false_reject)
    metrics, plots = task.metrics(state, ng_threshold=ng_threshold, max_false_reject=cfg.max_false_reject)
    metrics = {"split": split, "kind": meta["kind"], **metrics}

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    plots_dir = out_dir / "plots"
    shutil.rmtree(plots_dir, ignore_errors=True)
    # Every plot file exists for every kind (`[]` where it does not apply): dvc.yaml declares them all and DVC
    # reports a missing file as an error but skips an empty one.
    for name in PLOT_FILES:
        write_json(plots_dir / f"{name}.json", plots.get(name, []))
    if "confusion_matrix" in metrics:
        import numpy as np

        confusion_png(np.asarray(metrics["confusion_matrix"]), meta["classes"], plots_dir / "confusion_matrix.png")
    if hasattr(task, "gallery"):
        task.gallery(state, dataset, model, device, ng_threshold, plots_dir / "worst_misses.png")
    write_item_results(out_dir, meta["kind"], task, state, dataset, model, device, ng_threshold, metrics, plots, split)
    write_json(
        out_dir / "postprocess.json",
        {
            "input": spec.to_dict(),
            "detect": detect_spec.to_dict() if detect_spec else None,
            # The decoding the metrics were taken with (an anomaly task's follows its calibrated threshold).
            **({meta["kind"]: getattr(task, "decode", meta[meta["kind"]])} if meta.get(meta["kind"]) else {}),
            "ng_threshold": ng_threshold,
            "ok_class": meta.get("ok_class"),
            "classes": meta["classes"],
        },
    )
    previous = None
    if previous_metrics is not None and Path(previous_metrics).is_file():
        previous = json.loads(Path(previous_metrics).read_text())
    (out_dir / "report.md").write_text(compare_markdown(metrics, previous, f"Evaluation on the {split} split"))
    write_json(out_dir / "timing.json", {"images": len(dataset), "wall_s": round(wall, 3), "device": str(device)})
    return metrics


# What `evaluate` writes for the console's drill-down (dvc.yaml evaluate outs): every item's record and overlays.
RESULTS_FILE, RESULTS_DIR = "predictions.json", "results"


def write_item_results(
    out_dir: Path,
    kind: str,
    task: Any,
    state: Any,
    dataset: Any,
    model: Any,
    device: Any,
    ng_threshold: float | None,
    metrics: dict[str, Any],
    plots: dict[str, Any],
    split: str,
) -> dict[str, Any]:
    """out_dir/predictions.json (`crux.evaluation.results_document`: one record per item of the split, with its id
    and image) and out_dir/results/NNNNNN.png, the overlays of the worst misses and of the first items of each
    confusion cell, drawn from the same post-processed predictions as the metrics. Rewritten whole each run."""
    import numpy as np
    import torch

    from crux import evaluation as ev
    from crux.postprocess import load_image, postprocess_segment_batch
    from crux.train.torch_dataset import normalise

    classes, ok = list(task.classes), task.ok_class
    threshold = 0.5 if ng_threshold is None else float(ng_threshold)
    if kind == "classify":
        records = ev.classify_items(
            np.concatenate(state["probs"]), np.concatenate(state["targets"]), classes, ok, threshold
        )
    elif kind == "detect":
        records = ev.detect_items(state["dets"], state["boxes"], state["labels"], classes)
    elif kind == "segment":
        records = ev.segment_items(
            np.asarray(state["ng"]),
            np.asarray(state["strongest"]),
            np.asarray(state["targets"]),
            classes,
            ok,
            task.segment.defect_classes,
            threshold,
            state["index"],
        )
    else:
        real = [i for i, s in enumerate(state["synthetic"]) if not s]
        indices = [state["index"][i] for i in real]
        records = ev.anomaly_items(
            np.asarray(state["score"])[real],
            np.asarray(state["is_ng"], bool)[real],
            ok,
            threshold,
            [classes[int(dataset.items[i]["label"])] for i in indices],
            indices,
        )
    for r in records:
        item = dataset.items[r["index"]]
        r["id"], r["image"] = str(item["sha256"])[:12], str(item["image"])
    results_dir = out_dir / RESULTS_DIR
    shutil.rmtree(results_dir, ignore_errors=True)
    results_dir.mkdir(parents=True)
    by_index = {int(r["index"]): r for r in records}
    for index in ev.thumbnail_indices(records):
        record = by_index[index]
        image = load_image(dataset.root / dataset.items[index]["image"], 3)
        maps: dict[str, Any] = {}
        if kind in ("segment", "anomaly"):
            item = dataset[index]
            with torch.inference_mode():
                raw = model(normalise(item["image"][None].to(device), task.spec)).float().cpu().numpy()
            pred = postprocess_segment_batch(raw, [item["size"]], task.segment)[0]
            maps = {"pred_map": pred.class_map, "truth_map": item.get("orig_mask")}
            if kind == "anomaly":
                maps["heat"] = pred.defect_prob
        ev.overlay_thumbnail(image, record, **maps).save(results_dir / ev.thumb_name(index), format="PNG")
        record["thumb"] = ev.thumb_name(index)
    doc = ev.results_document(
        kind, classes, ok, ng_threshold, split, records, metrics, plots.get("threshold_curve") or []
    )
    write_json(out_dir / RESULTS_FILE, doc)
    return doc
