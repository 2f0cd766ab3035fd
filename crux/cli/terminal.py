"""What every command shares: the two consoles, the common options and a progress bar."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

# Messages on stderr may carry style markup ("[yellow]warning:[/]"): every user-provided value in them goes through
# `escape` (rich.markup.escape), or "[/x]" in a name crashes the print and "[b]" vanishes from it.
console = Console(stderr=True)


# Output is pasted into PRs and parsed: never hard-wrapped, and never read as markup (it is mostly user data:
# names, paths, class names, reasons), so no escaping is needed and none can be forgotten.
out = Console(soft_wrap=True, markup=False)

__all__ = ["LineOption", "ParamsOption", "console", "escape", "json_text", "out", "progress_bar"]


def json_text(data: Any) -> str:
    """`data` as strict JSON (what `--json` outputs print): a NaN or infinity, which `json.dumps` would write as the
    invalid tokens NaN / Infinity, becomes null."""
    import json

    return json.dumps(_finite(data), allow_nan=False, default=str)


def _finite(data: Any) -> Any:
    import math

    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    return data


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
        task = progress.add_task(escape(description), total=total)  # the column renders markup
        yield lambda n: progress.advance(task, n)


LineOption = Annotated[
    str | None, typer.Option(help="The line whose params.yaml `pipeline.overrides` apply (dvc.yaml passes it).")
]
