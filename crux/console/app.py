"""The console's FastAPI app: `create_console_app(config)` wires the routers to one `Console` (crux.console.deps)
built from the config, with every store passed in as a reader.

Routes: sign-in (crux.console.login), pages (crux.console.pages), figures (crux.console.figures); offline OpenAPI
docs at `/docs`. Every response says how long the server took (Server-Timing) and is not cached unless it says so.
"""

# No `from __future__ import annotations`: FastAPI evaluates the handler annotations.

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from crux import __version__
from crux.collect.offline_docs import mount_offline_docs
from crux.console import captures_view, figures, login, pages, team_view
from crux.console.deps import PACKAGE, Console, ConsoleConfig, PageError


def create_console_app(cfg: ConsoleConfig) -> FastAPI:
    app = FastAPI(
        title="CRUX console",
        version=__version__,
        description="Read-only plant console: lines, models, datasets, stations and captures.",
        docs_url=None,
        redoc_url=None,
    )
    mount_offline_docs(app)
    app.mount("/static", StaticFiles(directory=str(PACKAGE / "static")), name="static")
    console = Console(cfg)
    app.state.console = console

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
    app.include_router(pages.router)
    app.include_router(figures.router)
    # The line page's team panel and capture cards/lists (issue 25: team on the console, capture cards).
    for view in (team_view, captures_view):
        view.install(app, console)
        app.include_router(view.router)
    return app
