"""The team panel and the capture cards in a real browser (Debian's chromium through Playwright for Python), over
the real fixture plant of tests/console_support.py plus tests/team_console_support.py's captures; the team figures
from a real Label Studio (tests/conftest.py's `ls_server`) and, with it down, the note that says so. Every request
that would leave this machine is blocked and recorded: each test asserts there was none."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_support import (
    LINE,
    Plant,
    build_plant,
    chromium_browser,
    chromium_missing,
    offline_context,
    running_console,
)
from team_console_support import YELLOW_PIXELS_JS, ExtraCaptures, add_captures, team_console_config, team_project

from crux.collect import IngestSettings, create_db_engine, mark_sent
from crux.collect.ingest_server import running_server

pytestmark = pytest.mark.integration

TEAM_LINE = f"team-{uuid.uuid4().hex[:6]}"
# Pixels tinted by a region's mask (crux.console.plots.overlay_png composites red at ~43 % over the image).
RED_MASK_JS = """(img) => {
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] > d[i + 1] + 30 && d[i] > d[i + 2] + 30) n++;
  return n;
}"""


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> tuple[Plant, ExtraCaptures]:
    missing = chromium_missing()
    if missing is not None:
        pytest.skip(missing)
    plant = build_plant(tmp_path_factory.mktemp("plant"))
    with running_server(IngestSettings(database_url=plant.database_url, storage_url=plant.storage_url)) as url:
        extra = add_captures(url, plant.tokens)
    # One NG capture of cam-1 became a Label Studio task (as `crux collect` records it).
    engine = create_db_engine(plant.database_url)
    mark_sent(engine, LINE, {extra.spot[1]: 4242})
    engine.dispose()
    return plant, extra


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_browser() as browser:
        yield browser


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    with offline_context(browser) as guard:
        yield guard.context


def settle_team(page: Any, url: str, ready: str, timeout_s: float = 60.0) -> None:
    """Load `url` until the team panel shows `ready` (the first view of a line may say the read is under way)."""
    deadline = time.monotonic() + timeout_s
    while True:
        page.goto(url)
        if page.locator(ready).count():
            return
        assert page.locator("#team-pending").count(), page.inner_text("#team")
        assert time.monotonic() < deadline, "the team panel never left 'reading…'"
        time.sleep(0.5)


def loaded(page: Any, img: Any) -> None:
    img.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())


def card_ids(page: Any) -> list[int]:
    return [int(x) for x in page.locator("#capture-list figure").evaluate_all("fs => fs.map(f => f.dataset.capture)")]


def captions(page: Any) -> list[str]:
    return page.locator("#capture-list figure figcaption").all_inner_texts()


def test_capture_cards_lists_and_team_note_with_label_studio_down(
    plant: tuple[Plant, ExtraCaptures], context: Any, tmp_path: Path
) -> None:
    fixture, extra = plant
    page = context.new_page()
    with running_console(team_console_config(fixture, TEAM_LINE)) as url:
        # Label Studio is down (nothing listens on its port): the team panel says so, the rest of the page renders.
        settle_team(page, f"{url}/lines/{LINE}", "#team-unavailable")
        assert "Label Studio unreachable" in page.inner_text("#team")
        assert page.locator("#versions").is_visible()

        # NG cards: the class and the model's score for it; the box drawn (red), no caption band needed.
        assert "0.80" in page.locator("#ng-gallery figure", has_text="scratch").first.inner_text()
        assert "0.91" in page.locator("#ng-gallery figure", has_text="spot").first.inner_text()
        # Kept OK cards: the uncertain ones are marked; the class and score are written on the image too.
        ok = page.locator("#ok-gallery figure")
        assert page.locator("#ok-gallery figure[data-uncertain] .flag.uncertain").count() >= 1
        sure = page.locator("#ok-gallery figure:not([data-uncertain])").first
        assert "ok" in sure.inner_text() and "0.9" in sure.inner_text()
        img = ok.first.locator("img")
        loaded(page, img)
        assert img.evaluate(YELLOW_PIXELS_JS) > 30, "no class written on a classify overlay"
        page.screenshot(path=str(tmp_path / "line-cards.png"), full_page=True)

        # A card's Label Studio task link on a page that knows no project (the station page): through the console.
        page.goto(f"{url}/stations/cam-1")
        link = page.locator(f"figure[data-capture='{extra.spot[1]}'] a.task")
        assert link.get_attribute("href") == f"/captures/{extra.spot[1]}/task"
        response = page.goto(url + link.get_attribute("href"))
        assert response is not None and response.status == 503
        assert "Label Studio unreachable" in page.inner_text("#error-message")

        # The capture list: newest first, 24 a page, older and newer pages.
        page.goto(f"{url}/lines/{LINE}")
        page.click("#browse-captures")
        ids = card_ids(page)
        assert len(ids) == 24 and ids == sorted(ids, reverse=True)
        page.click("#page-older")
        older = card_ids(page)
        assert len(older) == 8 + 34 - 24 and max(older) < min(ids) and page.locator("#page-older").count() == 0
        page.click("#page-newer")
        assert card_ids(page) == ids

        # Filters, through the form: verdict, uncertain, station, class (each page shows only what matches).
        page.select_option("select[name=verdict]", "ng")
        page.click("#apply-filter")
        verdicts = page.locator("#capture-list figure").evaluate_all("fs => fs.map(f => f.dataset.verdict)")
        assert len(verdicts) == 6 + 6 and set(verdicts) == {"ng"}
        page.select_option("select[name=verdict]", "")
        page.select_option("select[name=cls]", "spot")
        page.click("#apply-filter")
        assert len(captions(page)) == 6 and all("spot" in c for c in captions(page))
        page.select_option("select[name=cls]", "")
        page.check("input[name=uncertain]")
        page.click("#apply-filter")
        assert sorted(card_ids(page)) == sorted(extra.uncertain)
        assert page.locator("#capture-list figure[data-uncertain]").count() == 4
        page.uncheck("input[name=uncertain]")
        page.select_option("select[name=station]", "cam-1")
        page.click("#apply-filter")
        assert captions(page) and all("cam-1" in c for c in captions(page))
        assert "station=cam-1" in page.url
        page.screenshot(path=str(tmp_path / "captures.png"), full_page=True)

        # A segmenter's frame (one NG score, a region's mask): the mask drawn, the score shown, never "uncertain".
        page.goto(f"{url}/captures?station=cam-9")
        (seg,) = extra.segment
        card = page.locator(f"#capture-list figure[data-capture='{seg}']")
        assert "score 0.93" in card.inner_text()
        assert card.get_attribute("data-uncertain") is None
        img = card.locator("img")
        loaded(page, img)
        assert img.evaluate(RED_MASK_JS) > 1000, "the region's mask is not drawn"

        # Bad filter input: a 4xx page, nothing read.
        for path, status in (
            ("/captures?line=nope", 404),
            ("/captures?station=nope", 404),
            ("/captures?station=..%2Fetc", 422),
            ("/captures?verdict=maybe", 422),
            ("/captures?before=-1", 422),
            ("/captures/999999/task", 404),
            (f"/captures/{extra.spot[0]}/task", 404),  # not in Label Studio yet
        ):
            response = page.goto(url + path)
            assert response is not None and response.status == status, path


@pytest.mark.slow
def test_team_panel_from_a_real_label_studio(
    plant: tuple[Plant, ExtraCaptures], ls_server: tuple, ls_client: Any, context: Any, tmp_path: Path
) -> None:
    from crux.config import ProjectSpec
    from crux.label.projects import sync_project

    fixture, extra = plant
    settings, credentials = ls_server
    team = team_project(ls_client, TEAM_LINE)
    spec = ProjectSpec(title="Console line A", kind="classify", classes={"ok": "#00aa00", "scratch": "#ff0000"},
                       ok_class="ok")  # fmt: skip
    line_project = sync_project(ls_client, LINE, spec).project_id
    page = context.new_page()
    cfg = team_console_config(fixture, TEAM_LINE, ls_url=settings.url, ls_token=credentials.token)
    with running_console(cfg) as url:
        settle_team(page, f"{url}/lines/{TEAM_LINE}", "#team-annotators")
        rows = {
            r.get_attribute("data-annotator"): r.locator("td").all_inner_texts()
            for r in page.locator("#team-annotators tbody tr").all()
        }
        ann, bob = rows[team.ann], rows[team.bob]
        # annotations, last 24 h, last 7 days, skipped, median time / task, latest, agreement, shared images
        assert ann[1:5] == ["4", "4", "4", "0"] and bob[1:5] == ["4", "4", "4", "1"]
        assert ann[5] == "5.5 s" and bob[5] == "6.0 s"
        assert ann[7] == "75.0%" and ann[8] == "4"
        assert page.inner_text("#team-agreement") == "75.0%"
        assert "4 image(s) labelled by two or more people" in page.inner_text("#team")
        # The review queue: the disagreement (live), then the task `crux review` published; each links its task.
        queue = page.locator("#team-queue tbody tr")
        assert [queue.nth(i).get_attribute("data-task") for i in range(queue.count())] == [
            str(team.disagreement),
            str(team.queued),
        ]
        assert "low agreement" in queue.first.inner_text() and "review tab" in queue.nth(1).inner_text()
        task_link = page.locator(
            f"#team-queue a[href='{settings.url}/projects/{team.project_id}/data?task={team.disagreement}']"
        )
        assert task_link.count() == 1
        assert (
            page.locator("#review-tab")
            .get_attribute("href")
            .startswith(f"{settings.url}/projects/{team.project_id}/data?tab=")
        )
        page.screenshot(path=str(tmp_path / "team.png"), full_page=True)
        # The same panel on its own page.
        page.goto(f"{url}/lines/{TEAM_LINE}/team")
        assert page.locator("#team-annotators tbody tr").count() == 2

        # A capture card's task link on a page without the project (the station page) reaches Label Studio's task.
        response = httpx.get(f"{url}/captures/{extra.spot[1]}/task", follow_redirects=False, timeout=10)
        assert response.status_code == 303
        assert response.headers["location"] == f"{settings.url}/projects/{line_project}/data?task=4242"

        # Timing: the line page with the team panel answers from the cache, not from Label Studio.
        started = time.perf_counter()
        assert httpx.get(f"{url}/lines/{TEAM_LINE}", timeout=10).status_code == 200
        assert time.perf_counter() - started < 1.0
