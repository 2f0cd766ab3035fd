"""Benchmark: ImageNet-pretrained EfficientNet-Lite0 vs from scratch, head mode vs fine-tuning, side by side.

    OMP_NUM_THREADS=2 .venv/bin/python bench/pretrained.py [--lines neu,mt] [--finetune-epochs 0]
        [--out bench/results/pretrained.json]

For each line (NEU 6-class at 200 px; Magnetic Tile OK + 5 defect types at params.yaml's magnetic-tile-cls size),
on bench/datasets.py's 60/20/20 split:
- head: params.yaml's default (Lite0, ImageNet weights, pyramid pooling, `train.mode: head`: features cached, a
  linear head chosen on validation);
- scratch: CRUX's ResNet (width 32) from random init, `train.mode: full`, given the same wall-clock budget as the
  head took (rounded up to a whole minute): what the project shipped before, at the new recipe's cost;
- finetune (with --finetune-epochs N > 0): Lite0 fully trained from ImageNet (encoder_lr, freeze_bn from params).
Val figures are what recipes are chosen by; test figures are reported once. Every row says its CPU minutes.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from train import report, run_benchmark  # noqa: E402

LINES = {
    "neu": ("neu-det", "classify", None),
    "mt": ("magnetic-tile", "classify", "magnetic-tile-cls"),
}


def _headline(split: dict[str, Any]) -> dict[str, Any]:
    out = {k: split.get(k) for k in ("accuracy", "macro_f1")}
    inspection = split.get("inspection") or {}
    if inspection.get("n_ok"):
        out["ng_recall_at_2pct_fr"] = inspection.get("ng_recall_at_max_false_reject")
        out["ng_recall"] = inspection.get("ng_recall")
        out["false_reject_rate"] = inspection.get("false_reject_rate")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", default="neu,mt", help="comma-separated: neu, mt")
    parser.add_argument("--finetune-epochs", type=int, default=0, help="0 skips the fine-tuning rows")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pretrained.json")
    args = parser.parse_args()
    out = args.out.resolve()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    rows: list[dict[str, Any]] = []
    for key in args.lines.split(","):
        dataset, kind, line = LINES[key]
        own = ((params.get("pipeline") or {}).get("overrides") or {}).get(line or "", {})
        size = (own.get("data") or {}).get("image_size") or params["data"]["image_size"]
        base = {"data": {"image_size": size}, "train": {"progress_bar": False, "num_workers": 0}}
        recipes: dict[str, dict[str, Any]] = {"head": {"train": {"mode": "head"}}}
        head = run_benchmark(dataset, kind, _merge(base, recipes["head"]))
        budget_min = max(1, math.ceil(head["train_wall_s"] / 60))
        recipes["scratch"] = {
            "train": {
                "mode": "full",
                "model": {"backbone": "resnet", "pretrained": "none", "width": 32, "pool": "avg"},
                "epochs": 1000,
                "max_time": f"00:00:{budget_min:02d}:00",
            }
        }
        if args.finetune_epochs:
            recipes["finetune"] = {"train": {"mode": "full", "epochs": args.finetune_epochs, "batch_size": 16}}
        results = {"head": head}
        for name in [n for n in recipes if n != "head"]:
            results[name] = run_benchmark(dataset, kind, _merge(base, recipes[name]))
        for name, result in results.items():
            rows.append(
                {
                    "line": f"{dataset} {kind}",
                    "recipe": name,
                    "image_size": size,
                    "overrides": recipes[name],
                    "train_wall_s": result["train_wall_s"],
                    "train_cpu_min": result["train_cpu_min"],
                    "val": _headline(result["val"]),
                    "test": _headline(result["test"]),
                    "head": result["summary"].get("head"),
                }
            )
    columns = "val acc / F1      test acc / F1     test NG recall @2% FR"
    print(f"{'line':28} {'recipe':9} {'wall s':>7} {'CPU min':>8}  {columns}")
    for r in rows:
        v, t = r["val"], r["test"]
        ng = t.get("ng_recall_at_2pct_fr")
        print(
            f"{r['line']:28} {r['recipe']:9} {r['train_wall_s']:7.0f} {r['train_cpu_min']:8.2f}  "
            f"{v['accuracy']:.4f} / {v['macro_f1']:.4f}  {t['accuracy']:.4f} / {t['macro_f1']:.4f}  "
            f"{'' if ng is None else f'{ng:.3f}'}"
        )
    report({"rows": rows}, out)
    return 0


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    from crux.train.recipe import merge_params

    return merge_params(a, b)


if __name__ == "__main__":
    raise SystemExit(main())
