"""The fault suite's shared pieces: the warm process that runs every command, the pools and checkpoints
the commands use (made once per session by the commands themselves), the uninterrupted run of each
command, and the tally of faults tried, survived and lost — printed at the end of the session and
written to ``faults-tally.json`` in the session's temporary folder (and to
``$MIMIC_EXPLORER_FAULTS_TALLY`` when set)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.commands import COMMANDS, Baseline, make_baseline
from tests.faults.harness import Tally, Zygote
from tests.faults.workspace import Workspace, make_workspace

TALLY = Tally()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if TALLY.rows:
        terminalreporter.write_sep("-", "faults survived")
        terminalreporter.write_line(TALLY.table())
        target = os.environ.get("MIMIC_EXPLORER_FAULTS_TALLY")
        if target:
            TALLY.write(Path(target))


@pytest.fixture(scope="session")
def tally(tmp_path_factory) -> Tally:
    yield TALLY
    TALLY.write(tmp_path_factory.getbasetemp() / "faults-tally.json")


@pytest.fixture(scope="session")
def zygote(tmp_path_factory) -> Zygote:
    process = Zygote(tmp_path_factory.mktemp("zygote"))
    yield process
    process.close()


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, zygote) -> Workspace:
    return make_workspace(tmp_path_factory.mktemp("faults"), zygote)


@pytest.fixture(scope="session")
def baselines(tmp_path_factory, zygote, workspace):
    """``baselines(name)``: the uninterrupted run of command ``name`` (made on first use)."""
    made: dict[str, Baseline] = {}
    root = tmp_path_factory.mktemp("baselines")

    def get(name: str) -> Baseline:
        if name not in made:
            made[name] = make_baseline(COMMANDS[name], workspace, zygote, root / str(len(made)))
        return made[name]

    return get
