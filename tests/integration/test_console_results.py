"""The results drill-down in a real browser (Debian's chromium through Playwright), on fixture data of all four kinds
(tests/results_support.py: a signed model remote with published versions and a refused candidate, and the
workspace's predictions.json + overlays built by crux.evaluation's own functions). Requests that would leave this
machine are blocked and recorded; each test asserts there was none. Screenshots land in the test's tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_support import chromium_browser, chromium_missing, offline_context, running_console
from results_support import (
    ANO,
    CLS,
    DET,
    LINES,
    REFUSED_FLOOR,
    REFUSED_MACRO_F1,
    SEG,
    THRESHOLD,
    V1_PER_CLASS,
    ResultsPlant,
    build_results_plant,
    results_console_config,
)

pytestmark = pytest.mark.integration

# Pixels of a colour in a decoded <img>, counted in the browser (what the user sees, not the file on disk).
COLOUR_PIXELS_JS = """([img, rgb, tol]) => {
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let i = 0; i < d.length; i += 4)
    if (Math.abs(d[i] - rgb[0]) < tol && Math.abs(d[i + 1] - rgb[1]) < tol && Math.abs(d[i + 2] - rgb[2]) < tol) n++;
  return n;
}"""


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> ResultsPlant:
    missing = chromium_missing()
    if missing is not None:
        pytest.skip(missing)
    return build_results_plant(tmp_path_factory.mktemp("results-plant"))


@pytest.fixture(scope="module")
def console_url(plant: ResultsPlant) -> Iterator[str]:
    with running_console(results_console_config(plant)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_browser() as browser:
        yield browser


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with offline_context(browser) as guard:
        yield guard.context.new_page()


def _images_loaded(page: Any, selector: str) -> int:
    images = page.locator(selector)
    for i in range(images.count()):
        images.nth(i).scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=images.nth(i).element_handle())
    return int(images.count())


def test_per_class_table_confusion_cells_gallery_and_operating_point(
    plant: ResultsPlant, console_url: str, page: Any, tmp_path: Path
) -> None:
    # From the line page, as an engineer gets there.
    assert page.goto(f"{console_url}/lines/{CLS}").status == 200
    page.click("#results-link a")
    page.wait_for_load_state("networkidle")
    assert page.url.endswith(f"/lines/{CLS}/results")

    # The per-class table: the numbers of the records (ok: 10 of 13 predicted OK are OK, 10 of 12 OK found).
    doc = plant.docs[CLS]
    rows = page.locator("#per-class tbody tr")
    assert rows.count() == 3
    for expected in doc["per_class"]:
        cells = page.locator(f"#per-class tr[data-class='{expected['class']}'] td").all_inner_texts()
        assert cells == [expected["class"], *(f"{expected[k]:.3f}" for k in ("precision", "recall", "f1")),
                         str(expected["support"]), str(expected["predicted"])]  # fmt: skip
    ok_row = page.locator("#per-class tr[data-class='ok'] td").all_inner_texts()
    assert ok_row[1:4] == ["0.769", "0.833", "0.800"]
    assert "per-item records of v2" in page.inner_text("main")

    # The confusion matrix holds the record counts; clicking the escapes' cell shows exactly those images.
    for i, actual in enumerate(doc["labels"]):
        for j, predicted in enumerate(doc["labels"]):
            cell = page.locator(f"#results-confusion td[data-actual='{actual}'][data-predicted='{predicted}']")
            assert cell.inner_text().strip() == str(doc["confusion_matrix"][i][j])
    page.click("#results-confusion td[data-actual='scratch'][data-predicted='ok'] a")
    page.wait_for_load_state("networkidle")
    shown = page.locator("#cell-items figure")
    assert shown.count() == 3
    expected_ids = sorted(r["id"] for r in doc["items"] if r["actual"] == "scratch" and r["predicted"] == "ok")
    assert sorted(shown.locator("code").all_inner_texts()) == expected_ids
    for k in range(shown.count()):
        assert shown.nth(k).get_attribute("data-actual") == "scratch"
        assert shown.nth(k).get_attribute("data-predicted") == "ok"
        assert shown.nth(k).get_attribute("data-outcome") == "escape"
    assert _images_loaded(page, "#cell-items img") == 3
    assert "Actual scratch, predicted ok: 3 image(s)" in page.inner_text("#cell")
    # Another cell: the diagonal of OK shows its ten items and no other.
    page.click("#results-confusion td[data-actual='ok'][data-predicted='ok'] a")
    page.wait_for_load_state("networkidle")
    assert page.locator("#cell-items figure").count() == 10
    assert set(page.locator("#cell-items figure").evaluate_all("fs => fs.map(f => f.dataset.outcome)")) == {"correct"}

    # Worst misses: escapes first (most confidently let through first), then false rejects, then wrong classes.
    gallery = page.locator("#worst-misses figure")
    outcomes = gallery.evaluate_all("fs => fs.map(f => f.dataset.outcome)")
    assert outcomes == ["escape", "escape", "escape", "false_reject", "false_reject", "misclassified"]
    indices = [int(x) for x in gallery.evaluate_all("fs => fs.map(f => f.dataset.index)")]
    assert indices == doc["worst_misses"] == [22, 21, 20, 11, 10, 29]
    assert _images_loaded(page, "#worst-misses img") == 6
    # The classify overlay carries its label and score in a caption band (drawn red on a miss).
    first = page.locator("#worst-misses img").first.element_handle()
    assert page.evaluate(COLOUR_PIXELS_JS, [first, [255, 90, 90], 40]) > 20

    # Operating point: the curve and the shipped threshold's marker where the card puts it.
    marker = page.locator("#operating-point circle.shipped")
    assert marker.count() == 1
    assert float(marker.get_attribute("data-threshold")) == THRESHOLD
    assert float(marker.get_attribute("data-ng-recall")) == pytest.approx(doc["operating_point"]["ng_recall"])
    assert float(marker.get_attribute("data-false-reject-rate")) == pytest.approx(
        doc["operating_point"]["false_reject_rate"]
    )
    assert page.locator("#operating-point polyline.curve").count() == 1
    assert "shipped threshold 0.500" in (page.text_content("#operating-point") or "")

    # The refused candidate sits beside the published versions with the criterion that refused it.
    statuses = page.locator("#candidates tbody tr").evaluate_all("rs => rs.map(r => r.dataset.status)")
    assert statuses == ["refused", "published", "published"]
    refused = page.locator("#candidates tr[data-status='refused']")
    text = refused.inner_text()
    assert f"macro_f1 {REFUSED_MACRO_F1:.3f} < min {REFUSED_FLOOR:.3f} (gate.lines.{CLS}.min)" in text
    assert "FAIL" in text
    assert "production" in page.locator("#candidates tr[data-version='2']").inner_text()
    page.screenshot(path=str(tmp_path / "results-classify.png"), full_page=True)


@pytest.mark.parametrize("line", [SEG, ANO])
def test_segment_and_anomaly_misses_show_their_masks(
    plant: ResultsPlant, console_url: str, page: Any, line: str, tmp_path: Path
) -> None:
    assert page.goto(f"{console_url}/lines/{line}/results").status == 200
    doc = plant.docs[line]
    gallery = page.locator("#worst-misses figure")
    outcomes = gallery.evaluate_all("fs => fs.map(f => f.dataset.outcome)")
    n_escapes = sum(1 for r in doc["items"] if r["outcome"] == "escape")
    assert n_escapes >= 1 and outcomes[:n_escapes] == ["escape"] * n_escapes
    assert "false_reject" in outcomes and outcomes.index("false_reject") == n_escapes
    assert _images_loaded(page, "#worst-misses img") == len(outcomes)
    images = page.locator("#worst-misses img")
    # Escapes show the labelled mask (green) the model missed; false rejects the predicted region (red, outlined).
    escape = images.nth(0).element_handle()
    reject = images.nth(n_escapes).element_handle()
    assert page.evaluate(COLOUR_PIXELS_JS, [escape, [90, 170, 90], 45]) > 500
    assert page.evaluate(COLOUR_PIXELS_JS, [reject, [255, 255, 0], 30]) > 100  # the predicted region's outline
    assert page.evaluate(COLOUR_PIXELS_JS, [reject, [210, 50, 50], 50]) > 500
    assert page.locator("#operating-point circle.shipped").count() == 1
    assert page.locator("#per-class tbody tr").count() == len(doc["labels"])
    # A confusion cell of the mask kinds opens its images too.
    page.click(f"#results-confusion td[data-actual='{doc['labels'][0]}'][data-predicted='{doc['labels'][1]}'] a")
    page.wait_for_load_state("networkidle")
    want = sum(1 for r in doc["items"] if r["actual"] == doc["labels"][0] and r["predicted"] == doc["labels"][1])
    assert page.locator("#cell-items figure").count() == want
    assert _images_loaded(page, "#cell-items img") == want
    page.screenshot(path=str(tmp_path / f"results-{line}.png"), full_page=True)


def test_detect_results_draw_boxes_and_have_no_operating_point(
    plant: ResultsPlant, console_url: str, page: Any
) -> None:
    assert page.goto(f"{console_url}/lines/{DET}/results").status == 200
    outcomes = page.locator("#worst-misses figure").evaluate_all("fs => fs.map(f => f.dataset.outcome)")
    assert outcomes == ["escape", "false_reject", "misclassified"]
    assert _images_loaded(page, "#worst-misses img") == 3
    escape, reject = (page.locator("#worst-misses img").nth(i).element_handle() for i in (0, 1))
    assert page.evaluate(COLOUR_PIXELS_JS, [escape, [0, 200, 0], 30]) > 50  # the labelled box nobody found
    assert page.evaluate(COLOUR_PIXELS_JS, [reject, [230, 30, 30], 30]) > 50  # the box on a clean part
    assert page.locator("#operating-point").count() == 0
    assert "no OK class" in page.inner_text("main")
    assert page.locator("#results-confusion th").all_inner_texts()[-1] == "none"


def test_older_version_bad_cells_and_image_names(plant: ResultsPlant, console_url: str, page: Any) -> None:
    # v1 is not the evaluation the workspace holds: its card's table, and the drill-down labelled as the workspace's.
    assert page.goto(f"{console_url}/lines/{CLS}/results?version=1").status == 200
    assert "From v1's model card" in page.inner_text("main")
    for name, row in V1_PER_CLASS.items():
        cells = page.locator(f"#per-class tr[data-class='{name}'] td").all_inner_texts()
        assert cells == [name, *(f"{row[k]:.3f}" for k in ("precision", "recall", "f1")), str(row["support"])]
    assert "not v1" in page.inner_text("#results-origin")
    assert page.goto(f"{console_url}/lines/{CLS}/results?version=9").status == 404
    assert page.goto(f"{console_url}/lines/{CLS}/results?actual=ok&predicted=nope").status == 404
    assert page.goto(f"{console_url}/lines/nope/results").status == 404
    for name in ("..%2Fpredictions.json", "000001.jpg", "x.png"):
        assert page.goto(f"{console_url}/lines/{CLS}/results/images/{name}").status == 404
    assert page.goto(f"{console_url}/lines/{CLS}/results/images/000022.png").status == 200
    assert set(LINES) == {CLS, DET, SEG, ANO}
