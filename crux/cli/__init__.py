"""The `crux` command line: argv in, typed config values from `crux.settings`, a library call out.

One module per stage of the loop (label, data, train, ship, edge, collect, cycle, worker, console, demo) registers its
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
STAGES = ("label", "data", "team", "train", "ship", "edge", "collect", "cycle", "worker", "console", "demo")
for _stage in STAGES:
    importlib.import_module(f"crux.cli.{_stage}")


def main() -> None:
    """The console script: a CruxError is one red line and exit code 1, never a traceback."""
    from rich.markup import escape

    from crux.errors import CruxError

    try:
        app()
    except CruxError as exc:
        # The message quotes user input (names, paths, values): escaped, it is printed as given, whatever its
        # brackets; soft_wrap keeps it one line however narrow the terminal.
        terminal.console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
