"""``mimic-explorer score``: mimic scores of one fixed checkpoint against a reference, for any task.

Why chunks: a pool of millions is scored in an ordered pass; chunk c holds the contiguous pool
positions ``c · size … (c + 1) · size − 1`` (a last chunk smaller than a batch may hold joins the one
before) and goes to rank ``c mod world``. Each chunk's bad samples and then its score rows are
written as soon as it is done, so memory stays bounded by the chunk, a killed run resumes at the
first missing chunk, and rank 0 reads the parts back by position, one range at a time, to finish the
run (``commands.finalize``).

Why a resumed run equals an uninterrupted one on any number of processes: which positions form a
chunk, and how a chunk is cut into batches, depend only on the pool, ``--chunk-size`` and
``--batch-size`` — never on the process count. That matters most for image-text pairs, whose scores
are relative to their batch (InfoNCE couples it): a pair is scored with the same batch-mates whether
the run was started under torchrun and finished in one process or not. A part is found whichever
rank wrote it (``RunLayout.chunk_part_of``).

Within a batch the Stage-1 weight is ``softmax(proj)`` so the same Stage-2 rules apply; the default
Stage-2 vote for a single checkpoint is ``proj ≥ 0``. Beside the scores, the mode's reference pass gives
each batch what a train run's end-of-run pass gives (the suggested label, class probabilities, the map's
embeddings): kept per chunk (``store.chunk_signals``) before the chunk's part, so they too survive a kill
and come from whichever rank scored the chunk. The task supplies the batches, the rows and
the samples' columns (``tasks``); nothing here asks which modality it runs.

``--redraws K`` (tasks whose loss couples the batch): each chunk is also scored in K − 1 seeded
shuffles before its pool-order pass, and the rows carry each pair's means over the K batchings
(``scoring.redraws``).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from mimic_explorer.commands.finalize import (
    PoolView,
    Stage2Options,
    finish_samples,
    format_evaluation,
    kept_signals,
    with_positions,
)
from mimic_explorer.commands.lifecycle import Log, RunContext, RunOutcome, run_lifecycle
from mimic_explorer.commands.options import ScoreOptions
from mimic_explorer.commands.prepare import prepare_job
from mimic_explorer.data.errors import ErrorLog
from mimic_explorer.scoring.redraws import RedrawSums
from mimic_explorer.scoring.stage1 import stage1_weights
from mimic_explorer.stage2.pair_quality import add_embedding_sums
from mimic_explorer.store.atomic import write_parquet
from mimic_explorer.store.chunk_signals import (
    POSITIONS,
    ChunkSignals,
    chunk_signals_path,
    gather_signals,
    write_chunk_signals,
)
from mimic_explorer.store.thumbs import ThumbnailWriter
from mimic_explorer.store.writer import drop_error_parts, read_error_parts, write_score_part
from mimic_explorer.tasks.base import Given, Job, Passes, Prepared
from mimic_explorer.training.pool_batches import chunk_bounds
from mimic_explorer.training.pool_pass import thumbnail_pass
from mimic_explorer.util.distributed import DistContext
from mimic_explorer.util.progress import Progress

ScoreRun = RunContext[ScoreOptions, Job]
#: step numbers a chunk's batches may use: the step of batch b of chunk c is c · STEPS_PER_CHUNK + b
STEPS_PER_CHUNK = 100_000


def run_score(
    options: ScoreOptions, progress: Progress | None = None, log: Log | None = None, *, given: Given | None = None
) -> RunOutcome:
    """Score every sample of the pool (or return the finished run, or resume the unfinished one).

    The same as ``mimic-explorer score``: the pool is cut into chunks of ``options.chunk_size``
    positions, chunk c goes to process c mod world under ``torchrun``, and a killed run resumes from
    the first missing chunk on any number of processes.

    Parameters
    ----------
    options
        The checkpoint, its reference and the pool to score (``ScoreOptions``).
    progress
        Called as ``progress(stage, done, total)`` as the work advances (default: nothing).
    log
        Called with each line for the person running it (default: standard error); also kept in ``run.log``.
    given
        A pool or models the caller holds already (``mimic_explorer.commands.python_api``), in place of what
        ``options`` names.

    Returns
    -------
    RunOutcome
        The run directory (``path``), the summary also written to ``meta.json``, whether the run was
        already there (``cached``) and the evaluation table (``report``).

    Raises
    ------
    ValueError
        A bad option, or ``options.out`` holding a different or unreadable run (unless ``force``); said
        before anything is written.
    RunDirectoryError
        ``options.out`` cannot be used, or another process is writing it.
    """

    def prepare(options: ScoreOptions, ctx: DistContext, device: str) -> Prepared[Job]:
        return prepare_job(options, device, given=given)

    return run_lifecycle(options, prepare, _score_and_finalize, progress=progress, log=log)


def score_step(chunk: int, step: int) -> int:
    """The ``step`` of the ``step``-th batch of ``chunk``: unique over the run, ascending in pool order,
    and the same whichever rank (and however many ranks) scored the chunk."""
    return chunk * STEPS_PER_CHUNK + step


def _score_and_finalize(run: ScoreRun) -> RunOutcome:
    options, ctx, layout, job = run.options, run.dist, run.layout, run.inputs
    task, source = job.task, job.pool.source
    started = time.perf_counter()
    errors = ErrorLog()  # found once, on rank 0: unreadable shards, a linear probe's bad images
    if ctx.is_main:
        errors.extend(source.open_errors)
    resuming = bool(layout.chunk_parts())
    thumbs = ThumbnailWriter(run.out) if ctx.is_main and not (resuming and layout.thumbs_index.exists()) else None
    mode = task.score_mode(job, options, run)
    mode.prepare(Passes(thumbs, errors if ctx.is_main else ErrorLog(), {}, run.progress))
    scorer = mode.scorer()
    chunks = chunk_bounds(len(source), options.chunk_size, task.min_batch)
    mine = list(range(ctx.rank, len(chunks), ctx.world))
    thumbnailed: set[int] = set()
    for done, chunk in enumerate(mine, start=1):
        if layout.chunk_part_of(chunk) is None:  # else finished before an interruption
            start, stop = chunks[chunk]
            found = ErrorLog()
            rows, signals, totals = [], [], {}
            redrawn = _redrawn_scores(mode, scorer, start, stop, options.redraws)
            for step, batch in enumerate(mode.batches(start, stop, Passes(thumbs, found, {}, run.progress))):
                scores = scorer(batch.inputs, batch.targets)
                if redrawn is not None:  # the means over every batching of the chunk
                    scores = redrawn.averaged(batch.positions, scores)
                signal = scores.proj if options.score_method == "proj" else scores.cos
                weights = stage1_weights(signal, "normed_" + options.score_method, options.temperature)
                seen = mode.reference_pass(batch)
                rows.append(task.score_rows(job, batch, scores, weights, score_step(chunk, step), seen))
                signals.append({POSITIONS: batch.positions, **kept_signals(seen.signals, options.embeddings)})
                add_embedding_sums(totals, seen.signals)  # also with --no-embeddings: the pairs' quality estimate
            if redrawn is not None:
                totals.update(redrawn.totals())
            # both before the part, which says the chunk is done: a kill between loses nothing
            write_chunk_signals(chunk_signals_path(layout, chunk), *_split_positions(gather_signals(signals)), totals)
            write_parquet(layout.error_part(chunk), found.to_frame())
            write_score_part(layout.chunk_part(chunk, ctx.rank if ctx.active else None), _concat(rows))
            if thumbs is not None and mode.decodes():
                thumbnailed.add(chunk)
        run.progress("scoring", done, len(mine))
    if thumbs is not None:  # chunks another rank scored, or scored from features or before a resume
        _thumbnail_the_rest(job, options, thumbs, chunks, thumbnailed)
        thumbs.close()
    ctx.barrier()
    if not ctx.is_main:
        return run.outcome({})
    return _finalize(run, errors, started)


def _redrawn_scores(mode, scorer, start: int, stop: int, draws: int) -> RedrawSums | None:
    """``--redraws K``: the scores of the chunk's K − 1 re-drawn batchings, summed per pair (None for one)."""
    if draws <= 1:
        return None
    sums = RedrawSums(start, stop)
    for draw in range(1, draws):
        for batch in mode.redrawn_batches(start, stop, draw):
            sums.add(batch.positions, scorer(batch.inputs, batch.targets))
    return sums


