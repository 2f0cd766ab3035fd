"""prepare -> train -> evaluate with the quick profile on tiny synthetic datasets (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crux.config import ConfigError
from crux.data.synthetic_versions import write_synthetic_dataset
from crux.train.recipe import PipelineConfig, load_pipeline_config, merge_params, quick_profile

pytestmark = pytest.mark.integration

AUGMENT = {
    "classify": [
        {"name": "HorizontalFlip", "args": {"p": 0.5}},
        {"name": "RandomBrightnessContrast", "args": {"p": 0.5}},
    ],
    "detect": [
        {"name": "HorizontalFlip", "args": {"p": 0.5}},
        {"name": "Affine", "args": {"scale": [0.9, 1.1], "p": 0.5}},
    ],
}


@pytest.fixture(autouse=True)
def _one_thread_outside_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    torch.set_num_threads(1)  # the test machine's cores are shared
    # dvclive looks for a git/DVC repo from the working directory; keep it out of the project's.
    monkeypatch.chdir(tmp_path)


def _cfg(kind: str, **train: Any) -> PipelineConfig:
    params = quick_profile({"data": {"kind": kind}, "augment": {"transforms": AUGMENT[kind]}})
    return load_pipeline_config(merge_params(params, {"train": train}))


def _run(root: Path, kind: str, cfg: PipelineConfig, data: Path | None = None) -> dict[str, Any]:
    from crux.train.pipeline import evaluate, prepare, train

    data = data or write_synthetic_dataset(root, kind)
    prepare(data, root / "prepared", cfg.data)
    summary = train(root / "prepared", root / "model", cfg)
    metrics = evaluate(root / "model", root / "prepared", root / "eval", cfg.evaluate)
    return {"train": summary, "metrics": metrics}


@pytest.mark.parametrize("kind", ["classify", "detect"])
def test_quick_profile_trains_and_evaluates(tmp_path: Path, kind: str) -> None:
    out = _run(tmp_path, kind, _cfg(kind))
    summary, metrics = out["train"], out["metrics"]
    assert summary["global_step"] == 3 and summary["precision"] == "32-true"
    assert summary["monitor"] == ("val/macro_f1" if kind == "classify" else "val/map50")
    model = tmp_path / "model"
    for path in ("model.pt", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "dvclive/metrics.json", "train.json"):
        assert (model / path).is_file(), path
    live = json.loads((model / "dvclive" / "metrics.json").read_text())
    assert "val" in live and "train" in live
    ev = tmp_path / "eval"
    assert json.loads((ev / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert (ev / "report.md").read_text().startswith("# Evaluation on the test split")
    if kind == "classify":
        assert metrics["n_images"] == 8 and 0.0 <= metrics["accuracy"] <= 1.0
        assert "inspection" in metrics and (ev / "plots" / "confusion_matrix.png").is_file()
        assert (ev / "plots" / "threshold_curve.json").is_file() and (ev / "plots" / "confusion.json").is_file()
    else:
        assert metrics["n_boxes"] == 12 and 0.0 <= metrics["map50"] <= 1.0
        assert set(metrics["per_class"]) == {"scratch", "spot"}
        assert json.loads((ev / "postprocess.json").read_text())["detect"]["strides"] == [8, 16]


@pytest.mark.parametrize("kind", ["classify", "detect"])
def test_same_seed_same_metrics_on_cpu(tmp_path: Path, kind: str) -> None:
    data = write_synthetic_dataset(tmp_path / "src", kind)
    cfg = _cfg(kind)
    a = _run(tmp_path / "a", kind, cfg, data)
    b = _run(tmp_path / "b", kind, cfg, data)
    assert a["metrics"] == b["metrics"]
    assert a["train"]["best_val"] == b["train"]["best_val"]


def test_resume_continues_from_last_checkpoint(tmp_path: Path) -> None:
    from crux.train.pipeline import prepare, train

    data = write_synthetic_dataset(tmp_path, "classify")
    cfg = _cfg("classify", max_steps=-1, epochs=1)
    prepare(data, tmp_path / "prepared", cfg.data)
    first = train(tmp_path / "prepared", tmp_path / "model", cfg)
    more = _cfg("classify", max_steps=-1, epochs=2, resume=True)
    second = train(tmp_path / "prepared", tmp_path / "model", more)
    assert first["global_step"] == 3 and second["global_step"] == 6


def test_max_steps_before_first_validation_still_yields_a_model(tmp_path: Path) -> None:
    out = _run(tmp_path, "classify", _cfg("classify", max_steps=2))
    assert out["train"]["global_step"] == 2 and out["train"]["best_val"] is not None


def test_run_stopped_by_max_time_still_yields_an_evaluated_model(tmp_path: Path) -> None:
    """train.max_time (a nightly budget): the fit stops on the clock, validates its last weights, and the
    bundle evaluates like any other."""
    out = _run(tmp_path, "classify", _cfg("classify", max_steps=-1, epochs=100_000, max_time="00:00:00:02"))
    summary = out["train"]
    assert summary["stopped_by"] == "max_time" and summary["epochs"] < 100_000
    assert summary["best_val"] is not None and summary["wall_s"] < 60
    assert 0.0 <= out["metrics"]["accuracy"] <= 1.0


def test_early_stopping_ends_a_plateau(tmp_path: Path) -> None:
    cfg = _cfg("classify", max_steps=-1, epochs=50, early_stop_patience=1, early_stop_min_delta=1.0)
    summary = _run(tmp_path, "classify", cfg)["train"]
    assert summary["stopped_by"] == "early_stopping" and summary["epochs"] == 2


def test_train_refuses_kind_mismatch(tmp_path: Path) -> None:
    from crux.train.pipeline import prepare, train

    data = write_synthetic_dataset(tmp_path, "classify", n_per_split=(4, 2, 2))
    prepare(data, tmp_path / "prepared", _cfg("classify").data)
    with pytest.raises(ConfigError, match=r"data\.kind"):
        train(tmp_path / "prepared", tmp_path / "model", _cfg("detect"))


def test_kind_left_to_the_dataset_trains_a_detector(tmp_path: Path) -> None:
    """`data.kind: null` (the shipped default): one params file serves a detection and a classification line."""
    params = quick_profile({"augment": {"transforms": AUGMENT["classify"][:1]}})
    cfg = load_pipeline_config(params)
    assert cfg.data.kind is None
    out = _run(tmp_path, "detect", cfg)
    assert out["train"]["monitor"] == "val/map50" and out["metrics"]["kind"] == "detect"


def test_ema_average_is_validated_checkpointed_and_shipped(tmp_path: Path) -> None:
    import torch

    from crux.train.models.bundle import load_bundle
    from crux.train.pipeline import prepare, train

    data = write_synthetic_dataset(tmp_path, "classify")
    cfg = _cfg("classify", max_steps=-1, epochs=2, ema_decay=0.9)
    prepare(data, tmp_path / "prepared", cfg.data)
    train(tmp_path / "prepared", tmp_path / "model", cfg)
    last = torch.load(tmp_path / "model" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # Lightning keeps the raw weights aside and makes the average the checkpoint's state_dict.
    averaged, raw = last["state_dict"], last["current_model_state"]
    assert not torch.equal(averaged["model.fc.weight"], raw["model.fc.weight"])
    best = torch.load(tmp_path / "model" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    shipped, _ = load_bundle(tmp_path / "model" / "model.pt")
    assert torch.equal(shipped.state_dict()["fc.weight"], best["state_dict"]["model.fc.weight"])
    # Resuming restores the raw weights and the average, and goes on.
    more = _cfg("classify", max_steps=-1, epochs=3, ema_decay=0.9, resume=True)
    assert train(tmp_path / "prepared", tmp_path / "model", more)["global_step"] == 9


@pytest.mark.parametrize("kind", ["classify", "detect"])
def test_bf16_mixed_precision_trains_on_cpu(tmp_path: Path, kind: str) -> None:
    """The ~2x CPU speed-up on AVX512-BF16/AMX machines (opt-in: `auto` stays fp32 on CPU)."""
    out = _run(tmp_path, kind, _cfg(kind, precision="bf16-mixed"))
    assert out["train"]["precision"] == "bf16-mixed"
    headline = out["metrics"]["accuracy"] if kind == "classify" else out["metrics"]["map50"]
    assert 0.0 <= headline <= 1.0
