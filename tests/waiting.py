"""Waiting for what another process does (a run writing its parts, a server starting): poll until it
has happened, or fail the test saying what never happened.

Why one helper: a polling loop that simply ends at its deadline lets the test go on as if the wait had
succeeded, and then fails later on a confusing symptom — or not at all. Every wait in the tests goes
through ``wait_for``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    process: subprocess.Popen | None = None,
    interval: float = 0.05,
) -> T:
    """Poll ``predicate`` until it returns a true value, and return that value.

    Parameters
    ----------
    predicate
        Called every ``interval`` seconds; the wait ends at its first true value.
    timeout
        Seconds before the test fails, naming ``what``.
    what
        What is awaited, as the failure message says it ("the first epoch part").
    process
        The process expected to bring it about: the test fails as soon as it has exited without it.
    interval
        Seconds between two calls of ``predicate``.

    Returns
    -------
    The first true value ``predicate`` returned.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process exited with status {process.returncode} before {what}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}", pytrace=False)
        time.sleep(interval)
