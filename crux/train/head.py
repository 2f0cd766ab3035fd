"""Head mode (`train.mode: head`) for classification: a frozen encoder's pooled features, computed once per image
and cached, and a linear head fitted on them — minutes on 2 cores, a model that already inspects.

The result is the same network as a full training run (encoder + the classifier's linear head, the same bundle,
card, ONNX graph and gate): the head's weights are simply fitted on cached features instead of by epochs over
images. Features are content-addressed by (encoder, its weights file, input spec, pooling, image sha256), so a
second run, or the next dataset version, only computes the features of images it has not seen.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from crux.postprocess import InputSpec

# Bump when the way features are computed changes, so old cache entries are never read.
FEATURE_VERSION = 1


def feature_key(model_config: Mapping[str, Any], spec: InputSpec, weights_sha256: str) -> str:
    """The cache folder name of one encoder + pooling + input: what determines an image's features."""
    blob = {
        "v": FEATURE_VERSION,
        "backbone": model_config.get("backbone", "resnet"),
        "pool": model_config.get("pool"),
        "in_channels": model_config.get("in_channels"),
        "weights": weights_sha256,
        "input": spec.to_dict(),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]


class FeatureCache:
    """One .npy per image sha256 under `root/key/`; written to a temp name and renamed (never half a file)."""

    def __init__(self, root: Path, key: str) -> None:
        self.dir = Path(root) / key

    def path(self, sha256: str) -> Path:
        return self.dir / sha256[:2] / f"{sha256}.npy"

    def get(self, sha256: str) -> npt.NDArray[Any] | None:
        path = self.path(sha256)
        if not path.is_file():
            return None
        try:
            loaded: npt.NDArray[Any] = np.load(path, allow_pickle=False)
            return loaded
        except (OSError, ValueError):  # a damaged entry is recomputed, not trusted
            return None

    def put(self, sha256: str, features: npt.NDArray[Any]) -> None:
        path = self.path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{time.monotonic_ns()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, features.astype(np.float32), allow_pickle=False)
        tmp.replace(path)


