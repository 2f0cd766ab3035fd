"""`dvc repro` end to end on the project's own dvc.yaml and params.yaml (quick profile) in a temporary
git + DVC repository, through the real `crux` commands: per-line stages, exact params keys, outs,
metrics and plots, and that changing one evaluate key reruns only `evaluate`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crux.data.synthetic_versions import write_synthetic_dataset
from crux.train.recipe import QUICK_PROFILE, merge_params

pytestmark = pytest.mark.integration  # ~30 s on 2 shared cores

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{cmd}: {out.stdout}\n{out.stderr}"
    return out.stdout


def _repo(tmp_path: Path, overrides: dict) -> tuple[Path, dict, dict[str, str], str]:
    """A git + DVC repository with the project's dvc.yaml, its crux sources, one synthetic classification line and
    params.yaml with `overrides` merged over the shipped one."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    # The stages list crux modules as deps (a code change reruns them); the commands are the installed `crux`.
    shutil.copytree(ROOT / "crux", repo / "crux", ignore=shutil.ignore_patterns("__pycache__"))
    write_synthetic_dataset(tmp_path / "synthetic", "classify", n_per_split=(16, 8, 8), size=64)
    (repo / "data").mkdir()
    shutil.move(tmp_path / "synthetic" / "data", repo / "data" / "line-a")
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    # A line is declared once, as a project: the pipeline trains only declared lines.
    project = {
        "title": "Synthetic line",
        "kind": "classify",
        "ok_class": "ok",
        "classes": {"ok": "#3cb44b", "scratch": "#e6194b", "spot": "#4363d8"},
    }
    params = merge_params(
        shipped,
        {
            **overrides,
            "labelstudio": {"projects": {"line-a": project}},
            "pipeline": {"lines": ["line-a"]},
            "export": {"parity_images": 4},
        },
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    dvc = str(VENV_BIN / "dvc")
    _run(["git", "init", "-q"], repo, env)
    _run([dvc, "init", "-q"], repo, env)
    _run([dvc, "config", "core.site_cache_dir", str(tmp_path / "site")], repo, env)
    _run([dvc, "add", "-q", "data/line-a"], repo, env)  # one data/LINE.dvc per line, as `crux snapshot` does
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "init"], repo, env)  # dvclive needs a commit to read the baseline revision
    return repo, params, env, dvc


def test_dvc_repro_end_to_end(tmp_path: Path) -> None:
    repo, params, env, dvc = _repo(tmp_path, dict(QUICK_PROFILE))
    _run([dvc, "repro"], repo, env)
    metrics = json.loads((repo / "metrics" / "line-a" / "metrics.json").read_text())
    assert metrics["n_images"] == 8 and "accuracy" in metrics
    assert (repo / "models" / "line-a" / "candidate" / "model.pt").is_file()
    card = json.loads((repo / "models" / "line-a" / "export" / "card.json").read_text())
    assert card["kind"] == "classify" and card["parity"]["passed"]
    assert (repo / "models" / "line-a" / "export" / "model.onnx").is_file()
    shown = json.loads(_run([dvc, "metrics", "show", "--json"], repo, env))
    assert "metrics/line-a/metrics.json" in json.dumps(shown)

    plots = json.loads(_run([dvc, "plots", "show", "--json"], repo, env))
    assert not plots.get("errors"), plots.get("errors")
    shown_plots = json.dumps(plots)
    assert "threshold_curve" in shown_plots and "confusion" in shown_plots and "dvclive" in shown_plots

    # One evaluate key changes: only `evaluate` (and the export that reads its metrics) is stale.
    # (The false-reject budget: a line with an OK class ships the threshold calibrated on val for it.)
    params["evaluate"] = {**params["evaluate"], "max_false_reject": 0.25}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(_run([dvc, "status", "--json"], repo, env))
    assert set(status) == {"evaluate@line-a"}
    out = _run([dvc, "repro"], repo, env)
    assert "Stage 'train@line-a' didn't change" in out and "Running stage 'evaluate@line-a'" in out
    metrics = json.loads((repo / "metrics" / "line-a" / "metrics.json").read_text())
    assert metrics["inspection"]["max_false_reject"] == 0.25


def test_dvc_repro_head_mode_on_the_pretrained_encoder(tmp_path: Path) -> None:
    """The shipped default (ImageNet Lite0, head fitted on cached features) through `dvc repro`: the train stage's
    declared outs, metrics and plots exist, the card records the weights' normalisation, and a second run of the
    stage (forced) encodes nothing again."""
    repo, _, env, dvc = _repo(tmp_path, {"data": {"image_size": 64}, "train": {"num_workers": 0}})
    _run([dvc, "repro"], repo, env)
    summary = json.loads((repo / "models" / "line-a" / "candidate" / "train.json").read_text())
    assert summary["mode"] == "head" and summary["head"]["features_computed"] == 24
    card = json.loads((repo / "models" / "line-a" / "export" / "card.json").read_text())
    assert card["parity"]["passed"] and abs(card["input"]["mean"] - 127 / 255) < 1e-9
    plots = json.loads(_run([dvc, "plots", "show", "--json"], repo, env))
    assert not plots.get("errors"), plots.get("errors")
    _run([dvc, "repro", "--force", "train@line-a"], repo, env)
    again = json.loads((repo / "models" / "line-a" / "candidate" / "train.json").read_text())
    assert again["head"]["features_computed"] == 0 and again["best_val"] == summary["best_val"]
