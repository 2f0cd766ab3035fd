"""What every command shares: the two consoles, the common options and a progress bar."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


out = Console(soft_wrap=True)  # output is pasted into PRs and parsed: never hard-wrapped


ParamsOption = Annotated[
    Path, typer.Option("--params", help="The params file; relative paths in it are from its folder.")
]


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Any]:
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


LineOption = Annotated[
    str | None, typer.Option(help="The line whose params.yaml `pipeline.overrides` apply (dvc.yaml passes it).")
]
