"""Fixtures of the browser tests: one headless Chromium (Debian's, driven by Playwright) per test module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: Debian's chromium package (never a browser build that Playwright downloads)
CHROMIUM = "/usr/bin/chromium"


def _need_browser():
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(CHROMIUM)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package")
    if missing:
        message = f"browser tests need {' and '.join(missing)}"
        if os.environ.get("MIMIC_EXPLORER_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    """A launched Chromium: skipped without one — failed instead under ``MIMIC_EXPLORER_REQUIRE_BROWSER=1`` (CI)."""
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()
