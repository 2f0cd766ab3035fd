"""The team panel of a line (per-annotator throughput, agreement, review queue; crux.console.team_data) and the
page `/lines/{line}/team` that shows it alone.

Reading a project's tasks with their annotations takes Label Studio seconds at a few thousand tasks, so the page
never waits for it: `TeamCache` serves the last summary and refreshes it in the background; the very first view
of a line waits a moment and otherwise says the read is under way. Label Studio down is a value the panel shows
("Label Studio unreachable"), kept for a short while so that every page does not try again.

`install(app)` puts the cache on the app and gives the templates `team_panel(line)`: the line page's partial
(templates/team_panel.html) asks for its data itself, so the line page's route needs no change.
"""

# No `from __future__ import annotations`: FastAPI evaluates the endpoint annotations.

import concurrent.futures
import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from crux.console.deps import Console, ConsoleDep, LineInfo
from crux.console.sources import LabelStudioReader, Unavailable
from crux.console.team_data import TeamSummary, read_team

router = APIRouter()

SOURCE = "Label Studio"


@dataclass(frozen=True)
class Pending:
    """The first read of a line's team is under way: the panel says so instead of holding the page."""

    since: dt.datetime


@dataclass(frozen=True)
class NoProject:
    """Label Studio answers but has no CRUX project for this line."""

    line: str


TeamState = TeamSummary | Unavailable | Pending | NoProject

# One background read per line at a time; the pool is small: these are slow reads of one server.
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="crux-console-team")


class TeamCache:
    """Per line: the last state and when it was read. `get` never blocks longer than `first_wait_s`."""

    def __init__(
        self,
        read: Callable[[LineInfo], TeamState],
        ttl_s: float = 30.0,
        error_ttl_s: float = 10.0,
        first_wait_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.read, self.ttl_s, self.error_ttl_s, self.first_wait_s = read, ttl_s, error_ttl_s, first_wait_s
        self.clock, self.now = clock, now
        self._items: dict[str, tuple[float, TeamState]] = {}
        self._running: dict[str, concurrent.futures.Future[None]] = {}
        self._lock = threading.Lock()

    def get(self, line: LineInfo) -> TeamState:
        with self._lock:
            hit = self._items.get(line.name)
            if hit is not None:
                ttl = self.error_ttl_s if isinstance(hit[1], Unavailable) else self.ttl_s
                if self.clock() - hit[0] < ttl:
                    return hit[1]
            future = self._running.get(line.name)
            if future is None:
                future = _POOL.submit(self._refresh, line)
                self._running[line.name] = future
        if hit is not None:
            return hit[1]  # stale, refreshing in the background
        try:
            future.result(timeout=self.first_wait_s)
        except concurrent.futures.TimeoutError:
            return Pending(self.now())
        with self._lock:
            done = self._items.get(line.name)
        return done[1] if done is not None else Pending(self.now())

    def _refresh(self, line: LineInfo) -> None:
        try:
            state = self.read(line)
        except Exception as exc:  # any failure of the read is what the panel shows
            state = Unavailable(SOURCE, f"{type(exc).__name__}: {str(exc)[:200]}")
        with self._lock:
            self._items[line.name] = (self.clock(), state)
            self._running.pop(line.name, None)


def team_reader(reader: LabelStudioReader, read_timeout_s: float = 30.0) -> Callable[[LineInfo], TeamState]:
    """A line's team state from the console's Label Studio reader (its cached project list finds the project)."""
    client: list[Any] = []

    def read(line: LineInfo) -> TeamState:
        from crux.label.server import health

        if not health(reader.url, timeout=reader.timeout_s):
            return Unavailable(SOURCE, f"{reader.url} does not answer /health")
        progress = reader.progress().get(line.name)
        if progress is None:
            return NoProject(line.name)
        if not client:
            from label_studio_sdk import LabelStudio

            # The SDK's LabelStudio re-declares __init__(*args, **kwargs) without annotations (its base is typed).
            client.append(LabelStudio(base_url=reader.url, api_key=reader.token, timeout=read_timeout_s))  # type: ignore[no-untyped-call]
        return read_team(client[0], line.name, line.kind, progress.project_id, progress.url, dt.datetime.now(dt.UTC))

    return read


def install(app: FastAPI, console: Console) -> None:
    """The team cache on the app, and the templates' `team_panel(line)` and `pending` test."""
    reader = console.cfg.labelstudio
    cache = TeamCache(team_reader(reader)) if reader is not None else None
    app.state.team = cache

    def team_panel(line: LineInfo) -> TeamState:
        if cache is None:
            return Unavailable(SOURCE, "not configured")
        return cache.get(line)

    env = console.templates.env
    env.globals["team_panel"] = team_panel
    env.tests["pending"] = lambda value: isinstance(value, Pending)
    env.tests["no_project"] = lambda value: isinstance(value, NoProject)


@router.get("/lines/{line}/team", response_class=HTMLResponse, summary="A line's labelling team (Label Studio)")
def team_page(request: Request, console: ConsoleDep, line: str) -> Response:
    info = console.known_line(line)
    return console.page(request, "team.html", line=info, title=f"{info.name} team")
