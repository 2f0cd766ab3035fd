"""`crux cycle|deploy|trigger|webhooks`: the improvement cycle as Prefect flows, on a schedule and on new labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crux.cli.root import app
from crux.cli.terminal import ParamsOption, console, out
from crux.config import ConfigError, from_mapping
from crux.settings import (
    labelstudio_client,
    load_context,
    prefect_api_configured,
    prefect_defaults,
    require_trainable,
    trainable_lines,
    untrainable_lines,
    webhook_secret,
    webhooks_config,
)

webhooks_app = typer.Typer(help="The Label Studio webhook receiver that starts cycles.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")


@app.command("cycle")
def cycle_command(
    project: Annotated[str, typer.Argument(help="Project (inspection line) from params.yaml.")],
    quick: Annotated[bool, typer.Option(help="Train with the quick profile (CI: a few steps).")] = False,
    profile: Annotated[
        str | None, typer.Option(help="A training profile: quick, or demo (5-minute training budget).")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Run the improvement cycle once, as a Prefect flow: snapshot → train → evaluate → gate → publish."""
    from crux.train.recipe import PROFILES

    if profile is not None and profile not in PROFILES:
        raise ConfigError(f"--profile {profile}: choose one of {', '.join(PROFILES)}")
    ctx = load_context(params)
    require_trainable(ctx, project)  # an unknown or untrainable line fails here, before Prefect starts
    prefect_defaults(ctx)
    from flows.cycle import cycle

    result = cycle(project, params_path=str(params), quick=quick, profile=profile)
    out.print_json(data=result)


@app.command("deploy")
def deploy_command(
    projects: Annotated[list[str] | None, typer.Argument(help="Projects; default all declared.")] = None,
    serve: Annotated[bool, typer.Option(help="Run the schedules in this process (no worker).")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Register the cycle-PROJECT deployments (cron from params `deploy:`) with the Prefect API."""
    import dataclasses

    ctx = load_context(params)
    for name in projects or ():
        require_trainable(ctx, name)  # an unknown or untrainable line fails here, before Prefect starts
    prefect_defaults(ctx)
    from flows import deploy

    cfg = from_mapping(deploy.DeployConfig, ctx.section("deploy"), "deploy")
    # Only lines dvc.yaml can train (pipeline.lines): a nightly cycle of any other would snapshot, then fail.
    trainable = trainable_lines(ctx.params)
    names = projects or trainable
    for name in [] if projects else untrainable_lines(ctx):
        console.print(
            f"[yellow]{name}: skipped[/] — declared but not in pipeline.lines (no stages to train it); add it there "
            f"once `crux snapshot {name} --commit` has made its first dataset version"
        )
    if not prefect_api_configured():
        console.print("[yellow]PREFECT_API_URL is not set: registering with the local ephemeral API.[/]")
    if serve:
        local = dataclasses.replace(cfg, work_pool=None, work_queue=None)
        deploy.serve(deploy.deployments_from_config(names, local))
        return
    ids = deploy.register(deploy.deployments_from_config(names, cfg), cfg.work_pool, cfg.heartbeat_s)
    for name, deployment_id in zip(names, ids, strict=True):
        out.print(f"cycle/cycle-{name}: {deployment_id} — {cfg.schedule_cron} {cfg.timezone}, pool {cfg.work_pool}")
    for name in [] if projects else deploy.prune(trainable):
        out.print(f"{name}: removed (no longer in pipeline.lines)")


@app.command("trigger")
def trigger_command(
    project: Annotated[str, typer.Argument(help="Project (inspection line).")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Start the cycle deployment of PROJECT now (refused while one is queued or running)."""
    ctx = load_context(params)
    require_trainable(ctx, project)
    prefect_defaults(ctx)
    from flows.deploy import trigger_cycle

    run_id = trigger_cycle(project)
    out.print(f"Started flow run {run_id}." if run_id else f"A cycle of {project} is already queued or running.")


@webhooks_app.command("serve")
def webhooks_serve(params: ParamsOption = Path("params.yaml")) -> None:
    """Receive Label Studio webhooks; start cycle-PROJECT after trigger.min_new_labels label changes."""
    from crux.label.webhook_registration import project_names
    from crux.loop.trigger import ReceiverSettings, TriggerConfig, serve

    ctx = load_context(params)
    prefect_defaults(ctx)
    from flows.deploy import trigger_cycle

    webhooks = webhooks_config(ctx)
    trigger = from_mapping(TriggerConfig, ctx.section("trigger"), "trigger")
    # Labels of a line that cannot train (declared, not in pipeline.lines) start nothing: the project is ignored.
    trainable = set(trainable_lines(ctx.params))
    client = labelstudio_client(ctx)
    settings = ReceiverSettings.from_config(webhooks, trigger, webhook_secret(ctx))
    serve(
        settings,
        lambda project: trigger_cycle(project, reason="labels"),
        lambda: {i: n for i, n in project_names(client).items() if n in trainable},
        host=webhooks.host,
        port=webhooks.port,
    )
