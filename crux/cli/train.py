"""`crux prepare|train|evaluate`: the dvc.yaml training stages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crux.cli.root import app
from crux.cli.terminal import LineOption, ParamsOption, out
from crux.settings import (
    load_context,
    params_for_line,
)


@app.command("prepare")
def prepare_command(
    data_dir: Annotated[Path, typer.Argument(help="A dataset version, e.g. data/neu-det.")],
    out_dir: Annotated[Path, typer.Argument(help="Where the training-ready split lists go.")],
    line: LineOption = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Dataset version → training-ready split lists (checks every image against its hash)."""
    from crux.train.prepare import prepare
    from crux.train.recipe import load_pipeline_config

    cfg = load_pipeline_config(params_for_line(load_context(params).params, line), ("data",))
    summary = prepare(data_dir, out_dir, cfg.data)
    out.print(f"Prepared {summary['counts']} ({len(summary['excluded'])} excluded) → {out_dir}")


@app.command("train")
def train_command(
    prepared_dir: Annotated[Path, typer.Argument(help="Output of `crux prepare`.")],
    out_dir: Annotated[Path, typer.Argument(help="Model folder (model.pt, checkpoints, dvclive).")],
    quick: Annotated[bool, typer.Option(help="The quick profile: tiny model, a few steps (CI, demo).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoints/last.ckpt.")] = False,
    line: LineOption = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Train a model with Lightning (GPU when present); every setting is validated before training starts."""
    from crux.train.recipe import load_pipeline_config, merge_params, quick_profile

    ctx = load_context(params)
    values = quick_profile(ctx.params) if quick else params_for_line(ctx.params, line)
    if resume:
        values = merge_params(values, {"train": {"resume": True}})
    cfg = load_pipeline_config(values, ("data", "augment", "train"))
    from crux.train.pipeline import train

    summary = train(prepared_dir, out_dir, cfg)
    how = (
        f"head fitted on cached features in {summary['wall_s']} s"
        if summary["mode"] == "head" and "head" in summary
        else f"{summary['global_step']} steps ({summary['train_step_s']} s/step)"
    )
    out.print(f"{summary['monitor']} = {summary['best_val']} after {how} → {out_dir}/model.pt")


@app.command("evaluate")
def evaluate_command(
    model_dir: Annotated[Path, typer.Argument(help="Model folder from `crux train`.")],
    prepared_dir: Annotated[Path, typer.Argument(help="Output of `crux prepare`.")],
    out_dir: Annotated[Path, typer.Argument(help="Metrics folder (metrics.json, plots, report.md).")],
    previous: Annotated[Path | None, typer.Option(help="A previous metrics.json to compare with.")] = None,
    split: Annotated[str, typer.Option(help="Split to measure; test is the frozen yardstick.")] = "test",
    line: LineOption = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Measure a model on the frozen test split through the edge's own post-processing."""
    import json

    from crux.train.pipeline import evaluate
    from crux.train.recipe import load_pipeline_config

    cfg = load_pipeline_config(params_for_line(load_context(params).params, line), ("evaluate",))
    metrics = evaluate(model_dir, prepared_dir, out_dir, cfg.evaluate, previous, split)
    out.print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict | list)}))
