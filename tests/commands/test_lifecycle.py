"""The run lifecycle every command shares, with a stand-in command (no model, no data): validate
before anything is written, cache, refuse, resume, lock, failure, finalize."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import pandas as pd
import pytest

from mimic_explorer.commands.lifecycle import Prepared, RunContext, RunOutcome, run_lifecycle
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.meta import read_run_meta
from mimic_explorer.store.writer import RunDirectoryError


@dataclass
class StandIn:
    """Options of a stand-in command that scores ``chunks`` chunks, optionally stopping after ``stop_after``."""

    command: ClassVar[str] = "standin"
    device: ClassVar[str] = "cpu"
    out: str
    chunks: int = 3
    force: bool = False
    stop_after: int | None = None  # how a run is made, not what it computes: not in the identity
    calls: list = field(default_factory=list)

    def validate(self) -> None:
        if self.chunks < 1:
            raise ValueError(f"--chunks must be >= 1, got {self.chunks}")

    def identity(self) -> dict:
        return {"command": self.command, "chunks": self.chunks}

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "calls"}

    def describe(self) -> str:
        return f"standin {self.chunks} chunks"


def _prepare(options: StandIn, dist, device: str) -> Prepared[list[str]]:
    ids = [f"s{i}" for i in range(options.chunks)]
    return Prepared(ids, {"data": "fp-data"}, {"class_names": ["a", "b"], "same_init": True}, ["mind the gap"])


def _work(run: RunContext[StandIn, list[str]]) -> RunOutcome:
    run.options.calls.append(run.resuming)
    layout = run.layout
    for chunk, sample_id in enumerate(run.inputs):
        if layout.chunk_part(chunk).exists():
            continue
        if run.options.stop_after is not None and chunk > run.options.stop_after:
            raise RuntimeError(f"stopped before chunk {chunk}")
        run.writer.write_scores(layout.chunk_part(chunk), pd.DataFrame({"sample_id": [sample_id], "epoch": [0]}))
        layout.state.write_bytes(b"resume point")
    run.writer.write_samples(pd.DataFrame({"sample_id": run.inputs}))
    return run.outcome({"samples": len(run.inputs)}, report="all good")


def _run(options: StandIn, resumable: bool = True, messages: list | None = None) -> RunOutcome:
    log = messages.append if messages is not None else lambda text: None
    return run_lifecycle(options, _prepare, _work, resumable=resumable, log=log)


def test_a_run_goes_from_options_to_a_complete_directory(tmp_path):
    messages: list[str] = []
    options = StandIn(str(tmp_path / "run"))
    outcome = _run(options, messages=messages)
    layout = RunLayout(tmp_path / "run")
    assert outcome == RunOutcome(layout.root, {"samples": 3}, cached=False, report="all good")
    meta = read_run_meta(layout.root)
    assert meta.status == "complete" and meta.kind == "standin" and meta.run_id.startswith("standin-")
    assert meta.fingerprints == {"data": "fp-data"} and meta.class_names == ["a", "b"] and meta.same_init is True
    assert meta.warnings == ["mind the gap"] and meta.summary == {"samples": 3}
    assert meta.device == "cpu" and meta.world_size == 1 and meta.timings["total_s"] >= 0
    assert meta.config["chunks"] == 3 and meta.finished
    assert not layout.lock.exists() and not layout.state.exists()  # a complete run keeps no resume point
    assert len(layout.chunk_parts()) == 3 and options.calls == [False]
    log = layout.log.read_text()
    assert "standin 3 chunks -> " in log and "WARNING: mind the gap" in log
    assert messages == ["WARNING: mind the gap"]  # the terminal gets the problem, not the bookkeeping


def test_the_same_options_return_the_finished_run_without_working(tmp_path):
    first = StandIn(str(tmp_path / "run"))
    _run(first)
    samples = RunLayout(tmp_path / "run").samples
    before = samples.stat().st_mtime_ns
    again = StandIn(str(tmp_path / "run"))
    messages: list[str] = []
    outcome = _run(again, messages=messages)
    assert outcome.cached and outcome.summary == {"samples": 3}
    assert again.calls == [] and samples.stat().st_mtime_ns == before
    assert messages and messages[0].startswith("cached:")
    forced = StandIn(str(tmp_path / "run"), force=True)
    assert not _run(forced).cached and forced.calls == [False] and samples.stat().st_mtime_ns != before


def test_a_different_run_is_refused_before_anything_is_touched(tmp_path):
    _run(StandIn(str(tmp_path / "run")))
    layout = RunLayout(tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in layout.root.rglob("*")}
    other = StandIn(str(tmp_path / "run"), chunks=2)
    with pytest.raises(ValueError, match="holds a different run"):
        _run(other)
    assert other.calls == [] and {p: p.stat().st_mtime_ns for p in layout.root.rglob("*")} == before
    forced = StandIn(str(tmp_path / "run"), chunks=2, force=True)
    assert _run(forced).summary == {"samples": 2}
    assert len(layout.chunk_parts()) == 2  # the forced run started from nothing


@pytest.mark.parametrize(
    "meta, why",
    [
        ('{"status": "complete", ', "cannot be read"),
        ('{"status": "complete", "format_version": 9, "run_id": "x"}', "is format 9"),
    ],
)
def test_a_run_directory_it_cannot_read_is_refused_untouched_unless_forced(tmp_path, meta, why):
    """An unreadable or newer-format meta.json in --out is never taken for an empty folder and overwritten."""
    layout = RunLayout(tmp_path / "run")
    layout.root.mkdir()
    layout.meta.write_text(meta)
    (layout.root / "precious.parquet").write_bytes(b"keep me")
    options = StandIn(str(layout.root))
    with pytest.raises(ValueError, match=why):
        _run(options)
    assert options.calls == [] and layout.meta.read_text() == meta and (layout.root / "precious.parquet").exists()
    assert _run(StandIn(str(layout.root), force=True)).summary == {"samples": 3}


def test_bad_options_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="--chunks must be >= 1"):
        _run(StandIn(str(tmp_path / "run"), chunks=0))
    assert not (tmp_path / "run").exists()


def test_a_failed_run_says_why_and_the_same_command_resumes_it(tmp_path):
    layout = RunLayout(tmp_path / "run")
    with pytest.raises(RuntimeError, match="stopped before chunk 1"):
        _run(StandIn(str(layout.root), stop_after=0))
    meta = read_run_meta(layout.root)
    assert meta.status == "failed" and "stopped before chunk 1" in meta.error
    assert not layout.lock.exists()
    kept = layout.chunk_part(0).stat().st_mtime_ns
    resumed = StandIn(str(layout.root))
    assert _run(resumed).summary == {"samples": 3}
    assert resumed.calls == [True] and layout.chunk_part(0).stat().st_mtime_ns == kept


def test_a_command_that_cannot_resume_starts_afresh(tmp_path):
    layout = RunLayout(tmp_path / "run")
    with pytest.raises(RuntimeError):
        _run(StandIn(str(layout.root), stop_after=0))
    kept = layout.chunk_part(0).stat().st_mtime_ns
    fresh = StandIn(str(layout.root))
    _run(fresh, resumable=False)
    assert fresh.calls == [False] and layout.chunk_part(0).stat().st_mtime_ns != kept


def test_a_run_being_written_by_a_live_process_is_refused_untouched(tmp_path):
    layout = RunLayout(tmp_path / "run")
    with pytest.raises(RuntimeError):
        _run(StandIn(str(layout.root), stop_after=0))
    layout.lock.write_text(str(os.getpid()))  # a live writer (this very process)
    before = {p: p.stat().st_mtime_ns for p in layout.root.rglob("*")}
    blocked = StandIn(str(layout.root))
    with pytest.raises(RunDirectoryError, match="another process"):
        _run(blocked)
    assert blocked.calls == [] and {p: p.stat().st_mtime_ns for p in layout.root.rglob("*")} == before


def test_out_that_is_a_file_is_refused_and_kept(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    with pytest.raises(RunDirectoryError, match="not a directory"):
        _run(StandIn(str(target)))
    assert target.read_text() == "keep me"


@dataclass
class Threaded(StandIn):
    threads: int | None = None


def test_a_run_uses_the_threads_asked_for_says_so_in_its_log_and_gives_the_callers_back(tmp_path):
    import torch

    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    seen = []

    def work(run):
        seen.append(torch.get_num_threads())
        return _work(run)

    run_lifecycle(Threaded(str(tmp_path / "run"), threads=wanted), _prepare, work, log=lambda text: None)
    assert seen == [wanted] and torch.get_num_threads() == before
    assert f"1 process(es), {wanted} thread(s))" in RunLayout(tmp_path / "run").log.read_text()
