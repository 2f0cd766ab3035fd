"""Station health where the plant looks: `/stations` (every station with its flags and drift status),
`/stations/{name}` (one station: flags, drift check and alarms, a 24 h history of frames/s, NG rate and latency drawn
as inline SVG, recent captures), and `station_health(line)` for the overview's and the line page's includes.

Flags: *never seen* (registered, no heartbeat yet), *silent* (no heartbeat for `silent_after_intervals` of its
interval), *old version* (runs a model older than the line's production), *revoked*. Drift: the latest check of
crux.monitor.watch (flows/monitor.py) and any open alarm, from the ingest database."""

# No `from __future__ import annotations`: FastAPI evaluates the endpoint annotations.

import datetime as dt
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup

from crux.console.deps import Console, ConsoleDep, PageError
from crux.console.sources import Unavailable, production

router = APIRouter()

HISTORY_HOURS = 24


@dataclass(frozen=True)
class StationStatus:
    name: str
    line: str
    revoked: bool
    beat: Any | None  # crux.collect.heartbeats.Heartbeat
    never_seen: bool
    silent: bool
    old: bool
    production: int | None
    check: Any | None = None  # crux.collect.heartbeats.DriftCheck
    alarm: Any | None = None  # crux.collect.heartbeats.DriftAlarm, open

    @property
    def on_production(self) -> bool:
        return bool(self.beat and self.production is not None and self.beat.model_version == self.production)

    @property
    def flags(self) -> list[str]:
        out = ["revoked"] if self.revoked else []
        if self.never_seen:
            out.append("never seen")
        elif self.silent:
            out.append("silent")
        if self.old:
            out.append("older than production")
        if self.alarm is not None:
            out.append("drift alarm")
        return out


@dataclass(frozen=True)
class LineHealth:
    line: str
    production: int | None
    stations: list[StationStatus] = field(default_factory=list)
    check: Any | None = None  # the line's own drift check
    alarm: Any | None = None  # the line's own open alarm

    def count(self, flag: str) -> int:
        return sum(flag in s.flags for s in self.stations if not s.revoked)

    @property
    def active(self) -> list[StationStatus]:
        return [s for s in self.stations if not s.revoked]

    @property
    def on_production(self) -> int:
        return sum(s.on_production and not s.silent for s in self.active)

    @property
    def alarms(self) -> list[Any]:
        return ([self.alarm] if self.alarm else []) + [s.alarm for s in self.stations if s.alarm is not None]

    @property
    def healthy(self) -> bool:
        return not self.alarms and not any(s.flags for s in self.active)


def _ingest_state(reader: Any, line: str | None) -> dict[str, Any]:
    from crux.collect.heartbeats import alarms, latest_checks

    stations = [s for s in reader.stations() if line is None or s.line == line]
    return {
        "stations": stations,
        "alarms": alarms(reader.engine, line=line),
        "checks": latest_checks(reader.engine, line),
    }


def health(console: Console, line: str | None = None) -> dict[str, LineHealth] | Unavailable:
    """Every configured line's (or one line's) station health, or why the ingest database could not say."""
    cfg = console.cfg
    state = console.read("ingest database", cfg.ingest, partial(_ingest_state, line=line))
    if isinstance(state, Unavailable):
        return state
    now = cfg.clock()
    names = [line] if line is not None else [x.name for x in cfg.lines]
    names += sorted({s.line for s in state["stations"]} - set(names))  # stations of lines no longer configured
    checks = {(c.line, c.station): c for c in state["checks"]}
    open_alarms: dict[tuple[str, str | None], Any] = {}
    for a in state["alarms"]:
        open_alarms.setdefault((a.line, a.station), a)  # newest first
    out = {}
    for name in names:
        history = console.read("model remote", cfg.models, partial(_history, line=name))
        prod = production(history) if history and not isinstance(history, Unavailable) else None
        prod_version = int(prod["version"]) if prod else None
        rows = []
        for s in state["stations"]:
            if s.line != name:
                continue
            beat = s.heartbeat
            interval = (beat.interval_s if beat and beat.interval_s else None) or cfg.default_heartbeat_s
            silent = beat is None or (now - beat.received_at).total_seconds() > cfg.silent_after_intervals * interval
            running = beat.model_version if beat else None
            old = running is not None and prod_version is not None and running < prod_version
            rows.append(
                StationStatus(
                    s.name,
                    s.line,
                    s.revoked,
                    beat,
                    beat is None,
                    silent,
                    old,
                    prod_version,
                    checks.get((name, s.name)),
                    open_alarms.get((name, s.name)),
                )
            )
        out[name] = LineHealth(name, prod_version, rows, checks.get((name, None)), open_alarms.get((name, None)))
    return out


