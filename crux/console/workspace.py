"""What the workspace's latest `crux evaluate` left in metrics/LINE/: the figures the line page shows, the PR curve,
and whether it measured the production model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crux.console.views import KEY_METRICS

# The figures `crux evaluate` leaves in metrics/LINE/plots/ that the line page shows (no other name is served).
# Not its confusion_matrix.png: the page draws the production release's matrix itself, readable at any class count
# (the workspace's was a second copy, with 7 px text and cut class names).
WORKSPACE_PLOTS = ("worst_misses.png",)


def workspace_plots(workspace: Path | None, line: str) -> Path | None:
    # `line` is a configured line name (checked by the caller), never a request's free text.
    return None if workspace is None else workspace / "metrics" / line / "plots"


def workspace_pr_curve(workspace: Path | None, line: str) -> list[dict[str, Any]]:
    plots_dir = workspace_plots(workspace, line)
    path = plots_dir / "pr_curve.json" if plots_dir else None
    try:
        rows = json.loads(path.read_text(encoding="utf-8")) if path and path.is_file() else []
    except (OSError, ValueError):
        return []
    return rows if isinstance(rows, list) and all(isinstance(r, dict) and "recall" in r for r in rows) else []


def workspace_is_production(workspace: Path | None, line: str, prod: dict[str, Any] | None) -> bool:
    """Whether the workspace's latest evaluation measured the production model (same test metrics)."""
    plots_dir = workspace_plots(workspace, line)
    if prod is None or plots_dir is None or not (plots_dir.parent / "metrics.json").is_file():
        return False
    try:
        metrics = json.loads((plots_dir.parent / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    ours = prod.get("metrics") or {}
    keys = KEY_METRICS.get(str(metrics.get("kind")), ("accuracy",))
    from crux.ship.gate import metric_value

    return all(metric_value(metrics, k) == metric_value(ours, k) for k in keys)
