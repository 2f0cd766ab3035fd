"""The root `crux` Typer app; the stage modules of `crux.cli` register their commands on it."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="CRUX: label, version, train, ship and inspect — the visual-inspection learning loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
