"""Label layouts fit a 1366x768 laptop screen: in the real Label Studio, opened the way an annotator does (Label All
Tasks), every label button and the whole image are inside the window without scrolling. Screenshots are kept in
the test's temporary folder as the evidence."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import NEU, REPO

from crux.config import LabelStudioConfig, from_mapping
from crux.label import importer
from crux.label.projects import sync_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
WIDTH, HEIGHT = 1366, 768
TILE = REPO.parent / "shared" / "datasets" / "magnetic-tile" / "MT_Crack"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (never a downloaded browser); kept here, not shared, on purpose."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield browser
        browser.close()


def sample_image(project: str) -> Path:
    if project == "magnetic-tile":
        return next(p for p in sorted(TILE.glob("*.jpg")))
    return NEU / "images" / "crazing_10.jpg"


@pytest.mark.parametrize("project", ["neu-det", "neu-cls", "magnetic-tile"])
def test_every_label_button_is_visible_at_1366x768(
    project: str, browser: Any, ls_server: tuple, ls_client: Any, ls_files_root: Path, tmp_path: Path
) -> None:
    image = sample_image(project)
    if not image.exists():
        pytest.skip(f"{image} not present")
    settings, credentials = ls_server
    cfg = from_mapping(LabelStudioConfig, yaml.safe_load((REPO / "params.yaml").read_text())["labelstudio"], "ls")
    spec = cfg.project(project)
    name = f"layout-{project}-{uuid.uuid4().hex[:6]}"
    project_id = sync_project(ls_client, name, spec).project_id
    source = ls_files_root / name
    source.mkdir()
    shutil.copy(image, source / image.name)
    importer.import_items(ls_client, project_id, spec, importer.scan_source(str(source), spec, "none"), ls_files_root)

    page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
    try:
        page.goto(f"{settings.url}/user/login")
        page.fill("input[name=email]", credentials.username)
        page.fill("input[name=password]", credentials.password)
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_load_state("networkidle")
        page.goto(f"{settings.url}/projects/{project_id}/data?labeling=1")  # what "Label All Tasks" opens
        page.wait_for_selector("canvas", timeout=60_000)
        page.keyboard.press("Escape")  # the instructions pop-up shown before labelling
        page.wait_for_timeout(2_000)  # the image settles into its fitted size
        page.screenshot(path=str(tmp_path / f"{project}.png"))
        wanted = [c for c in spec.class_names if spec.kind != "segment" or c != spec.ok_class]
        for cls in wanted:
            # A label button's text is the class, with its hotkey after it on choices ("crazing[1]").
            box = page.get_by_text(re.compile(rf"^{re.escape(cls)}\s*(\[\d+\])?$")).first.bounding_box(timeout=10_000)
            assert box is not None, f"{project}: label button {cls!r} not rendered"
            assert box["x"] >= 0 and box["y"] >= 0, f"{project}: {cls!r} above or left of the view: {box}"
            assert box["x"] + box["width"] <= WIDTH and box["y"] + box["height"] <= HEIGHT, (
                f"{project}: label button {cls!r} needs scrolling at {WIDTH}x{HEIGHT}: {box}"
            )
        bottoms = page.evaluate(
            "() => [...document.querySelectorAll('img')].filter(i => i.getBoundingClientRect().width > 150)"
            ".map(i => i.getBoundingClientRect().bottom)"
        )
        assert bottoms, f"{project}: the task image is not shown"
        # Not hidden behind the bottom bar either (Submit / Skip).
        submit = page.get_by_role("button", name="Submit").first.bounding_box(timeout=10_000)
        limit = min(HEIGHT, submit["y"]) if submit else HEIGHT
        assert max(bottoms) <= limit, f"{project}: the image runs below the view ({max(bottoms)} > {limit} px)"
        assert page.evaluate("() => document.scrollingElement.scrollHeight") <= HEIGHT + 1
    finally:
        page.close()
