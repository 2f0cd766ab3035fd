"""Capture cards and capture lists: `/captures` (filter by line, station, verdict, class and "uncertain"; newest
first, paged by capture id), `/captures/{id}/task` (the capture's Label Studio task), and what a card shows of a
capture (its class, the model's score for it, whether the prediction was uncertain).

"Uncertain" is read from the class scores the edge sent, with the edge's own rule for them: the top two classes
closer than `edge.uncertain_margin` (crux.edge.runtime.decide). A capture with one score or none (segmentation,
anomaly, detection) is never marked: the edge's rule there compares the score with the model card's threshold,
which the capture row does not carry. The database does not keep why the edge kept a frame either, so "uncertain"
cannot be an index lookup: an uncertain-only list scans at most `SCAN_LIMIT` captures per page and says where it
stopped (paging on goes further back).

Paging is by id (keyset): `before=ID` lists older captures, `after=ID` newer ones; a page stays stable while
captures arrive, and reads one index range however deep it is.
"""

# No `from __future__ import annotations`: FastAPI evaluates the endpoint annotations.

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from crux.collect.schemas import DB_INT_MAX
from crux.console.deps import Console, ConsoleDep, PageError
from crux.console.sources import Unavailable, fetch

router = APIRouter()

# The edge's default `edge.uncertain_margin` (crux.edge.runtime.EdgeConfig): the same frames are called uncertain.
UNCERTAIN_MARGIN = 0.15
PAGE_SIZE = 24
# An uncertain-only page reads at most this many captures (index order, newest first): a bounded page time.
SCAN_LIMIT = 3000
_BATCH = 500
# Empty is "any": the filter form sends every field.
NAME_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})?$"
CLASS_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9 _.+-]{0,62})?$"


@dataclass(frozen=True)
class CardInfo:
    cls: str | None  # the predicted class
    score: float | None  # the model's score for it (else its confidence, crux.collect.labeling.confidence)
    uncertain: bool


def card_info(record: Any, margin: float = UNCERTAIN_MARGIN) -> CardInfo:
    """What a capture card shows of a capture's prediction."""
    from crux.collect.labeling import confidence, predicted_class
    from crux.collect.labeling import margin as top_margin

    several = len(record.scores) >= 2
    gap = top_margin(record) if several else None
    # One score (a segmenter's or anomaly model's NG score) names no class: the arg-max of one is not a prediction.
    cls = record.prediction if (record.prediction is not None or not several) else predicted_class(record)
    return CardInfo(cls, confidence(record), gap is not None and gap < margin)


def overlay_caption(record: Any) -> str | None:
    """The class and score drawn on a capture's overlay when no box carries them (classify; an OK frame's score)."""
    if record.boxes:
        return None
    info = card_info(record)
    if info.cls is None and info.score is None:
        return None
    score = "" if info.score is None else f"{info.score:.2f}"
    return f"{info.cls} {score}".strip() if info.cls is not None else f"score {score}"


@dataclass(frozen=True)
class CaptureFilter:
    line: str | None = None
    station: str | None = None
    verdict: Literal["ng", "ok"] | None = None
    cls: str | None = None
    uncertain: bool = False

    def query(self) -> dict[str, str]:
        """The filter as URL query parameters (empty ones left out)."""
        params = {"line": self.line, "station": self.station, "verdict": self.verdict, "cls": self.cls}
        out = {k: v for k, v in params.items() if v}
        if self.uncertain:
            out["uncertain"] = "1"
        return out


@dataclass(frozen=True)
class CapturePage:
    items: tuple[Any, ...]  # CaptureRecord, newest first
    older: int | None  # `before=` for the next older page, None when there is none
    newer: int | None  # `after=` for the next newer page, None on the newest page
    scanned: int  # captures read to fill the page
    stopped_early: bool  # an uncertain-only page hit SCAN_LIMIT before filling


@dataclass(frozen=True)
class _Scores:
    """What the uncertain test reads of a row (no full record built for the rows a scan passes over)."""

    id: int
    prediction: str | None
    scores: dict[str, float]
    boxes: list[dict[str, Any]]


def _base_query(f: CaptureFilter, *columns: Any) -> Any:
    import sqlalchemy as sa

    from crux.collect.db import captures

    c = captures.c
    query = sa.select(*columns) if columns else sa.select(captures)
    if f.line is not None:
        query = query.where(c.line == f.line)
    if f.station is not None:
        query = query.where(c.station == f.station)
    if f.verdict == "ng":
        query = query.where(c.verdict == "ng")
    elif f.verdict == "ok":
        query = query.where(sa.or_(c.verdict != "ng", c.verdict.is_(None)))
    if f.cls is not None:
        query = query.where(c.prediction == f.cls)
    return query


