"""The PatchCore anomaly method's fit (`train.anomaly_method: patchcore`): no gradient, no epochs.

The pretrained encoder's patch features of the train split's OK items are sampled, a greedy coreset of them (the
k-centre rule of the PatchCore paper, distances in a random projection) becomes the memory bank of
`crux.train.models.patchcore.PatchCore`, and the OK patches' own distances to it set the score scale. The
validation split is then scored through the anomaly task's metrics (its AUROC is the model's `best_val`, the
figure a line's method is chosen on). Writes what dvc.yaml's train stage declares, as `crux.train.head` does.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crux.postprocess import InputSpec
from crux.train.models.patchcore import PatchCore, PatchCoreConfig


def greedy_coreset(x: torch.Tensor, size: int, projection: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of `size` rows of `x` (N, D) chosen by greedy k-centre: each pick is the row farthest from those
    picked so far, so the bank covers every kind of normal patch, the rare ones included, instead of sampling the
    common ones densely. Distances are taken in a Gaussian random projection to `projection` dims (0 = none),
    which preserves them approximately (Johnson-Lindenstrauss) at a fraction of the cost."""
    n, d = x.shape
    if size >= n:
        return torch.arange(n)
    if 0 < projection < d:
        x = x @ (torch.randn(d, projection, generator=generator) / math.sqrt(projection))
    sq = (x * x).sum(dim=1)
    first = int(torch.randint(0, n, (1,), generator=generator))
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = first
    # Squared distance of every row to its nearest chosen row, updated with one mat-vec per pick.
    nearest = (sq - 2.0 * (x @ x[first]) + sq[first]).clamp_min(0.0)
    for i in range(1, size):
        pick = int(torch.argmax(nearest))
        chosen[i] = pick
        nearest = torch.minimum(nearest, (sq - 2.0 * (x @ x[pick]) + sq[pick]).clamp_min(0.0))
    return chosen


def ok_patches(
    model: PatchCore, dataset: Any, spec: InputSpec, per_image: int, batch_size: int, generator: torch.Generator
) -> torch.Tensor:
    """(N, D) patch features of `dataset`'s OK items, at most `per_image` drawn at random from each image."""
    from crux.train.torch_dataset import collate, normalise

    ok = [i for i, item in enumerate(dataset.items) if not item["is_ng"]]
    rows: list[torch.Tensor] = []
    for start in range(0, len(ok), batch_size):
        batch = collate([dataset[i] for i in ok[start : start + batch_size]])
        with torch.no_grad():
            f = model.patch_features(normalise(batch["image"], spec))
        f = f.flatten(2).transpose(1, 2)  # (B, h*w, D)
        for patches in f:
            if per_image < patches.shape[0]:
                patches = patches[torch.randperm(patches.shape[0], generator=generator)[:per_image]]
            rows.append(patches.clone())
    return torch.cat(rows) if rows else torch.zeros(0, model.dim)


