"""train.devices / train.strategy / train.num_nodes: validated, passed to Lightning, refused where one process fits."""

from __future__ import annotations

from pathlib import Path

import pytest

from crux.config import ConfigError
from crux.data.synthetic_versions import write_synthetic_dataset
from crux.train.pipeline import train, training_threads
from crux.train.prepare import prepare
from crux.train.recipe import DataConfig, TrainConfig, load_pipeline_config


def test_strategy_and_nodes_are_validated() -> None:
    assert TrainConfig(strategy="ddp", devices=2, num_nodes=3).processes() == 6
    assert TrainConfig().processes() is None  # auto: Lightning decides
    with pytest.raises(ConfigError, match=r"train\.strategy: 'ddp_spawn' is not one of auto, ddp"):
        TrainConfig(strategy="ddp_spawn")
    with pytest.raises(ConfigError, match=r"train\.num_nodes: 0 must be >= 1"):
        TrainConfig(num_nodes=0)
    with pytest.raises(ConfigError, match=r"train\.devices: 0"):
        TrainConfig(devices=0)


def test_params_file_declares_the_keys() -> None:
    import yaml

    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    cfg = load_pipeline_config(params, ("train",))
    assert (cfg.train.strategy, cfg.train.num_nodes, cfg.train.devices) == ("auto", 1, "auto")


def test_threads_are_shared_between_local_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert training_threads(0, 0, processes=1) == 2
    # Two ddp ranks on 2 cores: one thread each, not two spinning against each other.
    assert training_threads(0, 0, processes=2) == 1
    assert training_threads(0, 2, processes=2) == 1  # never below 1
    assert training_threads(3, 0, processes=2) == 3  # an explicit train.threads wins


@pytest.mark.parametrize(
    ("kind", "train_values", "what"),
    [
        ("classify", {"mode": "head", "devices": 2, "strategy": "ddp"}, "train.mode: head"),
        (
            "anomaly",
            {
                "anomaly_method": "patchcore",
                "num_nodes": 2,
                "devices": 1,
                "model": {"backbone": "efficientnet-lite0", "pretrained": "imagenet"},
            },
            "train.anomaly_method: patchcore",
        ),
    ],
)
def test_single_process_fits_refuse_several_processes(tmp_path: Path, kind: str, train_values: dict, what: str) -> None:
    data = write_synthetic_dataset(tmp_path, kind, n_per_split=(4, 2, 2), size=32)
    prepare(data, tmp_path / "prep", DataConfig(kind=kind))
    cfg = load_pipeline_config({"data": {"kind": kind, "image_size": 32}, "train": train_values})
    with pytest.raises(ConfigError, match=f"asks for several processes, but {what} on a {kind} line"):
        train(tmp_path / "prep", tmp_path / "model", cfg)
    assert not (tmp_path / "model").exists()  # refused before anything was written
