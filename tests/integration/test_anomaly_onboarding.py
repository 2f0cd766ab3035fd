"""A brand-new line onboarded end to end as a newcomer would, through the CLI, with the real Label Studio, git and
DVC: one params entry (kind anomaly) → project sync (OK/NG Choices) → import a folder of OK tiles (and a few NG
ones for validation and test) → snapshot --commit → prepare / train / evaluate / export → gate → signed publish →
`crux predict --json` from the published line (the edge's code path)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import MAGNETIC_TILE, REPO
from typer.testing import CliRunner

from crux.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LINE = "tiles-ok"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path, ls_files_root: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["labelstudio"]["files_root"] = str(ls_files_root)
    # The newcomer's one params entry: a line before its first defect.
    params["labelstudio"]["projects"][LINE] = {
        "title": "Tiles, new line",
        "kind": "anomaly",
        "ok_class": "OK",
        "classes": {"OK": "#3cb44b", "NG": "#e6194b"},
        "aliases": {"MT_Free": "OK", "MT_Blowhole": "NG", "MT_Crack": "NG", "MT_Break": "NG"},
        "instructions": "Confirm OK for a good tile; NG for any defect.",
    }
    # Tiny and quick: this test checks the loop, bench/anomaly.py measures the model.
    params["pipeline"]["overrides"][LINE] = {
        "data": {"image_size": 64, "split_ratios": [0.4, 0.3, 0.3]},
        "augment": {"transforms": []},
        "train": {
            "model": {"width": 8, "depth": [1, 1, 1], "neck_width": 16},
            "epochs": 3,
            "batch_size": 8,
            "num_workers": 0,
            "progress_bar": False,
        },
        "export": {"quantize": True, "calibration_images": 4, "parity_images": 4},
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "ci@crux.example")
    git(repo, "config", "user.name", "CI")
    dvc = str(REPO / ".venv" / "bin" / "dvc")
    subprocess.run([dvc, "init", "-q"], cwd=repo, check=True)
    subprocess.run([dvc, "remote", "add", "-d", "local", str(tmp_path / "remote")], cwd=repo, check=True)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    return repo


def test_new_anomaly_line_from_params_to_a_published_model(
    ls_server: tuple, ls_client: Any, ls_files_root: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not MAGNETIC_TILE.exists():
        pytest.skip(f"{MAGNETIC_TILE} not present")
    import torch

    torch.set_num_threads(1)
    monkeypatch.chdir(repo)  # relative paths as a newcomer types them; dvclive writes beside the repo
    settings, credentials = ls_server
    source = ls_files_root / "new-line"
    for folder, n in (("MT_Free", 16), ("MT_Blowhole", 2), ("MT_Crack", 2), ("MT_Break", 2)):
        (source / folder).mkdir(parents=True)
        for jpg in sorted((MAGNETIC_TILE / folder).glob("*.jpg"))[:n]:
            shutil.copy(jpg, source / folder / jpg.name)

    env = {"CRUX_LS_URL": settings.url, "CRUX_LS_TOKEN": credentials.token}
    runner = CliRunner()
    timings: dict[str, float] = {}

    def crux(*args: str, code: int = 0) -> str:
        started = time.perf_counter()
        result = runner.invoke(app, [*args, "--params", "params.yaml"], env=env)
        timings[args[0]] = round(time.perf_counter() - started, 2)
        assert result.exit_code == code, result.output
        return result.output

    crux("project", "sync", LINE, "--no-webhook")
    project = next(p for p in ls_client.projects.list() if p.title == "Tiles, new line")
    config = ls_client.projects.get(id=project.id).label_config
    assert "<Choices" in config and 'value="OK"' in config and 'value="NG"' in config

    crux("import", LINE, str(source), "--labels", "folders")
    crux("snapshot", LINE, "--commit")
    manifest = [json.loads(line) for line in (repo / "data" / LINE / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 22 and {lb["class"] for m in manifest for lb in m["labels"]} == {"OK", "NG"}
    assert json.loads((repo / "data" / LINE / "classes.json").read_text())["kind"] == "anomaly"

    prepared, candidate, metrics = f"build/{LINE}/prepared", f"models/{LINE}/candidate", f"metrics/{LINE}"
    crux("prepare", f"data/{LINE}", prepared, "--line", LINE)
    crux("train", prepared, candidate, "--line", LINE)
    crux("evaluate", candidate, prepared, metrics, "--line", LINE)
    measured = json.loads((repo / metrics / "metrics.json").read_text())
    assert measured["kind"] == "anomaly" and "calibration" in measured
    export = f"models/{LINE}/export"
    crux(
        "export", candidate, export, "--prepared", prepared, "--metrics", f"{metrics}/metrics.json",
        "--postprocess", f"{metrics}/postprocess.json", "--line", LINE,
    )  # fmt: skip
    card = json.loads((repo / export / "card.json").read_text())
    assert card["kind"] == "anomaly" and card["parity"]["passed"] and card["quantized"] is not None

    crux("keys", "init")
    refused = runner.invoke(app, ["publish", LINE, export, "--json", "--params", "params.yaml"], env=env)
    if refused.exit_code != 0:
        # A 3-epoch model may be refused; the decision names every criterion, and forcing it is recorded.
        gate = json.loads(refused.stdout.strip().splitlines()[-1])["gate"]
        assert not gate["passed"] and gate["reason"]
        published = crux("publish", LINE, export, "--json", "--force", "--reason", "onboarding test: tiny model")
    else:
        published = refused.stdout
    decision = json.loads(published.strip().splitlines()[-1])
    criteria = {c["metric"] for c in decision["gate"]["criteria"]}
    # The kind's floors are stated in the decision: AUROC and NG recall where NG items exist, false rejects always.
    assert {"auroc", "inspection.ng_recall", "inspection.false_reject_rate"} <= criteria
    assert decision["version"] == 1

    tile = next((source / "MT_Crack").glob("*.jpg"))
    line_url = str(repo / ".crux" / "model-remote" / LINE)
    record = json.loads(crux("predict", line_url, str(tile), "--json").strip().splitlines()[-1])
    assert record["label"] in {"OK", "NG"} and record["model_version"] == 1
    assert set(record["scores"]) == {"OK", "NG"} and "regions" in record
    # Live on an edge: the edge runtime verifies the signed release and inspects frames (once, no polling).
    frames = crux("edge", "run", LINE, "--glob", str(source / "MT_Crack" / "*.jpg"), "--no-poll")
    inspected = [json.loads(line) for line in frames.splitlines() if line.startswith("{")]
    assert len(inspected) == 2 and all(r["verdict"] in {"OK", "NG"} for r in inspected)
    print("newcomer command timings (s):", json.dumps(timings))
