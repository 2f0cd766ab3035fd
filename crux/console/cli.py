"""`crux console serve`: the read-only plant console (hooked into crux/cli.py by `register`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

DEFAULT_PORT = 8710
TOKEN_FILE = Path(".crux/console/admin-token")

console_app = typer.Typer(help="The read-only plant console (lines, models, stations, captures).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(console_app, name="console")


def console_config(params: Path, admin_token: str | None, timeout_s: float) -> Any:
    """Every reader of the console built from params.yaml and the environment (the only place that reads them)."""
    from crux.cli import (
        dataset_config,
        edge_config,
        ingest_settings,
        labelstudio_access,
        labelstudio_config,
        load_context,
        model_remote,
        s3_storage_options,
    )
    from crux.collect import create_db_engine, migrate
    from crux.console.app import ConsoleConfig, LineInfo
    from crux.console.sources import DatasetReader, IngestReader, LabelStudioReader, ModelReader
    from crux.ship.signing import load_public_keys

    ctx = load_context(params)
    projects = labelstudio_config(ctx).projects
    lines = tuple(LineInfo(name, spec.title, spec.kind) for name, spec in projects.items())
    settings = ingest_settings(ctx)
    engine = create_db_engine(settings.database_url)
    migrate(engine)  # the console may start before the ingest service ever did
    remote = model_remote(ctx, None)
    key_paths = [ctx.path(Path(p)) for p in edge_config(ctx).public_keys]
    # Missing keys do not stop the console: versions then show as "not checked" instead of trusted.
    keys = load_public_keys([p for p in key_paths if p.is_file()]) if any(p.is_file() for p in key_paths) else []
    access = labelstudio_access(ctx)
    return ConsoleConfig(
        lines=lines,
        ingest=IngestReader(engine, settings.storage_url, settings.storage_options),
        models=ModelReader(remote, keys, s3_storage_options() if remote.startswith("s3://") else None),
        datasets=DatasetReader(ctx.root, str(dataset_config(ctx).root)),
        labelstudio=LabelStudioReader(access.url, access.token, timeout_s=timeout_s),
        admin_token=admin_token,
        timeout_s=timeout_s,
        workspace=ctx.root,
        prefect_url=_prefect_ui(os.environ),
    )


@console_app.command("serve")
def console_serve(
    host: Annotated[
        str, typer.Option(help="Bind address; anything but loopback requires the admin token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = DEFAULT_PORT,
    timeout: Annotated[float, typer.Option(help="Seconds each store may take before it shows as unavailable.")] = 2.0,
    params: Annotated[
        Path, typer.Option("--params", help="The params file; relative paths in it are from its folder.")
    ] = Path("params.yaml"),
) -> None:
    """Serve the read-only console (FastAPI + Jinja2); 127.0.0.1 by default."""
    from crux.console.serve import is_loopback, load_or_create_token, serve

    token = None
    if not is_loopback(host):
        root = params.resolve().parent
        token_path = root / TOKEN_FILE
        token = load_or_create_token(token_path, os.environ.get("CRUX_CONSOLE_TOKEN"))
        typer.echo(
            f"Console bound to {host}: sign in with the admin token (CRUX_CONSOLE_TOKEN or {token_path}).", err=True
        )
    serve(console_config(params, token, timeout), host=host, port=port)


def _prefect_ui(env: Mapping[str, str]) -> str | None:
    """The Prefect UI to link to: PREFECT_UI_URL, else the server of PREFECT_API_URL (http://host:4200/api)."""
    if env.get("PREFECT_UI_URL"):
        return env["PREFECT_UI_URL"]
    api = env.get("PREFECT_API_URL", "")
    return api.removesuffix("/").removesuffix("/api") or None