def page_captures(
    engine: Any,
    f: CaptureFilter,
    *,
    before: int | None = None,
    after: int | None = None,
    limit: int = PAGE_SIZE,
    margin: float = UNCERTAIN_MARGIN,
    scan_limit: int = SCAN_LIMIT,
) -> CapturePage:
    """One page of captures matching `f`, newest first, older than `before` or newer than `after`."""
    from crux.collect.db import captures
    from crux.collect.records import _record

    c = captures.c
    # An uncertain-only scan reads the scores alone, then the full rows of the matches.
    base = _base_query(f, c.id, c.prediction, c.scores, c.boxes) if f.uncertain else _base_query(f)
    newest_first = after is None
    found: list[Any] = []
    scanned, cursor, exhausted = 0, (after if after is not None else before), False
    batch = limit + 1 if not f.uncertain else min(_BATCH, scan_limit)
    with engine.connect() as conn:
        while len(found) <= limit and scanned < (scan_limit if f.uncertain else limit + 1):
            query = base
            if cursor is not None:
                query = query.where(c.id < cursor if newest_first else c.id > cursor)
            query = query.order_by(c.id.desc() if newest_first else c.id.asc()).limit(batch)
            if f.uncertain:
                rows: list[Any] = [
                    _Scores(r.id, r.prediction, dict(r.scores or {}), list(r.boxes or [])) for r in conn.execute(query)
                ]
                found += [r for r in rows if card_info(r, margin).uncertain]
            else:
                rows = [_record(r) for r in conn.execute(query)]
                found += rows
            scanned += len(rows)
            if len(rows) < batch:
                exhausted = True
                break
            cursor = rows[-1].id
        if f.uncertain and found:
            ids = [r.id for r in found[: limit + 1]]
            full = {r.id: r for r in map(_record, conn.execute(_base_query(CaptureFilter()).where(c.id.in_(ids))))}
            found = [full[i] for i in ids if i in full]
    more = len(found) > limit
    found = found[:limit]
    stopped_early = f.uncertain and not exhausted and not more
    if not newest_first:
        found.reverse()
        # Newer than `after`: older ones exist (`after` itself was on a page); newer ones if this page filled up.
        newer = found[0].id if (more or stopped_early) and found else None
        older = found[-1].id if found else after
        return CapturePage(tuple(found), older, newer, scanned, stopped_early)
    older_cursor = found[-1].id if found else None
    if stopped_early:
        older_cursor = cursor  # go on scanning below where this page stopped
    older = older_cursor if (more or stopped_early) else None
    newer = found[0].id if before is not None and found else None
    return CapturePage(tuple(found), older, newer, scanned, stopped_early)


def known_station(console: Console, name: str | None) -> None:
    """A station filter must name a station the database knows (else 404, like /stations/NAME)."""
    if name is None:
        return
    stations = console.read("ingest database", console.cfg.ingest, lambda r: r.stations())
    if isinstance(stations, list) and not any(s.name == name for s in stations):
        raise PageError(404, f"no station named {name!r}")


@router.get("/captures", response_class=HTMLResponse, summary="Captures: filter and page through them")
def captures_page(
    request: Request,
    console: ConsoleDep,
    line: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    station: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    verdict: Annotated[Literal["ng", "ok", ""], Query()] = "",
    cls: Annotated[str | None, Query(pattern=CLASS_PATTERN)] = None,
    uncertain: Annotated[bool, Query()] = False,
    before: Annotated[int | None, Query(ge=0, le=DB_INT_MAX)] = None,
    after: Annotated[int | None, Query(ge=0, le=DB_INT_MAX)] = None,
) -> Response:
    line, station, cls = line or None, station or None, cls or None
    if line is not None:
        console.known_line(line)
    known_station(console, station)
    f = CaptureFilter(line, station, verdict or None, cls, uncertain)
    cfg = console.cfg
    page = console.read("ingest database", cfg.ingest, lambda r: page_captures(r.engine, f, before=before, after=after))
    stations = console.read("ingest database", cfg.ingest, lambda r: r.stations())
    station_names = [s.name for s in stations if line is None or s.line == line] if isinstance(stations, list) else []
    return console.page(
        request,
        "captures.html",
        f=f,
        page=page,
        captures=page.items if not isinstance(page, Unavailable) else page,
        # No Label Studio read here: a down server must not slow the list. Task links go through /captures/ID/task.
        progress=None,
        lines=[x.name for x in cfg.lines],
        station_names=station_names,
        classes=_classes(console, line),
        title="Captures",
    )


def _classes(console: Console, line: str | None) -> Sequence[str]:
    """The classes of the line's production model (a filter's choices); none when unknown."""
    if line is None:
        return ()
    history = console.read("model remote", console.cfg.models, lambda r: r.history(line))
    from crux.console.sources import production

    prod = production(history) if history else None
    return tuple(prod.get("classes") or ()) if prod else ()


@router.get("/captures/{capture_id}/task", summary="The capture's Label Studio task (a redirect)")
def capture_task(console: ConsoleDep, capture_id: int) -> Response:
    if not 0 <= capture_id <= DB_INT_MAX:
        raise PageError(404, f"no capture {capture_id}")
    ingest = console.cfg.ingest
    if ingest is None:
        raise PageError(503, "no ingest database configured")
    record = fetch("ingest database", lambda: ingest.capture(capture_id), console.cfg.timeout_s)
    if isinstance(record, Unavailable):
        raise PageError(503, f"ingest database unavailable: {record.reason}")
    if record is None:
        raise PageError(404, f"no capture {capture_id}")
    if record.ls_task_id is None:
        raise PageError(404, f"capture {capture_id} is not in Label Studio yet (`crux collect` sends it)")
    progress = console.read("Label Studio", console.cfg.labelstudio, lambda r: r.progress())
    if isinstance(progress, Unavailable):
        raise PageError(503, f"Label Studio unreachable: {progress.reason}")
    project = progress.get(record.ls_project or record.line)
    if project is None:
        raise PageError(404, f"Label Studio has no project for line {record.line!r}")
    return RedirectResponse(project.task_url(record.ls_task_id), status_code=303)


def install(app: FastAPI, console: Console) -> None:
    """The templates' `card_of(c)` (class, score, uncertain) for the capture-card macro."""
    del app
    console.templates.env.globals["card_of"] = card_info
