"""Run directories as ``store/writer.RunWriter`` writes them and ``store/reader.open_run`` opens them: atomic
writes, the writer lock, a run complete only once completed, and clear errors when opening."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from mimic_explorer.store.reader import RunError, open_run
from mimic_explorer.store.writer import RunDirectoryError, RunWriter


def test_a_run_is_complete_only_after_complete(tmp_path):
    writer = RunWriter(tmp_path / "r", kind="test", config={"a": 1})
    with pytest.raises(RunError, match="not complete"):
        open_run(tmp_path / "r")
    writer.write_samples(pd.DataFrame({"sample_id": ["a"], "mimic_score": [1.0]}))
    writer.complete(run_id="r")
    run = open_run(tmp_path / "r")
    assert run.status == "complete" and run.samples["sample_id"].tolist() == ["a"]
    assert not (tmp_path / "r" / ".lock").exists()


def test_second_writer_is_refused_while_the_first_lives(tmp_path):
    RunWriter(tmp_path / "r", kind="test", config={})
    with pytest.raises(RunDirectoryError, match="another process"):
        RunWriter(tmp_path / "r", kind="test", config={})


def test_failed_run_keeps_reason(tmp_path):
    writer = RunWriter(tmp_path / "r", kind="test", config={})
    writer.fail("boom")
    with pytest.raises(RunError, match="boom"):
        open_run(tmp_path / "r")


def test_open_run_errors_name_the_cause(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        open_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="no meta.json"):
        open_run(tmp_path / "empty")
    (tmp_path / "newer").mkdir()
    (tmp_path / "newer" / "meta.json").write_text(json.dumps({"format_version": 99, "status": "complete"}))
    with pytest.raises(RunError, match="newer"):
        open_run(tmp_path / "newer")


def test_no_temporary_files_are_left_behind(tmp_path):
    writer = RunWriter(tmp_path / "r", kind="test", config={})
    writer.write_scores(writer.layout.epoch_part(0), pd.DataFrame({"sample_id": ["a"], "epoch": [0]}))
    writer.complete()
    leftovers = [p for p in (tmp_path / "r").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert oct(os.stat(tmp_path / "r" / "meta.json").st_mode & 0o777) != "0o600"