def _history(reader: Any, line: str) -> Any:
    return reader.history(line)


def install(console: Console) -> None:
    """`station_health(line=None)` for the templates (the overview's and the line page's station blocks)."""
    console.templates.env.globals["station_health"] = partial(health, console)


@router.get("/stations", response_class=HTMLResponse, summary="Stations")
def stations_page(request: Request, console: ConsoleDep) -> Response:
    lines = health(console)
    rows = [] if isinstance(lines, Unavailable) else [s for h in lines.values() for s in h.stations]
    return console.page(request, "stations.html", stations=lines, rows=rows, title="Stations")


@router.get("/stations/{name}", response_class=HTMLResponse, summary="One station")
def station_page(request: Request, console: ConsoleDep, name: str) -> Response:
    from crux.collect.heartbeats import alarms, station_history

    lines = health(console)
    if isinstance(lines, Unavailable):
        raise PageError(503, f"ingest database unavailable: {lines.reason}")
    row = next((s for h in lines.values() for s in h.stations if s.name == name), None)
    if row is None:
        raise PageError(404, f"no station named {name!r}")
    now = console.cfg.clock()
    since = now - dt.timedelta(hours=HISTORY_HOURS)
    ingest = console.cfg.ingest
    points = console.read("ingest database", ingest, lambda r: station_history(r.engine, name, since))
    past = console.read("ingest database", ingest, lambda r: alarms(r.engine, line=row.line, open_only=False))
    captures = console.read("ingest database", ingest, lambda r: r.recent_captures(station=name, limit=24))
    chart = None if isinstance(points, Unavailable) else Markup(history_svg(points, since, now))
    return console.page(
        request,
        "station.html",
        row=row,
        line_health=lines.get(row.line),
        points=points,
        chart=chart,
        alarms=past if isinstance(past, Unavailable) else [a for a in past if a.station in (None, name)][:10],
        captures=captures,
        history_hours=HISTORY_HOURS,
        title=name,
    )


# ----------------------------------------------------------------------------------------------------------------
# The history chart: three panels sharing a time axis, drawn as SVG text (no plotting library, no request of its own)


def _fps(v: float) -> str:
    return f"{v:.2f}"


def _rate(v: float) -> str:
    return f"{100 * v:.1f}%"


def _ms(v: float) -> str:
    return f"{v:.1f} ms"


PANELS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("frames/s", "fps", _fps),
    ("NG rate", "ng_rate", _rate),
    ("median latency", "latency_p50_ms", _ms),
)
# Each panel's title sits above it (not beside its axis labels), so long titles never overlap the values.
WIDTH, PANEL_H, LEFT, RIGHT, TOP, GAP = 720, 70, 70, 70, 18, 30


