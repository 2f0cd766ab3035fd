"""`crux collect|ingest|stations`: edge captures in over HTTP, and back to labeling."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crux.cli.root import app
from crux.cli.terminal import ParamsOption, console, escape, out
from crux.settings import (
    ingest_engine,
    ingest_settings,
    labelstudio_access,
    labelstudio_client,
    labelstudio_config,
    load_context,
    s3_storage_options,
)

ingest_app = typer.Typer(help="The HTTP ingest service edge stations upload captures to.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")


stations_app = typer.Typer(help="Edge stations and their upload tokens.", no_args_is_help=True)
app.add_typer(stations_app, name="stations")


@app.command("collect")
def collect_command(
    project: Annotated[str, typer.Argument(help="Project (inspection line) from params.yaml.")],
    batch_size: Annotated[int, typer.Option(help="Tasks per import request.")] = 500,
    max_tasks: Annotated[int | None, typer.Option(help="Import at most this many (most important first).")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Edge captures not yet in Label Studio → tasks of their line's project, NG and most uncertain first."""
    from crux.collect.labeling import collect
    from crux.collect.storage import ImageStore

    ctx = load_context(params)
    spec = labelstudio_config(ctx).project(project)
    settings = ingest_settings(ctx)
    s3 = s3_storage_options() if settings.storage_url.startswith("s3://") else {}
    report = collect(
        ingest_engine(ctx),
        labelstudio_client(ctx),
        project,
        spec,
        ImageStore(settings.storage_url, settings.storage_options),
        labelstudio_access(ctx).files_root,
        batch_size,
        s3_options=s3,
        max_tasks=max_tasks,
    )
    out.print(report.summary())


@ingest_app.command("serve")
def ingest_serve(
    host: Annotated[str, typer.Option(help="Bind address; loopback unless you mean otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8700,
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes (default ingest.workers); one per core, on PostgreSQL.", min=1, max=64),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Serve POST /v1/captures for edge stations (FastAPI + uvicorn)."""
    from crux.collect import serve

    settings = ingest_settings(load_context(params))
    count = settings.workers if workers is None else workers
    if count > 1 and settings.database_url.startswith("sqlite"):
        console.print(
            "[yellow]warning:[/] SQLite takes one writer at a time: more than one worker adds processes, not "
            "throughput (set ingest.database_url to PostgreSQL)"
        )
    serve(settings, host=host, port=port, workers=count)


@stations_app.command("add")
def stations_add(
    name: Annotated[str, typer.Argument(help="Station name, e.g. line3-cam1.")],
    line: Annotated[str, typer.Option("--line", help="Inspection line the station belongs to.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Register a station and print its upload token once (only its hash is stored)."""
    from crux.collect import add_station
    from crux.collect.names import check_name

    ctx = load_context(params)
    check_name(name, "station")
    labelstudio_config(ctx).project(line)  # a station of a line that is not a project would upload into nothing
    token = add_station(ingest_engine(ctx), name, line)
    out.print(token, soft_wrap=True)
    console.print(f"Station {escape(name)} on line {escape(line)}: keep this token now, it cannot be shown again.")


@stations_app.command("revoke")
def stations_revoke(
    name: Annotated[str, typer.Argument(help="Station name.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Revoke a station's token: its uploads are refused from now on."""
    from crux.collect import revoke_station

    revoke_station(ingest_engine(load_context(params)), name)
    out.print(f"Station {name} revoked.")
