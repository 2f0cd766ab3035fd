"""The console's FastAPI app: `create_console_app(config)` with every store passed in as a reader.

Pages (server-rendered Jinja2, read-only): `/` lines overview, `/lines/{line}` line detail,
`/lines/{line}/datasets/{commit}` one dataset version's diff, `/stations`, `/stations/{name}`; figures under
`/lines/{line}/…` and `/captures/{id}/overlay.png`; offline OpenAPI docs at `/docs`.

Nothing a request names is used as a path: lines and stations must be ones the config or the database knows
(else 404), a capture is looked up by its integer id, a dataset commit must be one of the line's versions, a
workspace plot one of a fixed list of file names.
"""

# No `from __future__ import annotations`: FastAPI evaluates the endpoint annotations.

import datetime as dt
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from crux import __version__
from crux.collect.offline_docs import mount_offline_docs
from crux.collect.schemas import DB_INT_MAX
from crux.console import plots
from crux.console.sessions import LoginLimiter, Sessions
from crux.console.sources import (
    COMMIT,
    DatasetReader,
    IngestReader,
    LabelStudioReader,
    ModelReader,
    TTLCache,
    Unavailable,
    fetch,
    production,
)

PACKAGE = Path(__file__).parent
SESSION_COOKIE = "crux_console"
# The figures `crux evaluate` leaves in metrics/LINE/plots/ that the line page shows (no other name is served).
WORKSPACE_PLOTS = ("confusion_matrix.png", "worst_misses.png")
# Metrics shown per task kind, the first one is the kind's gate metric (crux.kinds monitor).
KEY_METRICS = {
    "classify": ("macro_f1", "accuracy", "inspection.ng_recall", "inspection.false_reject_rate"),
    "detect": ("map50", "map"),
    "segment": ("miou", "accuracy", "inspection.ng_recall", "inspection.false_reject_rate"),
}


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
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_console_app(cfg: ConsoleConfig) -> FastAPI:
    app = FastAPI(
        title="CRUX console",
        version=__version__,
        description="Read-only plant console: lines, models, datasets, stations and captures.",
        docs_url=None,
        redoc_url=None,
    )
    mount_offline_docs(app)
    # Figures of immutable releases, keyed by what they show: drawing one takes 0.1-0.3 s.
    figure_cache: TTLCache[bytes] = TTLCache(86400.0)
    app.mount("/static", StaticFiles(directory=str(PACKAGE / "static")), name="static")
    templates = Jinja2Templates(directory=str(PACKAGE / "templates"))
    templates.env.globals.update(version=__version__, prefect_url=cfg.prefect_url, login=cfg.admin_token is not None)
    templates.env.filters.update(ago=_ago, pct=_pct, num=_num, metric=_metric_fmt)
    templates.env.tests["unavailable"] = lambda value: isinstance(value, Unavailable)

    sessions, limiter = Sessions(), LoginLimiter()

    @app.middleware("http")
    async def timing_and_login(request: Request, call_next: Callable[[Request], Any]) -> Response:
        started = time.perf_counter()
        path = request.url.path
        is_open = path == "/login" or path.startswith("/static/")  # the login page and its stylesheet
        if cfg.admin_token is not None and not is_open and not _signed_in(request, cfg, sessions):
            if path.startswith(("/captures/", "/openapi.json", "/_swagger/")) or path.endswith((".png", ".svg")):
                response: Response = Response("login required", status_code=401)
            else:
                response = RedirectResponse("/login", status_code=303)
        else:
            response = await call_next(request)
        # The server's own time, for the browser's network panel and bench/console.py.
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("now", cfg.clock())
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return page(
            request,
            "error.html",
            exc.status_code,
            status=exc.status_code,
            message=str(exc.detail),
            title=str(exc.status_code),
        )

    @app.exception_handler(PageError)
    async def page_error(request: Request, exc: PageError) -> Response:
        return page(request, "error.html", exc.status, status=exc.status, message=exc.message, title=str(exc.status))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        where = ", ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in exc.errors())
        return page(request, "error.html", 422, status=422, message=f"bad request ({where})", title="422")

    def known_line(name: str) -> LineInfo:
        line = cfg.line(name)
        if line is None:
            raise PageError(404, f"no line named {name!r}; lines: {', '.join(x.name for x in cfg.lines) or 'none'}")
        return line

    def read(source: str, reader: Any, call: Callable[[Any], Any], timeout: float | None = None) -> Any:
        if reader is None:
            return Unavailable(source, "not configured")
        return fetch(source, lambda: call(reader), timeout or cfg.timeout_s)

    # ------------------------------------------------------------------------------------------------ login

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request) -> Response:
        if cfg.admin_token is None:
            return RedirectResponse("/", status_code=303)
        return page(request, "login.html", error=None, signing_in=True, title="Sign in")

    @app.post("/login", include_in_schema=False)
    def login(request: Request, token: Annotated[str, Form(max_length=512)]) -> Response:
        if cfg.admin_token is None:
            return RedirectResponse("/", status_code=303)
        client = request.client.host if request.client else "unknown"
        wait = limiter.retry_after(client)
        if wait is not None:
            response = page(request, "login.html", 429, error=f"Too many failed sign-ins; try again in {wait:.0f} s.",
                            signing_in=True, title="Sign in")  # fmt: skip
            response.headers["Retry-After"] = str(max(1, round(wait)))
            return response
        if not hmac.compare_digest(token.strip().encode(), cfg.admin_token.encode()):
            limiter.failed(client)
            return page(
                request,
                "login.html",
                401,
                error="That is not the console's admin token.",
                signing_in=True,
                title="Sign in",
            )
        limiter.succeeded(client)
        response = RedirectResponse("/", status_code=303)
        # A random value per login (logout revokes it); Secure when the console is served over TLS, so the browser
        # never sends it over plain HTTP.
        secure = request.url.scheme == "https"
        response.set_cookie(SESSION_COOKIE, sessions.open(), httponly=True, samesite="strict", secure=secure)
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        sessions.revoke(request.cookies.get(SESSION_COOKIE, ""))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, secure=request.url.scheme == "https", httponly=True, samesite="strict")
        return response

    # ------------------------------------------------------------------------------------------------ pages

    @app.get("/", response_class=HTMLResponse, summary="Lines overview")
    def overview(request: Request) -> Response:
        now = cfg.clock()
        names = [x.name for x in cfg.lines]
        counts = read("ingest database", cfg.ingest, lambda r: r.line_counts(names, now - dt.timedelta(hours=24)))
        stations = read("ingest database", cfg.ingest, lambda r: r.stations())
        progress = read("Label Studio", cfg.labelstudio, lambda r: r.progress())
        rows = []
        for line in cfg.lines:
            history = read("model remote", cfg.models, lambda r, n=line.name: r.history(n))
            datasets = read("git", cfg.datasets, lambda r, n=line.name: r.versions(n))
            prod = production(history) if history else None
            line_stations = [s for s in stations if s.line == line.name] if isinstance(stations, list) else []
            beats = [s.heartbeat for s in line_stations if s.heartbeat is not None]
            rows.append(
                {
                    "line": line,
                    "progress": progress.get(line.name) if isinstance(progress, dict) else progress,
                    "dataset": datasets if isinstance(datasets, Unavailable) else (datasets[0] if datasets else None),
                    "history": history,
                    "production": prod,
                    "metrics": _key_metrics(prod, line.kind),
                    "stations": len(line_stations),
                    "running_prod": sum(
                        1 for b in beats if prod is not None and b.model_version == int(prod["version"])
                    ),
                    "live_ng_rate": _weighted_ng_rate(beats),
                    "counts": counts.get(line.name) if isinstance(counts, dict) else counts,
                }
            )
        return page(
            request,
            "overview.html",
            rows=rows,
            counts=counts,
            stations=stations,
            progress=progress,
            title="Lines",
        )

    @app.get("/lines/{line}", response_class=HTMLResponse, summary="Line detail")
    def line_detail(request: Request, line: str) -> Response:
        info = known_line(line)
        history = read("model remote", cfg.models, lambda r: r.history(line))
        datasets = read("git", cfg.datasets, lambda r: r.versions(line))
        progress = read("Label Studio", cfg.labelstudio, lambda r: r.progress())
        ng = read("ingest database", cfg.ingest, lambda r: r.recent_captures(line=line, ng=True, limit=12))
        other = read("ingest database", cfg.ingest, lambda r: r.recent_captures(line=line, ng=False, limit=12))
        prod = production(history) if history else None
        versions = list(reversed(history.get("versions", []))) if history else []
        plots_dir = _workspace_plots(cfg, line)
        return page(
            request,
            "line.html",
            line=info,
            history=history,
            versions=versions,
            production=prod,
            metrics=_key_metrics(prod, info.kind),
            metric_names=KEY_METRICS.get(info.kind, ()),
            datasets=datasets,
            progress=progress.get(line) if isinstance(progress, dict) else progress,
            ng=ng,
            other=other,
            workspace_plots=[p for p in WORKSPACE_PLOTS if plots_dir and (plots_dir / p).is_file()],
            has_pr_curve=bool(_workspace_pr_curve(cfg, line)),
            workspace_is_production=_workspace_is_production(cfg, line, prod),
            has_confusion=bool(prod and (prod.get("metrics") or {}).get("confusion_matrix") and prod.get("classes")),
            title=info.name,
        )

    @app.get("/lines/{line}/trend.svg", summary="Metric trend over published versions (SVG)")
    def trend(line: str) -> Response:
        info = known_line(line)
        history = read("model remote", cfg.models, lambda r: r.history(line))
        if isinstance(history, Unavailable):
            raise PageError(503, f"model remote unavailable: {history.reason}")
        versions = [v for v in history.get("versions", []) if v.get("complete")]
        prod = production(history)
        prod_version = int(prod["version"]) if prod else None
        # Drawing takes ~0.1 s; the figure changes only when a version is published or production moves.
        key = ("trend", line, prod_version, tuple((v["version"], v.get("published_at")) for v in versions))
        svg = figure_cache.get(
            key, lambda: plots.trend_svg(versions, KEY_METRICS.get(info.kind, ("accuracy",))[:3], prod_version, line)
        )
        return Response(svg, media_type="image/svg+xml")

    @app.get("/lines/{line}/confusion.png", summary="Confusion matrix of the production model (PNG)")
    def confusion(line: str) -> Response:
        known_line(line)
        history = read("model remote", cfg.models, lambda r: r.history(line))
        prod = production(history) if history else None
        matrix = ((prod or {}).get("metrics") or {}).get("confusion_matrix")
        if not prod or not matrix or not prod.get("classes"):
            raise PageError(404, f"line {line!r}: production has no confusion matrix")
        key = ("confusion", line, prod["version"], prod.get("published_at"))
        png = figure_cache.get(
            key, lambda: plots.confusion_png(matrix, prod["classes"], f"{line} v{prod['version']} (test split)")
        )
        return Response(png, media_type="image/png")

    @app.get("/lines/{line}/plots/{name}", summary="A figure of the workspace's latest `crux evaluate`")
    def workspace_plot(line: str, name: str) -> Response:
        known_line(line)
        plots_dir = _workspace_plots(cfg, line)
        if name not in WORKSPACE_PLOTS or plots_dir is None or not (plots_dir / name).is_file():
            raise PageError(404, f"no plot {name!r} for line {line!r}")
        return Response((plots_dir / name).read_bytes(), media_type="image/png")

    @app.get("/lines/{line}/pr.svg", summary="PR curve of the workspace's latest `crux evaluate` (detection, SVG)")
    def pr_curve(line: str) -> Response:
        known_line(line)
        rows = _workspace_pr_curve(cfg, line)
        if not rows:
            raise PageError(404, f"no PR curve for line {line!r} in this workspace")
        return Response(plots.pr_curve_svg(rows, f"{line}: latest evaluation, IoU 0.5"), media_type="image/svg+xml")

    @app.get("/lines/{line}/datasets/{commit}", response_class=HTMLResponse, summary="One dataset version's diff")
    def dataset_diff(request: Request, line: str, commit: str) -> Response:
        info = known_line(line)
        if not COMMIT.match(commit):
            raise PageError(400, "a dataset version is a git commit (7-40 hex digits)")
        versions = read("git", cfg.datasets, lambda r: r.versions(line))
        if isinstance(versions, Unavailable):
            raise PageError(503, f"dataset history unavailable: {versions.reason}")
        version = next((v for v in versions if v.commit.startswith(commit)), None)
        if version is None:
            raise PageError(404, f"{commit} is not a dataset version of line {line!r}")
        markdown = read("dvc", cfg.datasets, lambda r: r.diff_markdown(line, version.commit), cfg.diff_timeout_s)
        html = _markdown_html(markdown) if isinstance(markdown, str) else None
        return page(request, "dataset.html", line=info, version=version, diff=markdown, diff_html=html, title=line)

    @app.get("/stations", response_class=HTMLResponse, summary="Stations")
    def stations_page(request: Request) -> Response:
        stations = read("ingest database", cfg.ingest, lambda r: r.stations())
        rows = _station_rows(cfg, stations, read) if isinstance(stations, list) else []
        return page(request, "stations.html", stations=stations, rows=rows, title="Stations")

    @app.get("/stations/{name}", response_class=HTMLResponse, summary="One station")
    def station_page(request: Request, name: str) -> Response:
        stations = read("ingest database", cfg.ingest, lambda r: r.stations())
        if isinstance(stations, Unavailable):
            raise PageError(503, f"ingest database unavailable: {stations.reason}")
        rows = _station_rows(cfg, [s for s in stations if s.name == name], read)
        if not rows:
            raise PageError(404, f"no station named {name!r}")
        captures = read("ingest database", cfg.ingest, lambda r: r.recent_captures(station=name, limit=24))
        return page(request, "station.html", row=rows[0], captures=captures, title=name)

    @app.get("/captures/{capture_id}/overlay.png", summary="A capture with its prediction drawn over it")
    def capture_overlay(capture_id: int, size: Annotated[int, Query(ge=32, le=2048)] = 320) -> Response:
        if not 0 <= capture_id <= DB_INT_MAX:  # no such row can exist; the driver would overflow (read as a 503)
            raise PageError(404, f"no capture {capture_id}")
        if cfg.ingest is None:
            raise PageError(503, "no ingest database configured")
        record = fetch("ingest database", lambda: cfg.ingest.capture(capture_id), cfg.timeout_s)  # type: ignore[union-attr]
        if isinstance(record, Unavailable):
            raise PageError(503, f"ingest database unavailable: {record.reason}")
        if record is None:
            raise PageError(404, f"no capture {capture_id}")
        data = fetch("image store", lambda: cfg.ingest.image(record.image_key), cfg.timeout_s)  # type: ignore[union-attr]
        if isinstance(data, Unavailable):
            raise PageError(503, f"image store unavailable: {data.reason}")
        png = plots.overlay_png(data, record.boxes, max_side=size)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    return app