def history_svg(points: Sequence[Any], start: dt.datetime, end: dt.datetime, max_points: int = 360) -> str:
    """frames/s, NG rate and median latency of `points` (crux.collect.heartbeats.HistoryPoint, oldest first) between
    `start` and `end`. Every axis starts at 0 (no zoomed axis makes a small change look like a line stop); a gap of
    more than 3 intervals between heartbeats breaks the line (the station was silent); more than `max_points`
    heartbeats are averaged in time buckets."""
    from html import escape

    span = max((end - start).total_seconds(), 1.0)
    plot_w = WIDTH - LEFT - RIGHT
    height = TOP + len(PANELS) * (PANEL_H + GAP) + 4
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="history" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="station history, last {span / 3600:.0f} h">',
        "<style>text{font:11px sans-serif;fill:#5b6475}.v{fill:#1d2330;font-weight:600}"
        "polyline{fill:none;stroke:#2f6fde;stroke-width:1.5}line{stroke:#d9dee7}</style>",
    ]
    buckets = _buckets(points, start, span, max_points)
    # Bucket means sit a bucket apart: only a silence longer than two buckets (or three intervals) breaks the line.
    gap = max(_gap_s(points), 2 * span / max_points if len(buckets) < len(points) else 0.0)
    for i, (label, attr, fmt) in enumerate(PANELS):
        y0 = TOP + i * (PANEL_H + GAP)
        base = y0 + PANEL_H
        values = [(t, getattr(p, attr)) for t, p in buckets if getattr(p, attr) is not None]
        top = max((v for _, v in values), default=0.0) or 1.0
        parts.append(f'<text class="v" x="{LEFT}" y="{y0 - 6}">{escape(label)}</text>')
        parts.append(f'<line x1="{LEFT}" y1="{base}" x2="{LEFT + plot_w}" y2="{base}"/>')
        parts.append(f'<line x1="{LEFT}" y1="{y0}" x2="{LEFT}" y2="{base}"/>')
        parts.append(f'<text x="{LEFT - 4}" y="{y0 + 10}" text-anchor="end">{escape(fmt(top))}</text>')
        parts.append(f'<text x="{LEFT - 4}" y="{base}" text-anchor="end">{escape(fmt(0.0))}</text>')
        if not values:
            parts.append(f'<text x="{LEFT + 8}" y="{y0 + PANEL_H / 2}">no heartbeat in this period</text>')
            continue
        parts.append(f'<text class="v" x="{LEFT + plot_w + 6}" y="{y0 + 12}">{escape(fmt(values[-1][1]))}</text>')
        for run in _runs(values, gap):
            xy = " ".join(f"{LEFT + plot_w * t / span:.1f},{base - (PANEL_H - 4) * v / top:.1f}" for t, v in run)
            if len(run) == 1:
                x, y = xy.split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2" fill="#2f6fde"/>')
            else:
                parts.append(f'<polyline points="{xy}"/>')
    axis_y = height - 4
    parts.append(f'<text x="{LEFT}" y="{axis_y}">{start.strftime("%Y-%m-%d %H:%M")} UTC</text>')
    parts.append(
        f'<text x="{LEFT + plot_w}" y="{axis_y}" text-anchor="end">{end.strftime("%Y-%m-%d %H:%M")} UTC</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class _Mean:
    fps: float | None
    ng_rate: float | None
    latency_p50_ms: float | None


def _buckets(points: Sequence[Any], start: dt.datetime, span: float, n: int) -> list[tuple[float, Any]]:
    """(seconds from start, point) pairs; above `n` points, the mean of each of `n` equal time buckets."""
    timed = [((p.received_at - start).total_seconds(), p) for p in points]
    timed = [(t, p) for t, p in timed if 0 <= t <= span]
    if len(timed) <= n:
        return timed
    groups: dict[int, list[tuple[float, Any]]] = {}
    for t, p in timed:
        groups.setdefault(min(int(t / span * n), n - 1), []).append((t, p))

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    out: list[tuple[float, Any]] = []
    for _, g in sorted(groups.items()):
        means = (mean([getattr(p, a) for _, p in g]) for a in ("fps", "ng_rate", "latency_p50_ms"))
        out.append((sum(t for t, _ in g) / len(g), _Mean(*means)))
    return out


def _gap_s(points: Sequence[Any]) -> float:
    """Three of the station's intervals (the median spacing of its heartbeats): more is a silence."""
    times = sorted(p.received_at for p in points)
    steps = sorted((b - a).total_seconds() for a, b in itertools.pairwise(times))
    return 3 * steps[len(steps) // 2] if steps else float("inf")


def _runs(values: list[tuple[float, float]], gap: float) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = []
    for t, v in values:
        if runs and t - runs[-1][-1][0] <= gap:
            runs[-1].append((t, v))
        else:
            runs.append([(t, v)])
    return runs
