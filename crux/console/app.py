"""The console's FastAPI app: `create_console_app(config)` wires the routers to one `Console` (crux.console.deps)
built from the config, with every store passed in as a reader.

Routes: sign-in (crux.console.login), pages (crux.console.pages), stations (crux.console.stations_view), figures
(crux.console.figures); offline OpenAPI
docs at `/docs`. Every response says how long the server took (Server-Timing) and is not cached unless it says so.
"""

# No `from __future__ import annotations`: FastAPI evaluates the handler annotations.

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from crux import __version__
from crux.collect.offline_docs import mount_offline_docs
from crux.console import captures_view, figures, login, pages, results, stations_view, team_view
from crux.console.deps import PACKAGE, Console, ConsoleConfig, PageError
from crux.console.sources import Unavailable

log = logging.getLogger(__name__)
# Dataset versions per line whose diff is computed at start (the newest first; older ones when first asked for).
WARM_DIFFS = 5


def _history(reader: Any, line: str) -> Any:
    return reader.history(line)


def _versions(reader: Any, line: str) -> Any:
    return reader.versions(line)


def warm(console: Console) -> list[concurrent.futures.Future[None]]:
    """Read every store and draw every figure once, so that the first page after a start is served from the caches
    like every later one (a cold line page took 1.85 s: imports, signature checks, matplotlib); queue the diffs of
    the newest dataset versions of each line (returned: done at once when the cache on disk has them)."""
    queued = []
    cfg, read = console.cfg, console.read
    for name in ("overview.html", "line.html", "dataset.html", "error.html", "stations.html", "station.html"):
        with contextlib.suppress(Exception):  # a template another version lacks is not ours to warm
            console.templates.env.get_template(name)
    read("Label Studio", cfg.labelstudio, lambda r: r.progress())
    read("ingest database", cfg.ingest, lambda r: r.stations())
    for line in cfg.lines:
        history = read("model remote", cfg.models, partial(_history, line=line.name))
        if history and not isinstance(history, Unavailable):
            figures.trend_figure(console, line.name, history)
            figures.confusion_figure(console, line.name, history)
        versions = read("git", cfg.datasets, partial(_versions, line=line.name))
        if isinstance(versions, list):
            queued += [console.diffs.ensure(line.name, v.commit) for v in versions[:WARM_DIFFS]]
    import PIL.Image  # noqa: F401  (the first capture overlay would import it)

    return queued


async def render_once(app: FastAPI, cfg: ConsoleConfig) -> None:
    """Serve each main page once in-process: the first real request then finds its SQL statements compiled and
    its templates' code paths taken (a first overview took 250 ms after the stores were read, the next 3 ms)."""
    import httpx

    headers = {"Authorization": f"Bearer {cfg.admin_token}"} if cfg.admin_token else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.local", headers=headers) as client:
        for path in ("/", "/stations", *(f"/lines/{line.name}" for line in cfg.lines)):
            await client.get(path)


def create_console_app(cfg: ConsoleConfig) -> FastAPI:
    console = Console(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # uvicorn opens its port after this: warm first, within a bound, then answer.
        started = time.perf_counter()

        def left() -> float:  # one bound for the whole warm-up
            return max(0.001, cfg.warm_timeout_s - (time.perf_counter() - started))

        try:
            queued = await asyncio.wait_for(asyncio.to_thread(warm, console), left())
            await asyncio.wait_for(render_once(app, cfg), left())
            # The diffs of the newest dataset versions, computed once ever (then read from disk): a first start
            # waits for them within the bound, so that their first view is as fast as any other.
            if queued:
                await asyncio.wait([asyncio.wrap_future(f) for f in queued], timeout=left())
        except TimeoutError:
            log.warning("console warm-up still running after %.0f s; serving anyway", cfg.warm_timeout_s)
        except Exception:  # a store that fails shows as unavailable on its page; the console starts regardless
            log.exception("console warm-up failed")
        log.info("console warmed in %.1f s", time.perf_counter() - started)
        yield
        console.diffs.close()

    app = FastAPI(
        title="CRUX console",
        version=__version__,
        description="Read-only plant console: lines, models, datasets, stations and captures.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    mount_offline_docs(app)
    app.mount("/static", StaticFiles(directory=str(PACKAGE / "static")), name="static")
    app.state.console = console
    stations_view.install(console)

    @app.middleware("http")
    async def timing_and_login(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        refused = login.login_required(console, request)
        response = refused if refused is not None else await call_next(request)
        # The server's own time, for the browser's network panel and bench/console.py.
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        status, message = exc.status_code, str(exc.detail)
        return console.page(request, "error.html", status, status=status, message=message, title=str(status))

    @app.exception_handler(PageError)
    async def page_error(request: Request, exc: PageError) -> Response:
        return console.page(
            request, "error.html", exc.status, status=exc.status, message=exc.message, title=str(exc.status)
        )

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        where = ", ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in exc.errors())
        return console.page(request, "error.html", 422, status=422, message=f"bad request ({where})", title="422")

    app.include_router(login.router)
    app.include_router(stations_view.router)
    app.include_router(pages.router)
    app.include_router(figures.router)
    app.include_router(results.router)
    # The line page's team panel and capture cards/lists (issue 25: team on the console, capture cards).
    for view in (team_view, captures_view):
        view.install(app, console)
        app.include_router(view.router)
    return app