def fit_patchcore(
    prepared_dir: Path,
    out_dir: Path,
    spec: InputSpec,
    cfg: Any,
    classes: Sequence[str],
    ok_class: str | None,
    metric: str,
) -> tuple[PatchCore, dict[str, Any], dict[str, Any]]:
    """(model with its bank, its model config for the bundle, the fit's part of train.json)."""
    from crux.train.models.efficientnet_lite import load_pretrained
    from crux.train.models.encoders import pretrained_weights_path
    from crux.train.prepare import DatasetError
    from crux.train.tasks import training_task
    from crux.train.torch_dataset import InspectionDataset, collate, normalise

    t, p = cfg.train, cfg.train.patchcore
    started = time.perf_counter()
    config = PatchCoreConfig(
        in_channels=spec.channels,
        backbone=t.model.backbone,
        strides=tuple(p.strides),
        bank_size=p.bank_size,
        neighbourhood=p.neighbourhood,
    )
    model = PatchCore(config).eval()
    load_pretrained(model.backbone, t.model.backbone, pretrained_weights_path(t.model.backbone))
    g = torch.Generator().manual_seed(t.seed)

    train = InspectionDataset(prepared_dir, "train", "anomaly", spec, None)
    n_ok = sum(1 for item in train.items if not item["is_ng"])
    if n_ok == 0:
        raise DatasetError(f"{prepared_dir}: no OK items in the train split to fill the PatchCore memory bank from")
    h = math.ceil(spec.image_size / config.strides[0])
    per_image = max(1, min(h * h, p.candidates // n_ok))
    patches = ok_patches(model, train, spec, per_image, t.batch_size, g)
    features_s = time.perf_counter() - started

    chosen = greedy_coreset(patches, config.bank_size, p.projection, g)
    bank = patches[chosen]
    if len(bank) < config.bank_size:
        # Fewer patches than bank rows (a tiny line): repeat rows. A duplicate never changes a nearest distance,
        # and the bank keeps the size its config (and the rebuilt buffer) records.
        bank = bank[torch.arange(config.bank_size) % len(bank)]
    model.set_bank(bank)
    coreset_s = time.perf_counter() - started - features_s

    # Score scale from the OK patches' own distances (a random 20k of them: the quantiles are stable by then).
    sample = patches[torch.randperm(len(patches), generator=g)[:20000]]
    with torch.inference_mode():
        dist = model.distances((sample - model.mean.flatten())[None])[0].numpy().astype(np.float64)
    median, centre = float(np.quantile(dist, 0.5)), float(np.quantile(dist, p.centre_quantile))
    scale = max(centre - median, 1e-6)
    model.centre.fill_(centre)
    model.scale.fill_(scale)

    # Validation through the anomaly task (real items only): the AUROC a line's method is chosen on.
    task: Any = training_task("anomaly", classes, ok_class, spec, None, {})
    state = task.new_state()
    val = InspectionDataset(prepared_dir, "val", "anomaly", spec, None)
    with torch.inference_mode():
        for start in range(0, len(val), t.batch_size):
            batch = collate([val[i] for i in range(start, min(start + t.batch_size, len(val)))])
            task.collect(state, model(normalise(batch["image"], spec)), batch)
    metrics = task.metrics(state)[0] if len(val) else {}
    best = metrics.get(metric)
    wall = time.perf_counter() - started

    # What dvc.yaml declares for the train stage: metrics, plots (the OK patch distances) and checkpoints/.
    live, ckpt = Path(out_dir) / "dvclive", Path(out_dir) / "checkpoints"
    (live / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    (live / "metrics.json").write_text(json.dumps({"val": {metric: best}, "step": 0}, indent=2) + "\n")
    qs = np.linspace(0.0, 1.0, 21)
    rows = "".join(f"{q:.2f}\t{v:.6f}\n" for q, v in zip(qs, np.quantile(dist, qs), strict=True))
    (live / "plots" / "metrics" / "ok_patch_distance.tsv").write_text(f"quantile\tdistance\n{rows}")
    ckpt.mkdir(parents=True, exist_ok=True)
    report = {
        "bank_size": config.bank_size,
        "candidates": len(patches),
        "ok_images": n_ok,
        "patches_per_image": per_image,
        "feature_dim": model.dim,
        "centre": centre,
        "scale": scale,
        "features_s": round(features_s, 3),
        "coreset_s": round(coreset_s, 3),
    }
    (ckpt / "patchcore.json").write_text(json.dumps(report, indent=2) + "\n")
    fit = {
        "best_val": best,
        "best_checkpoint": "patchcore",
        "global_step": 0,
        "epochs": 0,
        "stopped_by": "memory_bank",
        "patchcore": report,
        "precision": "32-true",
        "accelerator": "CPUAccelerator",
        "wall_s": round(wall, 3),
        "batch_size": t.batch_size,
    }
    return model, config.to_dict(), fit
