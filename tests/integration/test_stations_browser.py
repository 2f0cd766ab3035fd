"""Station health and the drift alarm where the plant looks, in a real browser (Debian's chromium through Playwright):
the overview counts silent, never-seen and old-version stations per line and shows open drift alarms; the line page
lists its stations with their flags and drift status; a station's page draws its heartbeat history (frames/s, NG
rate, latency) as inline SVG and shows its alarm. Real fixture data: a published classifier with its validation
reference, frames streamed through the real edge runtime into a real ingest service, the monitor's real check."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_support import chromium_browser, chromium_missing, offline_context, running_console
from drift_support import DRIFT_LINE, Stream, check, streamed

from crux.collect import IngestSettings, add_station, create_db_engine
from crux.collect.ingest_server import running_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Stream:
    """Line-a: cam-steady (steady frames, 36 heartbeats over 6 h with a 1 h silence), cam-lamp (a lighting change:
    drift alarm), cam-quiet (last heartbeat an hour ago: silent, on an older model), cam-never (never seen)."""
    missing = chromium_missing()
    if missing is not None:
        pytest.skip(missing)
    tmp = tmp_path_factory.mktemp("stations")
    s = streamed(tmp, {"cam-steady": None, "cam-lamp": "lighting"})
    engine = create_db_engine(s.database_url)
    add_station(engine, "cam-never", DRIFT_LINE)
    quiet = add_station(engine, "cam-quiet", DRIFT_LINE)
    steady = add_station(engine, "cam-steady-2", "line-gone")  # a station of a line no longer configured
    settings = IngestSettings(database_url=s.database_url, storage_url=str(tmp / "images"))
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=10) as client:
        r = client.post("/v1/heartbeat", json={"model_version": 0, "frames": 5, "interval_s": 30},
                        headers={"Authorization": f"Bearer {quiet}"})  # fmt: skip
        assert r.status_code == 204, r.text
        r = client.post("/v1/heartbeat", json={"frames": 1}, headers={"Authorization": f"Bearer {steady}"})
        assert r.status_code == 204, r.text
        token = _token(s, "cam-steady")
        for i in range(36):
            beat = {"model_version": 1, "frames": 100 * i, "ng": 7 * i, "fps": 2.0 + (i % 6) / 3,
                    "latency_p50_ms": 3.0 + (i % 4), "ng_rate": 0.05 + (i % 5) / 100, "interval_s": 30}  # fmt: skip
            r = client.post("/v1/heartbeat", json=beat, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 204, r.text
    with engine.begin() as conn:
        # The clock is not ours to move; the rows are: cam-steady's beats spread over 6 h (none between 3 h and 2 h
        # ago), cam-quiet's only beat an hour ago.
        newest = "SELECT id FROM heartbeat_history WHERE station = 'cam-steady' ORDER BY id DESC LIMIT 36"
        ids = [r[0] for r in conn.exec_driver_sql(newest).all()]
        for n, row_id in enumerate(ids):
            at = now - dt.timedelta(minutes=10 * n + (60 if n >= 12 else 0))
            conn.exec_driver_sql("UPDATE heartbeat_history SET received_at = ? WHERE id = ?", (at, row_id))
        for table in ("station_heartbeats", "heartbeat_history"):
            conn.exec_driver_sql(
                f"UPDATE {table} SET received_at = ? WHERE station = 'cam-quiet'", (now - dt.timedelta(hours=1),)
            )
    engine.dispose()
    checks = {c.scope: c for c in check(s)}
    assert checks["station cam-lamp"].assessment.alarm and checks["station cam-steady"].assessment.status == "ok"
    return s


def _token(s: Stream, station: str) -> str:
    """A fresh token for `station` (revoke + add keeps its history: the row is re-activated)."""
    from crux.collect import revoke_station

    engine = create_db_engine(s.database_url)
    try:
        revoke_station(engine, station)
        return add_station(engine, station, DRIFT_LINE)
    finally:
        engine.dispose()


def console_cfg(s: Stream) -> Any:
    from crux.console.deps import ConsoleConfig, LineInfo
    from crux.console.sources import IngestReader, ModelReader
    from crux.ship.signing import load_public_keys

    return ConsoleConfig(
        lines=(LineInfo(DRIFT_LINE, "Line A", "classify"),),
        ingest=IngestReader(create_db_engine(s.database_url), str(s.tmp / "images")),
        models=ModelReader(str(s.remote), load_public_keys([s.public_key])),
        timeout_s=5.0,
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_browser() as browser:
        yield browser


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with offline_context(browser) as guard:
        yield guard.context.new_page()


def test_the_overview_flags_silent_never_seen_and_old_stations_and_shows_the_drift_alarm(
    plant: Stream, page: Any, tmp_path: Path
) -> None:
    with running_console(console_cfg(plant)) as url:
        page.goto(url + "/")
        row = page.locator(f"#station-health tr[data-line='{DRIFT_LINE}'] td")
        cells = [row.nth(i).inner_text() for i in range(row.count())]
        # stations, on production (fresh heartbeat, production version), silent, never seen, older than production
        assert cells[1:6] == ["4", "2 / 4", "1", "1", "1"], cells
        # The lines table above counts stations on production from the same reading.
        assert page.locator(f"#lines tr[data-line='{DRIFT_LINE}'] td").nth(7).inner_text() == "2 / 4"
        assert "drift alarm" in cells[6] or "station alarm" in cells[6]
        assert "cam-never: never seen" in cells[7] and "cam-quiet: silent, older than production" in cells[7]
        assert "cam-lamp: drift alarm" in cells[7] and "cam-steady:" not in cells[7]
        alarm = page.locator(".alarm[data-scope='station cam-lamp']")
        assert alarm.count() == 1 and "PSI" in alarm.inner_text() and "queued for labelling first" in alarm.inner_text()
        # A station of a line the config no longer names is still counted, on a row of its own.
        assert page.locator("#station-health tr[data-line='line-gone']").count() == 1
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)


def test_the_line_page_lists_its_stations_with_flags_and_drift(plant: Stream, page: Any, tmp_path: Path) -> None:
    with running_console(console_cfg(plant)) as url:
        page.goto(f"{url}/lines/{DRIFT_LINE}")
        rows = {
            name: page.locator(f"#line-stations tr[data-station='{name}']").inner_text()
            for name in ("cam-steady", "cam-lamp", "cam-quiet", "cam-never")
        }
        assert "no shift" in rows["cam-steady"] and "v1" in rows["cam-steady"]
        assert "drift alarm" in rows["cam-lamp"]
        assert "silent" in rows["cam-quiet"] and "older than production" in rows["cam-quiet"]
        assert "never seen" in rows["cam-never"] and "not checked" in rows["cam-never"]
        assert page.locator("#line-stations tr[data-station='cam-steady-2']").count() == 0  # another line's
        page.screenshot(path=str(tmp_path / "line.png"), full_page=True)


def test_a_station_page_draws_its_history_and_shows_its_alarm(plant: Stream, page: Any, tmp_path: Path) -> None:
    with running_console(console_cfg(plant)) as url:
        page.goto(url + "/stations/cam-steady")
        svg = page.locator("#history svg.history")
        assert svg.count() == 1
        # Three panels; the 1 h silence splits each line in two; every axis starts at 0.
        assert page.locator("#history polyline").count() == 6
        labels = svg.text_content()
        for text in ("frames/s", "NG rate", "median latency", "0.00", "0.0%", "0.0 ms"):
            assert text in labels, text
        assert "healthy" in page.locator("#station-flags").inner_text()
        page.screenshot(path=str(tmp_path / "station-history.png"), full_page=True)

        page.goto(url + "/stations/cam-lamp")
        assert "drift alarm" in page.locator("#station-flags").inner_text()
        box = page.locator(".alarm[data-scope='station cam-lamp']").first
        assert "score histogram shifted" in box.inner_text()
        page.screenshot(path=str(tmp_path / "station-alarm.png"), full_page=True)

        page.goto(url + "/stations/cam-never")
        assert "never seen" in page.locator("#station-flags").inner_text()
        assert "No heartbeat in the last 24 h" in page.content()
