"""`crux console serve`: the read-only plant console."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crux.cli.root import app
from crux.settings import console_config, console_token, load_context

DEFAULT_PORT = 8710
TOKEN_FILE = Path(".crux/console/admin-token")

console_app = typer.Typer(help="The read-only plant console (lines, models, stations, captures).", no_args_is_help=True)


app.add_typer(console_app, name="console")


@console_app.command("serve")
def console_serve(
    host: Annotated[
        str, typer.Option(help="Bind address; anything but loopback requires the admin token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = DEFAULT_PORT,
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
        token = load_or_create_token(token_path, console_token())
        typer.echo(
            f"Console bound to {host}: sign in with the admin token (CRUX_CONSOLE_TOKEN or {token_path}).", err=True
        )
    serve(console_config(load_context(params), token, timeout), host=host, port=port)