def split_features(
    model: nn.Module,
    dataset: Any,
    spec: InputSpec,
    cache: FeatureCache,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[npt.NDArray[Any], npt.NDArray[Any], int]:
    """(features (N, F), labels (N,), images computed) of a split, from the cache where it has them."""
    from crux.train.torch_dataset import collate, normalise

    items = dataset.items
    feats: list[npt.NDArray[Any] | None] = [cache.get(item["sha256"]) for item in items]
    todo = [i for i, f in enumerate(feats) if f is None]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        batch = collate([dataset[i] for i in chunk])
        with torch.inference_mode():
            out = model.pooled(normalise(batch["image"], spec)).float().numpy()  # type: ignore[operator]
        for i, row in zip(chunk, out, strict=True):
            cache.put(items[i]["sha256"], row)
            feats[i] = row
        if progress:
            progress(start + len(chunk), len(todo))
    labels = np.asarray([item["label"] for item in items], np.int64)
    return np.stack(feats) if feats else np.zeros((0, 0), np.float32), labels, len(todo)  # type: ignore[arg-type]


def fit_linear_head(
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    num_classes: int,
    l2: float,
    sample_weight: npt.NDArray[Any] | None = None,
    max_iter: int = 200,
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Multinomial logistic regression on standardised features (L-BFGS, full batch, deterministic); returns
    (W (C, F), b (C,)) in the *original* feature scale: the standardisation is folded into the weights, so the
    head is one Linear layer of the network."""
    mu = x.mean(axis=0)
    sd = x.std(axis=0) + 1e-6
    xs = torch.from_numpy(((x - mu) / sd).astype(np.float32))
    yt = torch.from_numpy(y)
    w = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    sw = torch.ones(len(y)) if sample_weight is None else torch.from_numpy(sample_weight.astype(np.float32))
    sw = sw / sw.mean()
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (F.cross_entropy(xs @ w.T + b, yt, reduction="none") * sw).mean() + 0.5 * l2 * (w * w).sum()
        loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward is untyped in its stubs
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]  # LBFGS.step is untyped in torch's stubs
    w_np = w.detach().numpy() / sd[None, :]
    b_np = b.detach().numpy() - w_np @ mu
    return w_np.astype(np.float32), b_np.astype(np.float32)


def class_weights(labels: npt.NDArray[Any], num_classes: int, balance: float) -> npt.NDArray[Any] | None:
    """Per-sample weights count(class)^-balance (train.class_balance), or None for 0."""
    if balance <= 0:
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights: npt.NDArray[Any] = (np.maximum(counts, 1.0) ** -balance)[labels]
    return weights


def choose_head(
    train: tuple[npt.NDArray[Any], npt.NDArray[Any]],
    val: tuple[npt.NDArray[Any], npt.NDArray[Any]],
    num_classes: int,
    l2_grid: Sequence[float],
    score: Callable[[npt.NDArray[Any], npt.NDArray[Any]], float],
    balance: float = 0.0,
) -> tuple[npt.NDArray[Any], npt.NDArray[Any], float, list[dict[str, float]]]:
    """Fit one head per L2 strength on train, keep the best on validation: the monitored metric first, then the
    lower validation log-loss (a small val split often ties on accuracy, e.g. every head at 100%)."""
    trials: list[dict[str, float]] = []
    best: tuple[tuple[float, float], float, npt.NDArray[Any], npt.NDArray[Any]] | None = None
    weights = class_weights(train[1], num_classes, balance)
    for l2 in sorted(l2_grid, reverse=True):
        w, b = fit_linear_head(train[0], train[1], num_classes, l2, weights)
        logits = val[0] @ w.T + b
        value = score(logits, val[1])
        nll = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(val[1])))
        trials.append({"l2": l2, "val": value, "val_log_loss": round(nll, 6)})
        if best is None or (value, -nll) > best[0]:
            best = ((value, -nll), l2, w, b)
    assert best is not None
    return best[2], best[3], best[1], trials


def state_sha256(module: nn.Module) -> str:
    """A digest of a module's weights (names, shapes, bytes): the cache key of what it computes."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fit_classifier_head(
    module: Any,
    prepared_dir: Path,
    out_dir: Path,
    spec: InputSpec,
    cfg: Any,
    metric: str,
) -> dict[str, Any]:
    """Head mode for a classifier: pooled features of the train and val splits (cached), one linear head per
    `train.head_l2`, the best on validation (the kind's monitored metric) written into `module.model.fc`.

    Writes what a Lightning run writes for dvc.yaml (dvclive/metrics.json, dvclive/plots/, checkpoints/) and
    returns the fit's part of train.json.
    """
    from crux.train.torch_dataset import InspectionDataset

    t = cfg.train
    model = module.model.eval()
    started = time.perf_counter()
    # The encoder's own digest keys the cache: pretrained or not, whatever file or seed made its weights.
    key = feature_key(module.hparams["model_config"], spec, state_sha256(model.backbone))
    cache = FeatureCache(t.feature_cache, key)
    data: dict[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]] = {}
    computed = 0
    for split in ("train", "val"):
        dataset = InspectionDataset(prepared_dir, split, "classify", spec, None)
        x, y, n = split_features(model, dataset, spec, cache, batch_size=t.batch_size)
        data[split], computed = (x, y), computed + n
    features_s = time.perf_counter() - started
    task = module.task

    def score(logits: npt.NDArray[Any], targets: npt.NDArray[Any]) -> float:
        state = task.new_state()
        state["probs"].append(torch.softmax(torch.from_numpy(logits), dim=1).numpy())
        state["targets"].append(targets)
        return float(task.metrics(state)[0][metric])

    num_classes = model.fc.out_features
    w, b, l2, trials = choose_head(data["train"], data["val"], num_classes, t.head_l2, score, t.class_balance)
    with torch.no_grad():
        model.fc.weight.copy_(torch.from_numpy(w))
        model.fc.bias.copy_(torch.from_numpy(b))
    best = max(trial["val"] for trial in trials)
    wall = time.perf_counter() - started

    # What dvc.yaml declares for the train stage: metrics, plots (the L2 search) and the checkpoints folder.
    live, ckpt = Path(out_dir) / "dvclive", Path(out_dir) / "checkpoints"
    (live / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    (live / "metrics.json").write_text(json.dumps({"val": {metric: best}, "head_l2": l2, "step": 0}, indent=2) + "\n")
    rows = "".join(f"{trial['l2']}\t{trial['val']}\n" for trial in sorted(trials, key=lambda r: r["l2"]))
    (live / "plots" / "metrics" / "head_l2.tsv").write_text(f"l2\tval_{metric}\n{rows}")
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "head.json").write_text(json.dumps({"feature_key": key, "l2": l2, "trials": trials}, indent=2) + "\n")
    return {
        "best_val": best,
        "best_checkpoint": "head",
        "global_step": 0,
        "epochs": 0,
        "stopped_by": "head_fit",
        "head": {
            "l2": l2,
            "trials": trials,
            "feature_key": key,
            "features_computed": computed,
            "features_cached": sum(len(v[1]) for v in data.values()) - computed,
            "features_s": round(features_s, 3),
        },
        "precision": "32-true",
        "accelerator": "CPUAccelerator",
        "wall_s": round(wall, 3),
        "batch_size": t.batch_size,
    }
