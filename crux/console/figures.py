"""The console's figures: a line's metric trend and production confusion matrix (drawn at start and once per
release, then cached), the workspace's latest `crux evaluate` plots and PR curve, thumbnails of the images a dataset
version changed, and a capture with its prediction drawn over it.

Nothing a request names is used as a path: a line must be one the config knows, a workspace plot one of a fixed
list of file names, a capture is looked up by its integer id."""

# No `from __future__ import annotations`: FastAPI evaluates the endpoint annotations.

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from crux.collect.schemas import DB_INT_MAX
from crux.console import plots
from crux.console.deps import Console, ConsoleDep, PageError
from crux.console.sources import COMMIT, Unavailable, fetch, production
from crux.console.views import line_metrics
from crux.console.workspace import WORKSPACE_PLOTS, workspace_plots, workspace_pr_curve

router = APIRouter()
SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
# Thumbnails on the dataset diff page, longest side in pixels.
THUMB_SIDE = 96


def trend_figure(console: Console, line: str, history: dict[str, Any]) -> bytes:
    """The trend figure of a line's history, drawn once per set of published versions (and kept)."""
    info = console.known_line(line)
    versions = [v for v in history.get("versions", []) if v.get("complete")]
    prod = production(history)
    prod_version = int(prod["version"]) if prod else None
    # Drawing takes ~0.1 s; the figure changes only when a version is published or production moves.
    key = ("trend", line, prod_version, tuple((v["version"], v.get("published_at")) for v in versions))
    metrics = line_metrics(info.kind, info.ok_class)[:3] or ("accuracy",)
    return console.figures.get(key, lambda: plots.trend_svg(versions, metrics, prod_version, line))


def confusion_figure(console: Console, line: str, history: dict[str, Any]) -> bytes | None:
    """The production model's confusion matrix (None: nothing in production, or no matrix in its metrics)."""
    prod = production(history) if history else None
    matrix = ((prod or {}).get("metrics") or {}).get("confusion_matrix")
    if not prod or not matrix or not prod.get("classes"):
        return None
    key = ("confusion", line, prod["version"], prod.get("published_at"))
    return console.figures.get(
        key, lambda: plots.confusion_png(matrix, prod["classes"], f"{line} v{prod['version']} (test split)")
    )


@router.get("/lines/{line}/trend.svg", summary="Metric trend over published versions (SVG)")
def trend(console: ConsoleDep, line: str) -> Response:
    console.known_line(line)
    history = console.read("model remote", console.cfg.models, lambda r: r.history(line))
    if isinstance(history, Unavailable):
        raise PageError(503, f"model remote unavailable: {history.reason}")
    return Response(trend_figure(console, line, history), media_type="image/svg+xml")


@router.get("/lines/{line}/confusion.png", summary="Confusion matrix of the production model (PNG)")
def confusion(console: ConsoleDep, line: str) -> Response:
    console.known_line(line)
    history = console.read("model remote", console.cfg.models, lambda r: r.history(line))
    png = confusion_figure(console, line, history) if history else None
    if png is None:
        raise PageError(404, f"line {line!r}: production has no confusion matrix")
    return Response(png, media_type="image/png")


@router.get(
    "/lines/{line}/datasets/{commit}/thumbs/{sha256}.png", summary="Thumbnail of an image a dataset version changed"
)
def dataset_thumb(console: ConsoleDep, line: str, commit: str, sha256: str) -> Response:
    console.known_line(line)
    if not COMMIT.match(commit) or not SHA256.match(sha256):
        raise PageError(404, "no such image")
    where = console.diffs.image_of(line, commit, sha256)
    datasets = console.cfg.datasets
    if where is None or datasets is None:
        raise PageError(404, f"no changed item {sha256[:12]} in dataset version {commit[:10]} of {line!r}")
    rev, path = where
    data = fetch("dvc", lambda: datasets.image(line, rev, path), console.cfg.timeout_s)
    if isinstance(data, Unavailable):
        raise PageError(503, f"dataset image unavailable: {data.reason}")
    png = plots.thumbnail_png(data, THUMB_SIDE)
    # An image of a commit never changes.
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400, immutable"})


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