# ----------------------------------------------------------------------------------------------------------------
# View helpers (pure)


def _signed_in(request: Request, cfg: ConsoleConfig, sessions: Sessions) -> bool:
    assert cfg.admin_token is not None
    if sessions.valid(request.cookies.get(SESSION_COOKIE, "")):
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), cfg.admin_token.encode())


def _workspace_plots(cfg: ConsoleConfig, line: str) -> Path | None:
    # `line` is a configured line name (checked by the caller), never a request's free text.
    return None if cfg.workspace is None else cfg.workspace / "metrics" / line / "plots"


def _workspace_pr_curve(cfg: ConsoleConfig, line: str) -> list[dict[str, Any]]:
    import json

    plots_dir = _workspace_plots(cfg, line)
    path = plots_dir / "pr_curve.json" if plots_dir else None
    try:
        rows = json.loads(path.read_text(encoding="utf-8")) if path and path.is_file() else []
    except (OSError, ValueError):
        return []
    return rows if isinstance(rows, list) and all(isinstance(r, dict) and "recall" in r for r in rows) else []


def _workspace_is_production(cfg: ConsoleConfig, line: str, prod: dict[str, Any] | None) -> bool:
    """Whether the workspace's latest evaluation measured the production model (same test metrics)."""
    import json

    plots_dir = _workspace_plots(cfg, line)
    if prod is None or plots_dir is None or not (plots_dir.parent / "metrics.json").is_file():
        return False
    try:
        metrics = json.loads((plots_dir.parent / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    ours = prod.get("metrics") or {}
    keys = KEY_METRICS.get(str(metrics.get("kind")), ("accuracy",))
    from crux.ship.gate import metric_value

    return all(metric_value(metrics, k) == metric_value(ours, k) for k in keys)


def _key_metrics(prod: dict[str, Any] | None, kind: str) -> list[tuple[str, float | None]]:
    from crux.ship.gate import metric_value

    if not prod:
        return []
    return [(name, metric_value(prod.get("metrics"), name)) for name in KEY_METRICS.get(kind, ())]


def _weighted_ng_rate(beats: list[Any]) -> float | None:
    frames = sum(b.frames for b in beats)
    return sum(b.ng for b in beats) / frames if frames else None


def _station_rows(cfg: ConsoleConfig, stations: list[Any], read: Callable[..., Any]) -> list[dict[str, Any]]:
    """Each station with its flags: silent (no heartbeat for N intervals, or never) and old model version."""
    now = cfg.clock()
    prod_versions: dict[str, Any] = {}
    for line in sorted({s.line for s in stations}):
        history = read("model remote", cfg.models, lambda r, n=line: r.history(n))
        prod = production(history) if history else None
        prod_versions[line] = int(prod["version"]) if prod else None
    rows = []
    for s in stations:
        beat = s.heartbeat
        interval = (beat.interval_s if beat and beat.interval_s else None) or cfg.default_heartbeat_s
        silent = beat is None or (now - beat.received_at).total_seconds() > cfg.silent_after_intervals * interval
        prod = prod_versions.get(s.line)
        old = bool(beat and beat.model_version is not None and prod is not None and beat.model_version < prod)
        rows.append({"s": s, "beat": beat, "silent": silent, "old": old, "production": prod, "revoked": s.revoked})
    return rows


def _markdown_html(text: str) -> str:
    """`crux data diff` Markdown → HTML; raw HTML in it is escaped, not rendered (task text is user input)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _ago(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    if value is None:
        return "never"
    seconds = ((now or dt.datetime.now(dt.UTC)) - value).total_seconds()
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _metric_fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