def _split_positions(signals: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rest = dict(signals)
    return rest.pop(POSITIONS), rest


def _concat(rows: list) -> pd.DataFrame:
    import pyarrow as pa

    if not rows:
        return pd.DataFrame(columns=["sample_id", "epoch", "step", "position", "proj", "weight"])
    return pa.concat_tables(rows)


def _thumbnail_the_rest(
    job: Job, options: ScoreOptions, thumbs: ThumbnailWriter, chunks, thumbnailed: set[int]
) -> None:
    """Rank 0's thumbnails of the samples it did not decode while scoring: other ranks' chunks, its own
    chunks scored before an interruption, a linear probe's (scored from features) — without them the
    app shows no image. Bad samples are not recorded again: the chunk that scored them did."""
    source = job.pool.source

    def add(positions: np.ndarray, items: list) -> None:
        for p, t in zip(positions, items, strict=True):
            thumbs.add(source.sample_ids[p], t)

    for chunk, (start, stop) in enumerate(chunks):
        if chunk not in thumbnailed:
            thumbnail_pass(source, job.pool.labels, add, options.workers, indices=np.arange(start, stop))


def _finalize(run: ScoreRun, errors: ErrorLog, started: float) -> RunOutcome:
    """Stage 2 into samples.parquet one range of pool positions at a time (``finalize.finish_samples``),
    then errors and meta."""
    options, layout, writer, job = run.options, run.layout, run.writer, run.inputs
    task = job.task
    merged = pd.concat([errors.to_frame(), read_error_parts(layout)], ignore_index=True).drop_duplicates("sample_id")
    all_errors, bad = with_positions(merged, job.sample_ids)
    chunks = ChunkSignals(layout, chunk_bounds(len(job.pool.source), options.chunk_size, task.min_batch))
    clean = task.clean_pairs(job, options, chunks.totals, run.device)
    finished = finish_samples(
        writer,
        PoolView(len(job.pool.source), bad, task.score_base_rows(job, layout), chunks if chunks.available() else None),
        Stage2Options(
            options.binarisation, options.aggregation, losses_from_rows=task.losses_from_rows(), clean_pairs=clean
        ),
    )
    summary = {**finished.summary, "skipped": len(all_errors), **task.score_summary(job, options, layout, run.log)}
    summary.pop("true_quality", None)
    writer.write_errors(all_errors)
    drop_error_parts(layout)
    if len(all_errors):
        run.log(f"skipped {len(all_errors)} bad {task.noun}(s); see {layout.errors}")
    writer.meta.set(
        evaluation=finished.evaluation,
        stage2={"binarisation": options.binarisation, "aggregation": options.aggregation},
        timings={"score_s": time.perf_counter() - started},
    )
    return run.outcome(summary, report=format_evaluation(finished.evaluation))
