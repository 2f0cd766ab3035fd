"""The console's figures: a line's metric trend and production confusion matrix (drawn, cached per release), the
workspace's latest `crux evaluate` plots and PR curve, and a capture with its prediction drawn over it.

Nothing a request names is used as a path: a line must be one the config knows, a workspace plot one of a fixed
list of file names, a capture is looked up by its integer id."""

# No `from __future__ import annotations`: FastAPI evaluates the endpoint annotations.

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from crux.collect.schemas import DB_INT_MAX
from crux.console import plots
from crux.console.deps import ConsoleDep, PageError
from crux.console.sources import Unavailable, fetch, production
from crux.console.views import KEY_METRICS
from crux.console.workspace import WORKSPACE_PLOTS, workspace_plots, workspace_pr_curve

router = APIRouter()


@router.get("/lines/{line}/trend.svg", summary="Metric trend over published versions (SVG)")
def trend(console: ConsoleDep, line: str) -> Response:
    info = console.known_line(line)
    history = console.read("model remote", console.cfg.models, lambda r: r.history(line))
    if isinstance(history, Unavailable):
        raise PageError(503, f"model remote unavailable: {history.reason}")
    versions = [v for v in history.get("versions", []) if v.get("complete")]
    prod = production(history)
    prod_version = int(prod["version"]) if prod else None
    # Drawing takes ~0.1 s; the figure changes only when a version is published or production moves.
    key = ("trend", line, prod_version, tuple((v["version"], v.get("published_at")) for v in versions))
    svg = console.figures.get(
        key, lambda: plots.trend_svg(versions, KEY_METRICS.get(info.kind, ("accuracy",))[:3], prod_version, line)
    )
    return Response(svg, media_type="image/svg+xml")


@router.get("/lines/{line}/confusion.png", summary="Confusion matrix of the production model (PNG)")
def confusion(console: ConsoleDep, line: str) -> Response:
    console.known_line(line)
    history = console.read("model remote", console.cfg.models, lambda r: r.history(line))
    prod = production(history) if history else None
    matrix = ((prod or {}).get("metrics") or {}).get("confusion_matrix")
    if not prod or not matrix or not prod.get("classes"):
        raise PageError(404, f"line {line!r}: production has no confusion matrix")
    key = ("confusion", line, prod["version"], prod.get("published_at"))
    png = console.figures.get(
        key, lambda: plots.confusion_png(matrix, prod["classes"], f"{line} v{prod['version']} (test split)")
    )
    return Response(png, media_type="image/png")


@router.get("/lines/{line}/plots/{name}", summary="A figure of the workspace's latest `crux evaluate`")
def workspace_plot(console: ConsoleDep, line: str, name: str) -> Response:
    console.known_line(line)
    plots_dir = workspace_plots(console.cfg.workspace, line)
    if name not in WORKSPACE_PLOTS or plots_dir is None or not (plots_dir / name).is_file():
        raise PageError(404, f"no plot {name!r} for line {line!r}")
    return Response((plots_dir / name).read_bytes(), media_type="image/png")


@router.get("/lines/{line}/pr.svg", summary="PR curve of the workspace's latest `crux evaluate` (detection, SVG)")
def pr_curve(console: ConsoleDep, line: str) -> Response:
    console.known_line(line)
    rows = workspace_pr_curve(console.cfg.workspace, line)
    if not rows:
        raise PageError(404, f"no PR curve for line {line!r} in this workspace")
    return Response(plots.pr_curve_svg(rows, f"{line}: latest evaluation, IoU 0.5"), media_type="image/svg+xml")


@router.get("/captures/{capture_id}/overlay.png", summary="A capture with its prediction drawn over it")
def capture_overlay(
    console: ConsoleDep, capture_id: int, size: Annotated[int, Query(ge=32, le=2048)] = 320
) -> Response:
    if not 0 <= capture_id <= DB_INT_MAX:  # no such row can exist; the driver would overflow (read as a 503)
        raise PageError(404, f"no capture {capture_id}")
    ingest, timeout_s = console.cfg.ingest, console.cfg.timeout_s
    if ingest is None:
        raise PageError(503, "no ingest database configured")
    record = fetch("ingest database", lambda: ingest.capture(capture_id), timeout_s)
    if isinstance(record, Unavailable):
        raise PageError(503, f"ingest database unavailable: {record.reason}")
    if record is None:
        raise PageError(404, f"no capture {capture_id}")
    data = fetch("image store", lambda: ingest.image(record.image_key), timeout_s)
    if isinstance(data, Unavailable):
        raise PageError(503, f"image store unavailable: {data.reason}")
    from crux.console.captures_view import overlay_caption

    png = plots.overlay_png(data, record.boxes, max_side=size, caption=overlay_caption(record))
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
