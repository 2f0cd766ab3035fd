"""The console's pages (server-rendered Jinja2, read-only): `/` lines overview, `/lines/{line}` line detail,
`/lines/{line}/datasets/{commit}` one dataset version's diff (the stations' pages: crux.console.stations_view).

A line must be one the config knows (else 404); a dataset commit must be one of the line's versions."""

# No `from __future__ import annotations`: FastAPI evaluates the endpoint annotations.

import datetime as dt
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from crux.console import stations_view
from crux.console.deps import ConsoleDep, PageError
from crux.console.diffs import CHANGES
from crux.console.sources import COMMIT, DatasetReader, DatasetVersion, ModelReader, Unavailable, production
from crux.console.views import key_metrics, line_metrics, ng_rate_note, weighted_ng_rate
from crux.console.workspace import WORKSPACE_PLOTS, workspace_is_production, workspace_plots, workspace_pr_curve

router = APIRouter()


@router.get("/", response_class=HTMLResponse, summary="Lines overview")
def overview(request: Request, console: ConsoleDep) -> Response:
    cfg, read = console.cfg, console.read
    now = cfg.clock()
    names = [x.name for x in cfg.lines]
    counts = read("ingest database", cfg.ingest, lambda r: r.line_counts(names, now - dt.timedelta(hours=24)))
    stations = read("ingest database", cfg.ingest, lambda r: r.stations())
    progress = read("Label Studio", cfg.labelstudio, lambda r: r.progress())
    # One station-health reading for the page: the table's "on production" column and the station block below it
    # count alike (not silent, not revoked, running the production version).
    health = stations_view.health(console)
    rows = []
    for line in cfg.lines:
        history = read("model remote", cfg.models, partial(_history, line=line.name))
        datasets = read("git", cfg.datasets, partial(_versions, line=line.name))
        prod = production(history) if history else None
        line_stations = [s for s in stations if s.line == line.name] if isinstance(stations, list) else []
        beats = [s.heartbeat for s in line_stations if s.heartbeat is not None]
        line_health = health.get(line.name) if isinstance(health, dict) else None
        rows.append(
            {
                "line": line,
                "progress": progress.get(line.name) if isinstance(progress, dict) else progress,
                "dataset": datasets if isinstance(datasets, Unavailable) else (datasets[0] if datasets else None),
                "history": history,
                "production": prod,
                "metrics": key_metrics(prod, line.kind, line.ok_class),
                "ng_note": ng_rate_note(line.kind, line.ok_class),
                "stations": len(line_health.active) if line_health else 0,
                "running_prod": line_health.on_production if line_health else 0,
                "live_ng_rate": weighted_ng_rate(beats),
                "counts": counts.get(line.name) if isinstance(counts, dict) else counts,
            }
        )
    return console.page(
        request,
        "overview.html",
        rows=rows,
        counts=counts,
        stations=stations,
        health=health,
        progress=progress,
        title="Lines",
    )


@router.get("/lines/{line}", response_class=HTMLResponse, summary="Line detail")
def line_detail(request: Request, console: ConsoleDep, line: str) -> Response:
    cfg, read = console.cfg, console.read
    info = console.known_line(line)
    history = read("model remote", cfg.models, lambda r: r.history(line))
    datasets = read("git", cfg.datasets, lambda r: r.versions(line))
    progress = read("Label Studio", cfg.labelstudio, lambda r: r.progress())
    ng = read("ingest database", cfg.ingest, lambda r: r.recent_captures(line=line, ng=True, limit=12))
    other = read("ingest database", cfg.ingest, lambda r: r.recent_captures(line=line, ng=False, limit=12))
    prod = production(history) if history else None
    versions = list(reversed(history.get("versions", []))) if history else []
    plots_dir = workspace_plots(cfg.workspace, line)
    # A model's lineage names its dataset by the DVC md5 of its data/LINE.dvc: the version that recorded it, to link to.
    by_md5 = {d.md5: d for d in datasets if d.md5} if isinstance(datasets, list) else {}
    return console.page(
        request,
        "line.html",
        line=info,
        history=history,
        versions=versions,
        production=prod,
        metrics=key_metrics(prod, info.kind, info.ok_class),
        metric_names=line_metrics(info.kind, info.ok_class),
        dataset_by_md5=by_md5,
        datasets=datasets,
        progress=progress.get(line) if isinstance(progress, dict) else progress,
        ng=ng,
        other=other,
        workspace_plots=[p for p in WORKSPACE_PLOTS if plots_dir and (plots_dir / p).is_file()],
        has_pr_curve=bool(workspace_pr_curve(cfg.workspace, line)),
        workspace_is_production=workspace_is_production(cfg.workspace, line, prod),
        has_confusion=bool(prod and (prod.get("metrics") or {}).get("confusion_matrix") and prod.get("classes")),
        title=info.name,
    )


@router.get("/lines/{line}/datasets/{commit}", response_class=HTMLResponse, summary="One dataset version's diff")
def dataset_diff(
    request: Request,
    console: ConsoleDep,
    line: str,
    commit: str,
    change: Annotated[Literal["added", "removed", "relabelled"] | None, Query()] = None,
    page: Annotated[int, Query(ge=1, le=10_000_000)] = 1,
) -> Response:
    cfg, read = console.cfg, console.read
    info = console.known_line(line)
    if not COMMIT.match(commit):
        raise PageError(400, "a dataset version is a git commit (7-40 hex digits)")
    versions = read("git", cfg.datasets, lambda r: r.versions(line))
    if isinstance(versions, Unavailable):
        raise PageError(503, f"dataset history unavailable: {versions.reason}")
    # Not `version`: that name is the template global with the console's own version (the footer).
    dataset = next((v for v in versions if v.commit.startswith(commit)), None)
    if dataset is None:
        raise PageError(404, f"{commit} is not a dataset version of line {line!r}")
    # Computed once per commit in the background (seconds at 100k items), then paged from the cache.
    future = console.diffs.ensure(line, dataset.commit)
    try:
        future.result(timeout=cfg.diff_wait_s)
    except TimeoutError:
        pass
    except Exception as exc:
        raise PageError(503, f"dataset diff of {dataset.short} failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
    shown: str = change or "added"
    size = cfg.diff_page_size
    first = console.diffs.page(line, dataset.commit, shown, page, size)
    if first is not None and change is None:
        # Without a choice, the first kind of change that has items.
        shown = next((c for c in CHANGES if first.summary["counts"].get(c)), "added")
        size = cfg.diff_page_size
    first = console.diffs.page(line, dataset.commit, shown, page, size)
    progress = read("Label Studio", cfg.labelstudio, lambda r: r.progress())
    return console.page(
        request,
        "dataset.html",
        line=info,
        dataset=dataset,
        diff=first,
        changes=CHANGES,
        progress=progress.get(line) if isinstance(progress, dict) else progress,
        title=f"{line} · {dataset.short}",
        # While the diff is computed the page reloads itself until it is there.
        **({} if first is not None else {"refresh": 2}),
    )


def _history(reader: ModelReader, line: str) -> dict[str, Any]:
    return reader.history(line)


def _versions(reader: DatasetReader, line: str) -> list[DatasetVersion]:
    return reader.versions(line)
