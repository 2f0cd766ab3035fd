"""The console's team aggregations (crux.console.team_data), its non-blocking team cache (crux.console.team_view),
and what a capture card and a capture list show (crux.console.captures_view), on plain values and a real SQLite
ingest database."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest

from crux.console.captures_view import CaptureFilter, card_info, overlay_caption, page_captures
from crux.console.deps import LineInfo
from crux.console.sources import Unavailable
from crux.console.team_data import (
    annotator_name,
    live_agreement,
    per_annotator_agreement,
    review_tab,
    summarize,
    throughput,
)
from crux.console.team_view import NoProject, Pending, TeamCache
from crux.data.provenance import IMPORT_IDENTITY
from crux.kinds import Label, get_kind
from crux.label.review import VIEW_TITLE

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
NAMES = {2: "ann@plant.example", 3: "bob@plant.example", 9: IMPORT_IDENTITY}


def choice(cls: str) -> list[dict[str, Any]]:
    return get_kind("classify").to_results([Label(cls)], 200, 200)


def ann(
    who: int, cls: str, hours_ago: float, *, aid: int = 0, lead: float | None = 4.0, cancelled: bool = False
) -> dict[str, Any]:
    return {
        "id": aid,
        "completed_by": who,
        "result": [] if cancelled else choice(cls),
        "was_cancelled": cancelled,
        "created_at": (NOW - dt.timedelta(hours=hours_ago)).isoformat().replace("+00:00", "Z"),
        "lead_time": lead,
    }


def task(tid: int, *annotations: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": tid,
        "data": {"original_name": f"{tid}.jpg", "width": 200, "height": 200},
        "annotations": list(annotations),
    }


def team_tasks() -> list[dict[str, Any]]:
    """Ann labels 4 tasks (one a day ago, one 10 days ago), Bob 3 of the same (disagreeing on task 2) and skips one;
    task 5 came labelled from an import."""
    return [
        task(1, ann(2, "crazing", 1, aid=1, lead=3.0), ann(3, "crazing", 2, aid=2, lead=5.0)),
        task(2, ann(2, "crazing", 30, aid=3, lead=7.0), ann(3, "patches", 3, aid=4, lead=9.0)),
        task(3, ann(2, "patches", 240, aid=5, lead=None), ann(3, "patches", 4, aid=6, lead=2.0)),
        task(4, ann(2, "patches", 5, aid=7, lead=1.0), ann(3, "", 6, aid=8, cancelled=True)),
        task(5, ann(9, "crazing", 500, aid=9, lead=None)),
        task(6),
    ]


def test_throughput_counts_windows_skips_and_lead_time() -> None:
    rows = throughput(team_tasks(), NAMES, NOW)
    a, b = rows["ann@plant.example"], rows["bob@plant.example"]
    assert (a["annotations"], a["last_24h"], a["last_7d"], a["skipped"]) == (4, 2, 3, 0)
    assert sorted(a["leads"]) == [1.0, 3.0, 7.0]
    assert (b["annotations"], b["last_24h"], b["last_7d"], b["skipped"]) == (3, 3, 3, 1)
    assert a["last_at"] == NOW - dt.timedelta(hours=1)
    assert rows[IMPORT_IDENTITY]["annotations"] == 1


def test_annotator_names_follow_the_snapshot() -> None:
    assert annotator_name({"completed_by": 2}, NAMES) == "ann@plant.example"
    assert annotator_name({"completed_by": 77}, NAMES) == "user:77"
    assert annotator_name({"completed_by": {"id": 5, "email": "eve@x.example"}}, {}) == "eve@x.example"
    assert annotator_name({}, NAMES) == "unknown"


def test_live_agreement_is_the_dataset_measure_on_live_annotations() -> None:
    report = live_agreement(team_tasks(), "classify", NAMES, threshold=1.0, match_iou=0.5)
    # Tasks 1-3 have two people (task 4's second annotation was skipped): one disagreement of three.
    assert (report.overlapped, round(report.mean, 4)) == (3, round(2 / 3, 4))
    assert [f.task_id for f in report.flagged] == [2]
    assert per_annotator_agreement(report.per_pair) == {
        "ann@plant.example": (pytest.approx(2 / 3, abs=1e-4), 3),
        "bob@plant.example": (pytest.approx(2 / 3, abs=1e-4), 3),
    }
    assert live_agreement(team_tasks(), "segment", NAMES, threshold=0.7, match_iou=0.5) is None


def test_detect_agreement_matches_boxes() -> None:
    from crux.geometry import PixelBox

    kind = get_kind("detect")

    def boxes(x: float) -> list[dict[str, Any]]:
        return kind.to_results([Label("scratch", PixelBox(x, 10.0, x + 40.0, 60.0))], 200, 200)

    tasks = [
        {"id": 1, "data": {"width": 200, "height": 200}, "annotations": [
            {"id": 1, "completed_by": 2, "result": boxes(10.0)}, {"id": 2, "completed_by": 3, "result": boxes(12.0)}]},
        {"id": 2, "data": {"width": 200, "height": 200}, "annotations": [
            {"id": 3, "completed_by": 2, "result": boxes(10.0)}, {"id": 4, "completed_by": 3, "result": boxes(120.0)}]},
    ]  # fmt: skip
    report = live_agreement(tasks, "detect", NAMES, threshold=1.0, match_iou=0.5)
    assert report.overlapped == 2 and [f.task_id for f in report.flagged] == [2]


def test_review_tab_reads_the_published_filter() -> None:
    views = [
        {"id": 4, "data": {"title": "Default"}},
        {"id": 7, "data": {"title": VIEW_TITLE, "filters": {"items": [
            {"filter": "filter:tasks:id", "value": 3}, {"filter": "filter:tasks:id", "value": 6}]}}},
    ]  # fmt: skip
    tab = review_tab(views, VIEW_TITLE)
    assert tab is not None and (tab.view_id, tab.task_ids) == (7, (3, 6))
    empty = [
        {"id": 8, "data": {"title": VIEW_TITLE, "filters": {"items": [{"filter": "filter:tasks:id", "value": -1}]}}}
    ]
    assert review_tab(empty, VIEW_TITLE).task_ids == ()  # type: ignore[union-attr]
    assert review_tab(views[:1], VIEW_TITLE) is None


def test_summary_orders_people_first_and_queues_disagreements_then_the_tab() -> None:
    views = [{"id": 7, "data": {"title": VIEW_TITLE, "filters": {"items": [
        {"filter": "filter:tasks:id", "value": 2}, {"filter": "filter:tasks:id", "value": 6}]}}}]  # fmt: skip
    s = summarize("neu-cls", "classify", 11, "http://ls.local/", team_tasks(), NAMES, views, NOW)
    # Both did 3 this week; Ann did 4 in all.
    assert [a.annotator for a in s.annotators] == ["ann@plant.example", "bob@plant.example", IMPORT_IDENTITY]
    assert s.annotators[-1].imported and not s.annotators[0].imported
    assert s.annotators[0].median_lead_s == 3.0 and s.annotators[1].skipped == 1
    assert (s.tasks, s.labeled, s.overlapped, s.threshold) == (6, 5, 3, 1.0)
    assert [(q.task_id, q.reason) for q in s.queue] == [(2, "low agreement"), (6, "review tab")]
    assert s.queue_total == 2 and s.queue[0].agreement == 0.0
    assert s.task_url(2) == "http://ls.local/projects/11/data?task=2"
    assert s.review_url == "http://ls.local/projects/11/data?tab=7"


def test_team_cache_never_holds_the_page() -> None:
    gate = threading.Event()
    calls: list[str] = []

    def slow(line: LineInfo) -> Any:
        calls.append(line.name)
        gate.wait(5)
        return NoProject(line.name)

    clock = [0.0]
    cache = TeamCache(slow, ttl_s=30, first_wait_s=0.05, clock=lambda: clock[0])
    line = LineInfo("a", "A", "classify")
    assert isinstance(cache.get(line), Pending)
    assert isinstance(cache.get(line), Pending) and calls == ["a"]  # one read in flight, not one per page
    gate.set()
    for _ in range(100):
        if isinstance(cache.get(line), NoProject):
            break
        threading.Event().wait(0.02)
    assert isinstance(cache.get(line), NoProject) and calls == ["a"]
    clock[0] = 31.0  # stale: the old value is served while one refresh runs
    assert isinstance(cache.get(line), NoProject)


def test_team_cache_shows_a_failed_read_as_unreachable() -> None:
    def down(line: LineInfo) -> Any:
        raise ConnectionError("connection refused")

    cache = TeamCache(down, first_wait_s=2.0)
    state = cache.get(LineInfo("a", "A", "classify"))
    assert isinstance(state, Unavailable) and state.source == "Label Studio"
    assert state.reason == "ConnectionError: connection refused"


# ------------------------------------------------------------------------------------------------------------------
# Capture cards and lists


class Rec:
    def __init__(self, **kw: Any) -> None:
        self.prediction = kw.get("prediction")
        self.scores = kw.get("scores", {})
        self.boxes = kw.get("boxes", [])


def test_card_info_score_class_and_uncertain() -> None:
    sure = card_info(Rec(prediction="scratch", scores={"scratch": 0.8, "ok": 0.2}))
    assert (sure.cls, sure.score, sure.uncertain) == ("scratch", 0.8, False)
    close = card_info(Rec(prediction="ok", scores={"ok": 0.52, "scratch": 0.48}))
    assert close.uncertain and close.cls == "ok"
    boxes = card_info(Rec(boxes=[{"class": "spot", "box": [0, 0, 5, 5], "score": 0.9}]))
    assert (boxes.cls, boxes.score, boxes.uncertain) == (None, 0.9, False)
    # A segmenter's or anomaly model's single NG score: shown, never called a class or "uncertain".
    anomaly_ok = card_info(Rec(scores={"NG": 0.01}))
    assert (anomaly_ok.cls, anomaly_ok.score, anomaly_ok.uncertain) == (None, 0.01, False)
    assert overlay_caption(Rec(scores={"NG": 0.01})) == "score 0.01"
    assert overlay_caption(Rec()) is None
    assert card_info(Rec(scores={"ok": 0.52, "scratch": 0.48})).cls == "ok"  # no prediction sent: the arg-max
    assert overlay_caption(Rec(prediction="ok", scores={"ok": 0.9, "scratch": 0.1})) == "ok 0.90"
    assert overlay_caption(Rec(prediction="scratch", boxes=[{"class": "scratch", "box": [0, 0, 5, 5]}])) is None


@pytest.fixture
def ingest_db(tmp_path: Path) -> Any:
    """A migrated SQLite ingest database with 60 captures of line a (stations s1/s2) and 5 of line b."""
    import sqlalchemy as sa

    from crux.collect import add_station, create_db_engine, migrate
    from crux.collect.db import captures

    engine = create_db_engine(f"sqlite:///{tmp_path}/ingest.db")
    migrate(engine)
    ids = {name: add_station(engine, name, line) for name, line in (("s1", "a"), ("s2", "a"), ("s3", "b"))}
    del ids
    with engine.begin() as conn:
        station_ids = dict(conn.execute(sa.text("SELECT name, id FROM stations")).all())
        for i in range(65):
            line, station = ("b", "s3") if i >= 60 else ("a", "s1" if i % 2 else "s2")
            ng = i % 3 == 0
            uncertain = i % 10 == 5
            scores = (
                {"ok": 0.53, "scratch": 0.47}
                if uncertain
                else ({"scratch": 0.9, "ok": 0.1} if ng else {"ok": 0.95, "scratch": 0.05})
            )
            at = dt.datetime(2026, 12, 6, 10, 0) + dt.timedelta(minutes=i)
            conn.execute(captures.insert().values(
                station_id=station_ids[station], station=station, line=line, captured_at=at, received_at=at,
                sha256=f"{i:064x}", image_key=f"{i:064x}.jpg", content_type="image/jpeg", size_bytes=1, width=8,
                height=8, prediction="scratch" if ng and not uncertain else "ok", verdict="ng" if ng else "ok",
                scores=scores, boxes=[], idempotency_key=f"k{i}",
            ))  # fmt: skip
    yield engine
    engine.dispose()


def test_capture_pages_filter_and_page_by_id(ingest_db: Any) -> None:
    first = page_captures(ingest_db, CaptureFilter(line="a"), limit=24)
    assert len(first.items) == 24 and first.newer is None and first.older == first.items[-1].id
    ids = [c.id for c in first.items]
    assert ids == sorted(ids, reverse=True) and all(c.line == "a" for c in first.items)
    second = page_captures(ingest_db, CaptureFilter(line="a"), before=first.older, limit=24)
    third = page_captures(ingest_db, CaptureFilter(line="a"), before=second.older, limit=24)
    assert len(second.items) == 24 and len(third.items) == 12 and third.older is None
    seen = [c.id for p in (first, second, third) for c in p.items]
    assert len(seen) == len(set(seen)) == 60
    back = page_captures(ingest_db, CaptureFilter(line="a"), after=second.newer, limit=24)
    assert [c.id for c in back.items] == ids  # "newer" from page 2 is page 1 again

    ng = page_captures(ingest_db, CaptureFilter(line="a", verdict="ng"), limit=100)
    assert len(ng.items) == 20 and all(c.verdict == "ng" for c in ng.items)
    ok = page_captures(ingest_db, CaptureFilter(line="a", verdict="ok"), limit=100)
    assert len(ok.items) == 40
    s1 = page_captures(ingest_db, CaptureFilter(station="s1"), limit=100)
    assert len(s1.items) == 30 and {c.station for c in s1.items} == {"s1"}
    cls = page_captures(ingest_db, CaptureFilter(line="a", cls="scratch"), limit=100)
    assert {c.prediction for c in cls.items} == {"scratch"} and len(cls.items) == 18  # 20 NG, 2 of them uncertain
    unsure = page_captures(ingest_db, CaptureFilter(line="a", uncertain=True), limit=100)
    assert [c.id for c in unsure.items] == sorted((c.id for c in unsure.items), reverse=True)
    assert len(unsure.items) == 6 and all(card_info(c).uncertain for c in unsure.items)


def test_uncertain_pages_stop_at_the_scan_limit_and_go_on(ingest_db: Any) -> None:
    page = page_captures(ingest_db, CaptureFilter(line="a", uncertain=True), limit=24, scan_limit=20)
    assert page.stopped_early and page.older is not None
    found = [c.id for c in page.items]
    rest = page_captures(ingest_db, CaptureFilter(line="a", uncertain=True), before=page.older, limit=24)
    assert not rest.stopped_early and rest.older is None
    assert len(found) + len(rest.items) == 6 and not set(found) & {c.id for c in rest.items}
