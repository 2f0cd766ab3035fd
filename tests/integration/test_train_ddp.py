"""`train.strategy: ddp` on 2 CPU processes (gloo) trains the same model as 1 process, through the `crux train` CLI.

Lightning's ddp launcher re-runs the command line for each extra rank, so under pytest it would re-run pytest: the
test drives the CLI in a subprocess, as `dvc repro` does. Metrics: 1 process at batch 8 vs 2 ranks at batch 4 each
(the same effective batch); the sample order differs (DistributedSampler) and BatchNorm sees 4 images per rank, so
the two models are close, not equal: the frozen test split's accuracy and macro-F1 (from `crux evaluate`, one
process) must agree within TOLERANCE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from crux.data.synthetic_versions import write_synthetic_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# Absolute difference allowed on test accuracy / macro-F1 between 1 and 2 processes (32 test images: 3 images).
TOLERANCE = 0.1

TRAIN = {
    "model": {"backbone": "resnet", "pretrained": "none", "width": 8, "depth": [1, 1, 1], "pool": "avg"},
    "mode": "full",
    "epochs": 10,
    "lr": 0.01,
    "warmup_epochs": 0.0,
    "ema_decay": 0.0,
    "num_workers": 0,
    # One thread per process: two ranks on the shared 2 cores must not oversubscribe them.
    "threads": 1,
    "accelerator": "cpu",
    "precision": "32-true",
    "progress_bar": False,
}


def _params(tmp: Path, name: str, **train: Any) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["image_size"] = 32
    params["augment"]["transforms"] = []  # the same images on every rank and in both runs
    params["pipeline"]["overrides"] = {}
    params["train"].update({**TRAIN, **train})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _crux(tmp: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "crux.cli", *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"crux {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    # A ddp child rank inherits these pipes (run() waits for it): it must end cleanly too.
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_ddp_two_cpu_processes_match_one(tmp_path: Path) -> None:
    data = write_synthetic_dataset(tmp_path, "classify", n_per_split=(96, 32, 32), size=32, seed=3)
    one = _params(tmp_path, "one", batch_size=8, devices=1, strategy="auto")
    two = _params(tmp_path, "two", batch_size=4, devices=2, strategy="ddp")
    _crux(tmp_path, "prepare", str(data), "prepared", "--params", str(one))

    results: dict[str, dict[str, Any]] = {}
    for name, params in (("one", one), ("two", two)):
        _crux(tmp_path, "train", "prepared", f"model-{name}", "--params", str(params))
        _crux(tmp_path, "evaluate", f"model-{name}", "prepared", f"eval-{name}", "--params", str(params))
        results[name] = {
            "train": json.loads((tmp_path / f"model-{name}" / "train.json").read_text()),
            "metrics": json.loads((tmp_path / f"eval-{name}" / "metrics.json").read_text()),
        }

    single, ddp = results["one"], results["two"]
    assert single["train"]["world_size"] == 1 and single["train"]["strategy"] == "auto"
    assert ddp["train"]["world_size"] == 2 and ddp["train"]["strategy"] == "ddp"
    # Each rank hashed its final weights: ddp kept the two replicas identical.
    digests = ddp["train"]["weights_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # 96 train images: 12 steps an epoch at batch 8 in one process; 2 ranks at batch 4 take 12 steps each.
    assert single["train"]["global_step"] == ddp["train"]["global_step"] == 120
    # Rank 0 alone wrote: one best and one last checkpoint (a second writer would leave best-v1.ckpt), one dvclive.
    assert sorted(p.name for p in (tmp_path / "model-two" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert (tmp_path / "model-two" / "dvclive" / "metrics.json").is_file()
    for metric in ("accuracy", "macro_f1"):
        a, b = single["metrics"][metric], ddp["metrics"][metric]
        assert abs(a - b) <= TOLERANCE, f"{metric}: 1 process {a}, 2 ddp processes {b}"
    # Not a blind model in either run: the comparison means something.
    assert min(single["metrics"]["accuracy"], ddp["metrics"]["accuracy"]) >= 0.6
    print(json.dumps({n: {k: r["metrics"][k] for k in ("accuracy", "macro_f1")} for n, r in results.items()}))
