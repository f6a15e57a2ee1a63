"""Check a run directory against its golden files under ``tests/golden/expected/<case>/``, or rewrite
them when ``MIMIC_EXPLORER_UPDATE_GOLDEN=1``.

A case's golden files: ``samples.json`` (every column of samples.parquet, rows by sample_id),
``scores.json`` (every score row, by epoch then position) and ``meta.json`` (without the keys that
differ between identical runs; see ``snapshot.py``). A missing file is a failure: a golden test that
silently passes without its expectation guards nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.golden.compare import compare_tables, compare_values
from tests.golden.snapshot import take_snapshot
from tests.golden.tables import read_table, table_from_frame, write_table

EXPECTED = Path(__file__).resolve().parent / "expected"
UPDATE_ENV = "MIMIC_EXPLORER_UPDATE_GOLDEN"
FILES = ("samples.json", "scores.json", "meta.json")
#: differences listed in a failure before the rest are counted
SHOWN_LINES = 40


def updating() -> bool:
    """Whether this session rewrites the golden files instead of checking them."""
    return os.environ.get(UPDATE_ENV, "") not in ("", "0")


def check_golden(case: str, run_dir: Path, placeholders: dict[str, str]) -> None:
    """Compare the run in ``run_dir`` with the golden files of ``case`` (fail with a readable diff),
    or rewrite those files (and skip, saying so) when updating.

    Parameters
    ----------
    case
        The folder name under ``expected/``.
    run_dir
        The finished run directory the case's command wrote.
    placeholders
        Path text -> placeholder, replaced in every string before comparing (see ``take_snapshot``).
    """
    snapshot = take_snapshot(run_dir, placeholders)
    samples, scores = table_from_frame(snapshot.samples), table_from_frame(snapshot.scores)
    folder = EXPECTED / case
    if updating():
        folder.mkdir(parents=True, exist_ok=True)
        write_table(samples, folder / "samples.json")
        write_table(scores, folder / "scores.json")
        (folder / "meta.json").write_text(
            json.dumps(snapshot.meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        pytest.skip(f"rewrote the golden files of {case} in {folder} ({UPDATE_ENV}=1): review the diff and commit it")
    absent = [name for name in FILES if not (folder / name).exists()]
    if absent:
        pytest.fail(
            f"golden case {case}: {', '.join(absent)} missing from {folder}; "
            f"run `{UPDATE_ENV}=1 python -m pytest tests/golden` to write them",
            pytrace=False,
        )
    lines = compare_tables("samples", read_table(folder / "samples.json"), samples, ["sample_id"])
    lines += compare_tables("scores", read_table(folder / "scores.json"), scores, ["epoch", "sample_id"])
    lines += compare_values(json.loads((folder / "meta.json").read_text(encoding="utf-8")), snapshot.meta)
    if lines:
        shown = lines[:SHOWN_LINES] + ([f"… and {len(lines) - SHOWN_LINES} more"] if len(lines) > SHOWN_LINES else [])
        pytest.fail(
            f"golden case {case}: the run differs from {folder} in {len(lines)} place(s):\n  "
            + "\n  ".join(shown)
            + f"\n(if the change is intended: {UPDATE_ENV}=1 python -m pytest tests/golden)",
            pytrace=False,
        )
