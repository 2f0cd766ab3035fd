"""`crux worker start`: a Prefect process worker of the cycle pool, running cycles in this clone of the project.

One per machine (README: "More than one machine"). The worker is Prefect's own (`prefect worker start --type
process`); this command only fills in what CRUX needs around it: the pool from params `deploy.work_pool`,
CRUX_WORKDIR = this project folder (where the cycle deployments' pull step moves each run), and the flow-run
heartbeat period that `crux deploy`'s crashed-run automation watches.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from crux.cli.root import app
from crux.cli.terminal import ParamsOption, console
from crux.config import ConfigError, from_mapping
from crux.settings import load_context, prefect_api_configured, prefect_defaults, prefect_worker_environment

worker_app = typer.Typer(help="Prefect workers that run the cycles of every line.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")


def worker_command(pool: str, name: str, limit: int | None) -> list[str]:
    """The `prefect worker start` command line (run with this interpreter, so the worker imports this install)."""
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    command += ["--name", name]
    if limit is not None:
        command += ["--limit", str(limit)]
    return command


@worker_app.command("start")
def worker_start(
    name: Annotated[str | None, typer.Option(help="Worker name shown in the Prefect UI; default crux-<host>.")] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Cycles this worker runs at once (1 for a machine with one GPU).")
    ] = 1,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Start a process worker of the pool in params `deploy.work_pool`; its runs execute in this project folder.

    Needs PREFECT_API_URL (the shared Prefect server). Runs until interrupted."""
    from flows.deploy import DeployConfig

    ctx = load_context(params)
    cfg = from_mapping(DeployConfig, ctx.section("deploy"), "deploy")
    if cfg.work_pool is None:
        raise ConfigError("deploy.work_pool is null: name the pool the workers serve (e.g. crux)")
    if not prefect_api_configured():
        raise ConfigError(
            "PREFECT_API_URL is not set: a worker serves the runs of a shared Prefect server "
            "(e.g. export PREFECT_API_URL=http://prefect-host:4200/api)"
        )
    prefect_defaults(ctx)
    command = worker_command(cfg.work_pool, name or f"crux-{socket.gethostname()}", limit)
    console.print(f"Worker for pool {cfg.work_pool}; cycles run in {ctx.root}")
    # exec: the worker is this process, so a supervisor's signals (systemd stop, Ctrl-C) reach Prefect directly.
    os.execve(command[0], command, prefect_worker_environment(ctx, cfg.heartbeat_s))
