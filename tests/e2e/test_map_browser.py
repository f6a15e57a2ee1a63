"""The Map view in a real browser (headless Chromium, Playwright) on a run with embeddings.

A box dragged on the map selects samples: "selected N · kept K" appears and the galleries show only
selected samples; "Export the selection" downloads exactly N rows; "Mark drop" records the decision,
which survives a page reload and takes the dropped samples out of the downloaded keep-list. The server
log has no traceback. (The guide's screenshot of the map, assets/map.png, is of a real CIFAR-10 run:
``benchmarks/bench_map_cifar.py --screenshot``.)
"""

from __future__ import annotations

import csv
import re
import time

import pytest

from tests.e2e.test_app_browser import _no_traceback, served
from tests.ui_helpers import synthetic_run
from tests.waiting import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SELECTED = re.compile(r"selected ([\d,]+) · kept ([\d,]+)")


def _open_map(page, url: str):
    page.goto(url, timeout=120_000)
    page.get_by_text("Kept:").first.wait_for(timeout=120_000)
    page.locator(".bk-tab", has_text="Map").first.click()
    plot = page.locator(".map-plot").first
    plot.locator("canvas").first.wait_for(timeout=60_000)
    page.locator(".map-confusion canvas").first.wait_for(timeout=60_000)  # the last part of the view drawn
    return plot


def _still_box(page, plot) -> dict:
    """The plot's box once the page has stopped moving (parts drawn late shift the layout)."""
    plot.evaluate("el => el.scrollIntoView({block: 'start'})")
    last = None
    for _ in range(40):
        time.sleep(0.5)
        box = plot.bounding_box()
        if box == last:
            return box
        last = box
    raise AssertionError("the map kept moving")


def _selected(page) -> tuple[int, int] | None:
    line = page.get_by_text(SELECTED)
    if line.count() == 0:
        return None
    found = SELECTED.search(line.first.inner_text())
    return int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))


def _download(page, label: str, path) -> list[dict]:
    with page.expect_download(timeout=60_000) as download:
        page.get_by_text(label, exact=True).first.click()
    download.value.save_as(path)
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _gallery_ids(page) -> set[str]:
    return set(page.locator(".me-card").evaluate_all("cards => cards.map(c => c.dataset.id)"))


def test_box_selection_export_and_a_review_that_survives_a_reload(browser, tmp_path):
    run = synthetic_run(tmp_path / "run", n=600, classes=4, embeddings=12)
    log = tmp_path / "serve.log"
    with served([str(run)], log) as (url, _):
        page = browser.new_page(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
        plot = _open_map(page, url)
        before = _gallery_ids(page)
        box = _still_box(page, plot)
        x0, y0 = box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.25
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x0 + box["width"] * 0.3, y0 + box["height"] * 0.35, steps=10)
        page.mouse.up()
        n, kept = wait_for(lambda: _selected(page), 60, "the selected line")
        assert 0 < n < 600 and 0 <= kept <= n
        page.screenshot(path=str(tmp_path / "map.png"))

        rows = _download(page, "Export the selection", tmp_path / "selection.csv")
        chosen = {row["sample_id"] for row in rows}
        assert len(rows) == n == len(chosen)
        shown = wait_for(lambda: (ids := _gallery_ids(page)) != before and ids, 30, "the galleries to follow")
        assert shown <= chosen  # every card is a selected sample

        baseline = _download(page, "Download keep-list", tmp_path / "before.csv")
        page.get_by_text("Mark drop", exact=True).first.click()
        wait_for(lambda: (run / "reviews.parquet").exists(), 30, "the review log")

        page.reload()
        _open_map(page, url)
        after = _download(page, "Download keep-list", tmp_path / "after.csv")
        kept_ids = {row["sample_id"] for row in after}
        assert len(after) == len(baseline) - kept and not kept_ids & chosen
        page.close()
    _no_traceback(log)
