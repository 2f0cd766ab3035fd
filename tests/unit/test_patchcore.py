"""The PatchCore anomaly method: a memory bank of pretrained OK patch features that ranks NG parts above OK ones,
a bounded greedy coreset, the (B, 2, S, S) contract through export (ONNX parity) and the bundle, and its config."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from edge_support import prepared_dataset

from crux.config import ConfigError
from crux.train.recipe import load_pipeline_config

BANK = 64


def patchcore_params(**patchcore: Any) -> dict[str, Any]:
    return {
        "data": {"image_size": 64},
        "augment": {"transforms": []},
        "train": {
            "anomaly_method": "patchcore",
            "model": {"backbone": "efficientnet-lite0", "pretrained": "imagenet"},
            "patchcore": {"bank_size": BANK, "candidates": 1000, **patchcore},
            "batch_size": 8,
            "progress_bar": False,
        },
    }


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One PatchCore line fitted on the synthetic anomaly dataset (OK-only train split; NG in val and test)."""
    from crux.train.pipeline import evaluate, train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("patchcore")
    prepared = prepared_dataset(root, "anomaly", image_size=64)
    cfg = load_pipeline_config(patchcore_params())
    summary = train(prepared, root / "model", cfg)
    metrics = evaluate(root / "model", prepared, root / "eval", cfg.evaluate, split="test")
    return {"root": root, "prepared": prepared, "summary": summary, "metrics": metrics}


def test_ng_parts_score_above_ok_parts(fitted: dict[str, Any]) -> None:
    summary, metrics = fitted["summary"], fitted["metrics"]
    assert summary["stopped_by"] == "memory_bank" and summary["epochs"] == 0
    assert summary["best_val"] is not None and summary["best_val"] >= 0.9  # val AUROC: what the method is chosen on
    assert metrics["auroc"] >= 0.9
    # dvc.yaml's train outputs exist, as for a Lightning run.
    model_dir = fitted["root"] / "model"
    for rel in ("model.pt", "train.json", "dvclive/metrics.json", "checkpoints/patchcore.json"):
        assert (model_dir / rel).is_file(), rel
    assert list((model_dir / "dvclive" / "plots").rglob("*.tsv"))


def test_bundle_reloads_the_bank_and_keeps_the_segment_contract(fitted: dict[str, Any]) -> None:
    from crux.train.models.bundle import load_bundle
    from crux.train.models.patchcore import PatchCore

    model, meta = load_bundle(fitted["root"] / "model" / "model.pt")
    assert isinstance(model, PatchCore) and meta["model_config"]["method"] == "patchcore"
    assert tuple(model.bank_t.shape) == (model.dim, BANK) and float(model.bank_sq.abs().sum()) > 0
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (2, 2, 64, 64)
    assert float(out[:, 0].abs().max()) == 0.0  # background logit 0: p(anomalous) = sigmoid(score)
    assert float(model.scale) > 0.0 and float(model.centre) > 0.0


def test_onnx_export_passes_parity(fitted: dict[str, Any]) -> None:
    from crux.ship.export import ExportConfig, export

    card = export(
        fitted["root"] / "model",
        fitted["root"] / "export",
        ExportConfig(exporter="torchscript", parity_images=6),
        prepared_dir=fitted["prepared"],
        metrics=fitted["metrics"],
        postprocess={"ng_threshold": fitted["metrics"]["inspection"]["threshold"]},
    )
    assert card["parity"]["passed"] and card["kind"] == "anomaly"


def test_greedy_coreset_is_bounded_and_covers_every_cluster() -> None:
    from crux.train.patchcore_fit import greedy_coreset

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 16, generator=g) * 50
    # 8 clusters of very unequal size: random sampling would miss the small ones, k-centre cannot.
    sizes = [2000, 1000, 500, 200, 50, 10, 3, 1]
    x = torch.cat([c + torch.randn(n, 16, generator=g) for c, n in zip(centres, sizes, strict=True)])
    labels = np.repeat(np.arange(8), sizes)
    chosen = greedy_coreset(x, 8, projection=8, generator=g)
    assert len(chosen) == 8 and len(set(chosen.tolist())) == 8
    assert sorted(labels[chosen.numpy()].tolist()) == list(range(8))
    assert torch.equal(greedy_coreset(x[:5], 8, projection=0, generator=g), torch.arange(5))


def test_bank_is_the_configured_size_even_from_few_patches(fitted: dict[str, Any]) -> None:
    report = fitted["summary"]["patchcore"]
    assert report["bank_size"] == BANK and report["candidates"] <= 1000


@pytest.mark.parametrize(
    ("train", "key"),
    [
        ({"anomaly_method": "memory"}, "train.anomaly_method"),
        ({"anomaly_method": "patchcore"}, "train.anomaly_method"),  # no pretrained weights
        (
            {
                "anomaly_method": "patchcore",
                "model": {"backbone": "efficientnet-lite0", "pretrained": "imagenet"},
                "patchcore": {"strides": [8, 64]},
            },
            "train.patchcore.strides",
        ),
        ({"patchcore": {"bank_size": 4096, "candidates": 100}}, "train.patchcore.candidates"),
        ({"patchcore": {"neighbourhood": 2}}, "train.patchcore.neighbourhood"),
    ],
)
def test_config_errors_name_the_key(train: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_pipeline_config({"train": train})
