"""What every console route receives: the configuration (lines, store readers, timeouts) and the `Console` built
from it once per app (templates, login sessions, the figure cache), with what a route does with it: render a page,
read a store within its timeout, look a line up by name. Routes take it as a `ConsoleDep` parameter."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from crux import __version__
from crux.console.sessions import LoginLimiter, Sessions
from crux.console.sources import (
    DatasetReader,
    IngestReader,
    LabelStudioReader,
    ModelReader,
    TTLCache,
    Unavailable,
    fetch,
)
from crux.console.views import ago, criterion_rows, metric_fmt, num, pct, timestamp

PACKAGE = Path(__file__).parent


@dataclass(frozen=True)
class LineInfo:
    """One inspection line (a `labelstudio.projects` entry)."""

    name: str
    title: str
    kind: str
    # The line's OK class (None: every class is a defect type, so every frame is NG and OK/NG metrics do not apply).
    ok_class: str | None = None
    # In pipeline.lines (settings.trainable_lines, the list dvc.yaml, deploy and the cycle train): a declared line
    # outside it is labelled but never trained, and the console says so instead of showing an empty model column.
    trainable: bool = True


@dataclass(frozen=True)
class ConsoleConfig:
    lines: tuple[LineInfo, ...]
    ingest: IngestReader | None = None
    models: ModelReader | None = None
    datasets: DatasetReader | None = None
    labelstudio: LabelStudioReader | None = None
    # None: no login (bound to loopback). Otherwise every page asks for this token once (a cookie then).
    admin_token: str | None = None
    # Seconds each store may take before the page shows it as unavailable.
    timeout_s: float = 2.0
    # How long the diff page waits for a diff being computed before it answers "being computed" (and reloads).
    diff_wait_s: float = 0.2
    # Changed items per page of the dataset diff page.
    diff_page_size: int = 100
    # A station is silent after this many of its heartbeat intervals without one.
    silent_after_intervals: float = 3.0
    default_heartbeat_s: float = 30.0
    # The project folder: metrics/LINE/plots/ of the latest `crux evaluate` in this workspace.
    workspace: Path | None = None
    prefect_url: str | None = None
    # Where the console keeps what it computes once per immutable input (dataset diffs of a commit), so that a
    # restart does not compute them again. None: the dataset repository's .crux/console/ (git-ignored).
    cache_dir: Path | None = None
    # At start the console reads every store and draws every figure before it answers (bounded by this), so the
    # first page after a start is as fast as the next; dataset diffs go on computing in the background.
    warm_timeout_s: float = 30.0
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))

    def line(self, name: str) -> LineInfo | None:
        return next((x for x in self.lines if x.name == name), None)


class PageError(Exception):
    """A request the console answers with its error page (404 unknown line, 503 store unavailable, …)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Console:
    """The app's state, made once by `create_console_app` and stored on `app.state.console`."""

    def __init__(self, cfg: ConsoleConfig) -> None:
        self.cfg = cfg
        self.templates = Jinja2Templates(directory=str(PACKAGE / "templates"))
        env = self.templates.env
        env.globals.update(version=__version__, prefect_url=cfg.prefect_url, login=cfg.admin_token is not None)
        env.filters.update(ago=ago, pct=pct, num=num, metric=metric_fmt, ts=timestamp, criteria=criterion_rows)
        env.tests["unavailable"] = lambda value: isinstance(value, Unavailable)
        self.sessions, self.limiter = Sessions(), LoginLimiter()
        # Figures of immutable releases, keyed by what they show: drawing one takes 0.1-0.3 s.
        self.figures: TTLCache[bytes] = TTLCache(86400.0)
        from crux.console.diffs import DiffCache

        cache_dir = cfg.cache_dir or (cfg.datasets.repo / ".crux" / "console" if cfg.datasets else None)
        self.diffs = DiffCache(cfg.datasets, cache_dir / "diffs.sqlite" if cache_dir else None)

    def page(self, request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("now", self.cfg.clock())
        context.setdefault("refresh", wall_refresh(request))
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def read(self, source: str, reader: Any, call: Callable[[Any], Any], timeout: float | None = None) -> Any:
        """`call(reader)` within the timeout, or an `Unavailable` saying why (not configured, down, too slow)."""
        if reader is None:
            return Unavailable(source, "not configured")
        return fetch(source, lambda: call(reader), timeout or self.cfg.timeout_s)

    def known_line(self, name: str) -> LineInfo:
        line = self.cfg.line(name)
        if line is None:
            lines = ", ".join(x.name for x in self.cfg.lines) or "none"
            raise PageError(404, f"no line named {name!r}; lines: {lines}")
        return line


# A wall screen opens a page with ?refresh=SECONDS: the page reloads itself (no script), within these bounds.
REFRESH_S = (10, 3600)


def wall_refresh(request: Request) -> int | None:
    """The auto-refresh period a page was asked for (`?refresh=60`), clamped; None when not asked or not a number."""
    raw = request.query_params.get("refresh", "")
    if not raw.isdigit():
        return None
    return min(max(int(raw), REFRESH_S[0]), REFRESH_S[1])


def get_console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


ConsoleDep = Annotated[Console, Depends(get_console)]
