"""The `crux` command line: argv in, typed config values from `crux.settings`, a library call out.

One module per stage of the loop (label, data, train, ship, edge, collect, cycle, console, demo) registers its
commands on the root app (`crux.cli.root`). Heavy libraries are imported inside commands so that `crux --help` and
the edge stay fast.
"""

from __future__ import annotations

import importlib
import sys

from crux.cli import terminal
from crux.cli.root import app

__all__ = ["STAGES", "app", "main"]

# Importing a stage module registers its commands; this order is the order `crux --help` lists them in.
STAGES = ("label", "data", "team", "train", "ship", "edge", "collect", "cycle", "console", "demo")
for _stage in STAGES:
    importlib.import_module(f"crux.cli.{_stage}")


def main() -> None:
    """The console script: a CruxError is one red line and exit code 1, never a traceback."""
    from crux.errors import CruxError

    try:
        app()
    except CruxError as exc:
        terminal.console.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
