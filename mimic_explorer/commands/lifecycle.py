"""One run's life, the same for ``train``, ``score`` and ``demo``.

validate → torch's threads for the run (``util.threads``; the caller's count comes back after it) →
prepare (inputs and their fingerprints; nothing is written) → run id → reuse, refuse or resume (rank 0
decides, every rank follows) → ``RunWriter`` (creates the directory and takes its lock before anything
in it is touched) → the command's work loop, under the failure guard → finalize (summary, total time,
status complete) → ``RunOutcome``.

Why one module: every command used to run its own copy of this sequence, and the copies drifted (one
created the directory twice, one never refused a different run). A command now supplies its options,
a ``prepare`` and a ``work`` function and nothing else about a run's life. The walk from ``--out`` to
the app is in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import torch

from mimic_explorer.commands.guard import failure_recorded
from mimic_explorer.commands.run_identity import agree_on_reuse, make_run_id, remove_leftover_scratch
from mimic_explorer.commands.runlog import tee_log
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.meta import read_run_meta
from mimic_explorer.store.writer import RunDirectoryError, RunWriter
from mimic_explorer.tasks.base import Prepared
from mimic_explorer.util.distributed import DistContext, init_distributed, resolve_device
from mimic_explorer.util.progress import Progress
from mimic_explorer.util.threads import run_threads

Log = Callable[[str], None]
Inputs = TypeVar("Inputs")
Options = TypeVar("Options", bound="RunSpec")


class RunSpec(Protocol):
    """What the lifecycle needs of a command's options (``TrainOptions``, ``ScoreOptions``, the demo's)."""

    command: str  # train | score | demo: the run id's prefix and meta's ``kind``
    out: str
    force: bool
    device: str

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad option, before anything is written."""

    def identity(self) -> dict[str, Any]:
        """The options that decide the run's numbers (hashed into the run id with the fingerprints)."""

    def to_dict(self) -> dict[str, Any]:
        """Every option, as ``meta.json`` records it under ``config``."""

    def describe(self) -> str:
        """One line for ``run.log``: what is run on what."""


@dataclass
class RunOutcome:
    """Where the run is, its summary (also in ``meta.json``), whether it was already there, and the
    evaluation table to print."""

    path: Path
    summary: dict
    cached: bool = False
    report: str = ""


@dataclass
class RunContext(Generic[Options, Inputs]):
    """Everything a command's work loop gets, on every rank."""

    options: Options
    dist: DistContext
    device: str
    layout: RunLayout
    writer: RunWriter | None  # rank 0 only: the other ranks write their own parts, never meta.json
    inputs: Inputs
    resuming: bool  # the directory holds an unfinished run of this id; its parts are kept
    progress: Progress
    log: Log

    @property
    def out(self) -> Path:
        """The run directory."""
        return self.layout.root

    def outcome(self, summary: dict, report: str = "") -> RunOutcome:
        """The outcome of this run with ``summary`` (and the evaluation table ``report``)."""
        return RunOutcome(self.layout.root, summary, report=report)


Prepare = Callable[[Options, DistContext, str], Prepared[Inputs]]
Work = Callable[[RunContext[Options, Inputs]], RunOutcome]


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr)


def run_lifecycle(
    options: Options,
    prepare: Prepare,
    work: Work,
    *,
    resumable: bool = True,
    progress: Progress | None = None,
    log: Log | None = None,
) -> RunOutcome:
    """Make the run ``options`` describe — or return the finished one ``--out`` already holds, or
    resume the unfinished one (when ``resumable``), or refuse a different one — and return its outcome.

    Raises ``ValueError`` for bad options or a different run in ``--out`` (before anything is written)
    and ``RunDirectoryError`` when ``--out`` cannot be used or another process is writing it."""
    options.validate()
    with run_threads(getattr(options, "threads", None)) as threads:
        dist = init_distributed(_backend_device(options.device))
        try:
            device = resolve_device(options.device, dist)
            return _live(
                options,
                prepare,
                work,
                dist,
                device,
                threads,
                resumable,
                progress or (lambda stage, done, total: None),
                log or _to_stderr,
            )
        finally:
            dist.close()


def _backend_device(device: str) -> str:
    return "cuda" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "cpu"


