"""The served app in a real browser: Debian's Chromium, headless, driven by Playwright.

``panel serve mimic_explorer/app.py --args RUN`` on a real demo run: the histogram renders, the
galleries show at least 2 × k decoded images, moving the "Threshold" slider with the keyboard changes
"Kept: N of M", "Download keep-list" gives exactly N rows, a click opens the detail view, and the
server log has no traceback. Also the no-argument demo mode (progress, then the explorer) and a bad
run directory (a message, not a traceback). Takes a screenshot; with ``MIMIC_EXPLORER_UPDATE_SCREENSHOT=1``
it replaces the README's assets/screenshot.png (otherwise it stays in the test's temporary folder, so
a test run never modifies the checkout).
"""

from __future__ import annotations

import csv
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from mimic_explorer.store.layout import IndexFiles, RunLayout
from tests.ui_helpers import ROOT, copy_run, synthetic_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

README_SCREENSHOT = ROOT / "assets" / "screenshot.png"
KEPT = re.compile(r"Kept: (\d+) of (\d+)")
K = 16  # the explorer's default images per gallery


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(args: list[str], log_path: Path, env: dict | None = None, ready_timeout: float = 180):
    """``panel serve mimic_explorer/app.py`` on a free localhost port; yields (url, log_path)."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "panel",
        "serve",
        str(ROOT / "mimic_explorer" / "app.py"),
        "--port",
        str(port),
        "--address",
        "127.0.0.1",
        "--allow-websocket-origin",
        f"127.0.0.1:{port}",
    ]
    if args:
        command += ["--args", *args]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})}
        )
        url = f"http://127.0.0.1:{port}/app"
        try:
            deadline = time.time() + ready_timeout
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"panel serve exited early:\n{log_path.read_text()}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                        break
                except OSError:
                    if time.time() > deadline:
                        raise AssertionError(f"panel serve did not start:\n{log_path.read_text()}") from None
                    time.sleep(0.5)
            yield url, log_path
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _no_traceback(log_path: Path) -> None:
    text = log_path.read_text()
    assert "Traceback" not in text, text[-4000:]


def _kept(page) -> tuple[int, int]:
    text = page.get_by_text(KEPT).first.inner_text()
    n, m = KEPT.search(text).groups()
    return int(n), int(m)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _settled_kept(page, quiet: float = 1.5) -> int:
    """ "Kept: N" once it has stopped changing for ``quiet`` seconds."""
    last, since = _kept(page)[0], time.monotonic()
    deadline = since + 60
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = _kept(page)[0]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return last
    raise AssertionError("Kept: N of M never settled")


def test_explorer_in_a_real_browser(browser, demo_run, tmp_path):
    run = copy_run(demo_run, tmp_path / "run")  # a private copy: nothing saved by other tests is restored
    with served([str(run)], tmp_path / "serve.log") as (url, log):
        page = browser.new_page(viewport={"width": 1600, "height": 1050}, accept_downloads=True)
        page.goto(url, timeout=120_000)

        # the histogram: a Bokeh canvas of real size
        canvas = page.locator(".bk-Canvas canvas, canvas").first
        canvas.wait_for(state="visible", timeout=120_000)
        box = canvas.bounding_box()
        assert box and box["width"] > 300 and box["height"] > 200

        # galleries: at least 2 × k images, decoded (natural size > 0)
        images = page.locator(".me-card img")
        decoded = _wait_for(
            lambda: (
                (
                    n := images.evaluate_all(
                        "els => els.filter(e => e.complete && e.naturalWidth > 0 && e.naturalHeight > 0).length"
                    )
                )
                >= 2 * K
                and n
            ),
            60,
            "gallery images",
        )
        assert decoded >= 2 * K

        # moving the "Threshold" control changes "Kept: N of M"
        before, total = _kept(page)
        assert page.get_by_text("Threshold", exact=False).first.is_visible()
        handle = page.locator(".noUi-handle").first
        handle.focus()
        for _ in range(8):
            handle.press("PageUp")
        _wait_for(lambda: (k := _kept(page)[0]) != before and k, 30, "Kept: N of M to change")
        after = _settled_kept(page)  # every key press applied (a continuous score changes on each one)
        assert total == 1438 and after < before

        # the downloaded keep-list has exactly N data rows
        with page.expect_download(timeout=60_000) as download:
            page.get_by_role("button", name="Download keep-list").click()
        with open(download.value.path(), newline="") as keep_list:
            rows = list(csv.reader(keep_list))
        assert rows[0][:2] == ["sample_id", "source"] and len(rows) - 1 == after

        # a click on a card opens the detail view with the larger image
        card = page.locator(".me-card").nth(3)
        sample_id = card.get_attribute("data-id")
        card.click()
        detail_image = page.locator(".me-detail img")
        detail_image.wait_for(state="visible", timeout=30_000)
        assert detail_image.evaluate("e => e.naturalWidth") > 0
        assert page.get_by_text(sample_id).count() >= 2  # on its card and in the detail view

        page.wait_for_timeout(800)
        update = os.environ.get("MIMIC_EXPLORER_UPDATE_SCREENSHOT") == "1"
        screenshot = README_SCREENSHOT if update else tmp_path / "screenshot.png"
        page.screenshot(path=str(screenshot))
        page.close()
    _no_traceback(log)
    assert screenshot.stat().st_size > 50_000


def test_demo_mode_builds_on_first_launch_then_explores(browser, tmp_path):
    cache = tmp_path / "cache"
    with served([], tmp_path / "serve.log", env={"MIMIC_EXPLORER_CACHE": str(cache)}) as (url, log):
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url, timeout=120_000)
        page.get_by_text("Building the demo run").first.wait_for(state="visible", timeout=60_000)
        page.get_by_text(KEPT).first.wait_for(state="visible", timeout=300_000)  # the build runs here
        page.locator("canvas").first.wait_for(state="visible", timeout=60_000)
        assert _kept(page)[1] == 1438
        page.close()
    _no_traceback(log)
    assert '"status": "complete"' in (cache / "runs" / "demo-v1" / "meta.json").read_text().replace('":"', '": "')


def test_bad_run_directory_is_a_message_not_a_traceback(browser, tmp_path):
    with served([str(tmp_path / "no-such-run")], tmp_path / "serve.log") as (url, log):
        page = browser.new_page()
        page.goto(url, timeout=120_000)
        message = page.get_by_text("Cannot open the run")
        message.first.wait_for(state="visible", timeout=60_000)
        assert page.get_by_text("does not exist").count() >= 1
        page.close()
    _no_traceback(log)


PAIRS_SCREENSHOT = Path("/tmp/pairs_app.png")
SHARE = re.compile(r"drop the lowest ([\d.]+) %")
TOP = re.compile(r"AND clip_score_ref top ([\d.]+)%")


def _kept_line(page) -> str:
    """The whole "Kept: N of M" block: the count, the rule in words, each further clause."""
    return "\n".join(page.locator(".me-kept, .me-sub").all_inner_texts())


def test_a_pairs_run_with_a_compound_filter_in_a_real_browser(browser, tmp_path):
    """DataComp's "CLIP score top 30 % AND mimic_score not in its lowest 15 %" set by hand in the page:
    captions under the images, "Kept: N of M" follows each clause, the uids keep-list has N rows."""
    import numpy as np

    from mimic_explorer.filters.rules import FilterRule, all_of, apply_rule
    from mimic_explorer.store.reader import open_run
    from tests.ui_helpers import synthetic_pairs_run

    run = synthetic_pairs_run(tmp_path / "pairs", n=800, epochs=2)
    samples = open_run(run).samples
    with served([str(run)], tmp_path / "serve.log") as (url, log):
        page = browser.new_page(viewport={"width": 1600, "height": 1200}, accept_downloads=True)
        page.goto(url, timeout=120_000)
        page.get_by_text(KEPT).first.wait_for(state="visible", timeout=120_000)

        # captions under the images: every card's caption is its sample's own
        captions = page.locator(".me-card .me-caption")
        _wait_for(lambda: captions.count() >= 2 * K, 60, "captions on the cards")
        by_id = dict(zip(samples["sample_id"], samples["caption"]))
        cards = page.locator(".me-card")
        for i in (0, 5, 2 * K - 1):
            card = cards.nth(i)
            assert card.locator(".me-caption").inner_text().strip() == by_id[card.get_attribute("data-id")]
        assert page.locator(".me-card .me-row", has_text="label").count() == 0  # no class labels on pairs

        # first clause: mimic_score, drop the lowest 15 % (Quantile, then the slider down by keyboard)
        start, total = _kept(page)
        assert total == 800
        page.get_by_role("button", name="Quantile").first.click()
        _wait_for(lambda: SHARE.search(_kept_line(page)), 90, "the quantile rule")
        handle = page.locator(".noUi-handle:visible").first
        handle.focus()
        for _ in range(30):
            handle.press("ArrowLeft")
        _wait_for(lambda: "drop the lowest 15.0 %" in _kept_line(page), 90, "the quantile to reach 0.15")

        # second clause: AND clip_score_ref top 30 %
        alone, _ = _kept(page)
        page.get_by_role("button", name="+ AND a rule on another column").click()
        _wait_for(lambda: "AND clip_score_ref" in _kept_line(page), 90, "the second clause")  # keeps all until moved
        clause = page.locator(".me-clause")
        clause.wait_for(state="visible", timeout=60_000)
        clause.get_by_role("button", name="Top %").click()
        both = _wait_for(lambda: (k := _kept(page)[0]) < alone and k, 90, "Kept: N of M to follow the second clause")
        text = _kept_line(page)
        quantile = float(SHARE.search(text).group(1)) / 100
        top = float(TOP.search(text).group(1)) / 100
        expected = apply_rule(
            samples,
            all_of(
                [FilterRule("quantile", quantile, "mimic_score"), FilterRule("top_fraction", top, "clip_score_ref")]
            ),
        )
        assert (quantile, top) == (0.15, 0.3) and both == expected.kept and both < start

        # the uids keep-list: DataComp's subset file, one row per kept pair
        page.locator("select").filter(has_text="uids").select_option("uids")
        page.wait_for_timeout(500)
        with page.expect_download(timeout=60_000) as download:
            page.get_by_role("button", name="Download keep-list").click()
        pairs = np.load(download.value.path())
        assert pairs.dtype == np.dtype([("f0", "<u8"), ("f1", "<u8")]) and len(pairs) == both
        assert np.all(np.sort(pairs, order=["f0", "f1"]) == pairs)
        kept_ids = samples["sample_id"][expected.keep]
        assert {f"{hi:016x}{lo:016x}" for hi, lo in pairs.tolist()} == set(kept_ids)

        page.wait_for_timeout(800)
        page.screenshot(path=str(PAIRS_SCREENSHOT), full_page=False)
        page.close()
    _no_traceback(log)
    assert PAIRS_SCREENSHOT.stat().st_size > 30_000


def test_a_column_sorted_on_first_use_opens_in_a_real_browser(browser, tmp_path):
    """A score column the index did not sort at build: picked in the page, sorted in the server's
    background thread, then opened through the session's own loop — the count follows, no traceback."""
    run = synthetic_run(tmp_path / "run", n=3000, classes=4, epochs=2, thumbnails=False)
    with served([str(run)], tmp_path / "serve.log") as (url, log):
        page = browser.new_page(viewport={"width": 1600, "height": 1050})
        page.goto(url, timeout=120_000)
        page.get_by_text(KEPT).first.wait_for(timeout=120_000)
        before = _settled_kept(page)
        assert _kept(page)[1] == 3000
        select = page.locator("select").first
        assert "reference_loss" in select.evaluate("e => [...e.options].map(o => o.value)")
        select.select_option("reference_loss")
        index = IndexFiles(RunLayout(run).index_dir)
        _wait_for(lambda: list(index.folder.glob("sorted-*.json")), 60, "the column's first sort")
        _wait_for(lambda: not select.is_disabled() and _kept(page)[0] != before, 60, "the column to open")
        assert select.input_value() == "reference_loss"
        page.close()
    _no_traceback(log)
