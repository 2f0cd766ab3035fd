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
from crux.console.views import ago, metric_fmt, num, pct

PACKAGE = Path(__file__).parent


@dataclass(frozen=True)
class LineInfo:
    """One inspection line (a `labelstudio.projects` entry)."""

    name: str
    title: str
    kind: str


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
    # A dataset diff reads two manifests through DVC: slower, on its own page.
    diff_timeout_s: float = 20.0
    # A station is silent after this many of its heartbeat intervals without one.
    silent_after_intervals: float = 3.0
    default_heartbeat_s: float = 30.0
    # The project folder: metrics/LINE/plots/ of the latest `crux evaluate` in this workspace.
    workspace: Path | None = None
    prefect_url: str | None = None
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
        env.filters.update(ago=ago, pct=pct, num=num, metric=metric_fmt)
        env.tests["unavailable"] = lambda value: isinstance(value, Unavailable)
        self.sessions, self.limiter = Sessions(), LoginLimiter()
        # Figures of immutable releases, keyed by what they show: drawing one takes 0.1-0.3 s.
        self.figures: TTLCache[bytes] = TTLCache(86400.0)

    def page(self, request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("now", self.cfg.clock())
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


def get_console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


ConsoleDep = Annotated[Console, Depends(get_console)]