def _live(
    options: Options,
    prepare: Prepare,
    work: Work,
    dist: DistContext,
    device: str,
    threads: int,
    resumable: bool,
    progress: Progress,
    log: Log,
) -> RunOutcome:
    prepared = prepare(options, dist, device)
    layout = RunLayout(options.out)
    run_id = make_run_id(options.command, options.identity(), prepared.fingerprints)
    state, finished = agree_on_reuse(dist, layout.root, run_id, options.force, log)
    if finished is not None:
        return RunOutcome(layout.root, finished, cached=True)
    resuming = resumable and state == "resumable" and not options.force
    if resuming and not getattr(options, "resumes_on_any_process_count", True):
        _check_same_process_count(layout, dist, options.command)
    writer = _open_writer(options, dist, layout, run_id, device, prepared, resuming)
    with failure_recorded(writer, dist):  # from here on whatever fails (writing run.log too) lets go of the lock
        tee_log(layout.log, lambda text: None, dist.rank)(
            f"{options.describe()} -> {layout.root} (device {device}, {dist.world} process(es), {threads} thread(s))"
        )
        log = tee_log(layout.log, log, dist.rank)
        if dist.is_main:
            for warning in prepared.warnings:
                log("WARNING: " + warning)
            for note in prepared.notes:
                log("note: " + note)
        run = RunContext(options, dist, device, layout, writer, prepared.inputs, resuming, progress, log)
        outcome = work(run)
        if writer is not None:
            _finalize(writer, outcome)
        return outcome


def _check_same_process_count(layout: RunLayout, dist: DistContext, command: str) -> None:
    """Refuse, before anything is touched, to resume a run on another number of processes when its
    command cannot: a training run's batches are each rank's part of the epoch's permutation, so a
    run started on N processes and finished on M would train on neither's batches."""
    started = read_run_meta(layout.root).world_size
    if started and started != dist.world:
        how = "without torchrun" if started == 1 else f"under torchrun --nproc_per_node={started} (in all)"
        raise ValueError(
            f"{layout.root} holds an unfinished {command} run started with {started} process(es), and "
            f"this one has {dist.world}: resume it {how}, or pass --force to start it afresh"
        )


def _open_writer(
    options: RunSpec, dist: DistContext, layout: RunLayout, run_id: str, device: str, prepared: Prepared, resuming: bool
) -> RunWriter | None:
    """Rank 0 creates and locks the run directory, clears what a fresh run must not inherit and
    records what is known; every rank learns whether it could (so none waits on a refused run)."""
    writer, failure = None, None
    if dist.is_main:
        try:
            writer = _start_writer(options, dist, layout, run_id, device, prepared, resuming)
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks are told
            failure = exc
    refused = dist.broadcast_object(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if refused is not None:
        raise RunDirectoryError(refused)
    return writer


def _start_writer(
    options: RunSpec, dist: DistContext, layout: RunLayout, run_id: str, device: str, prepared: Prepared, resuming: bool
) -> RunWriter:
    # the lock comes first; the first meta.json written names the run (a kill at any point leaves a run to resume)
    facts = dict(
        run_id=run_id,
        fingerprints=dict(prepared.fingerprints),
        device=device,
        world_size=dist.world,
        warnings=list(prepared.warnings),
        **prepared.facts,
    )
    return RunWriter(layout.root, kind=options.command, config=options.to_dict(), facts=facts, fresh=not resuming)


def _finalize(writer: RunWriter, outcome: RunOutcome) -> None:
    """Rank 0, after the work loop wrote samples and errors: the summary, the total time, no resume
    point, and — the last write — status complete; then the finishing stage's scratch files go.

    Why after: a finish killed before ``meta.json`` says complete is finished again on resume, and needs
    what the scratch files hold (a score run's per-chunk reference signals). A kill between the two
    leaves them in a complete run; the next command that reuses it removes them
    (``run_identity.remove_leftover_scratch``)."""
    writer.meta.summary = outcome.summary
    writer.meta.timings["total_s"] = time.perf_counter() - writer.started
    writer.layout.state.unlink(missing_ok=True)
    writer.complete()
    remove_leftover_scratch(writer.layout)
