"""``mimic-explorer train``: plain training (to make references) or Grad-Mimic with recording, for any task.

Flow (the run's life around it is ``commands.lifecycle``'s): open the pool → the task (by the pool's
kind, ``tasks.task_for``) refuses options it cannot use, injects noise, builds model and reference
(checks) → run id / cache / resume → the task's training mode makes its first pass (cached features,
held tower outputs, or only the good samples and thumbnails) → Stage-1 training; at each checkpoint
(time interval, last epoch) the recorded epochs as a part file per rank, then a resumable state →
rank 0: the end-of-run signals, Stage 2, evaluation, meta complete. Nothing here asks which modality
it runs: the task and its mode answer (docs/ARCHITECTURE.md, the task × mode table).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from mimic_explorer.commands.finalize import (
    PoolView,
    Stage2Options,
    finish_samples,
    format_evaluation,
    kept_signals,
    with_positions,
)
from mimic_explorer.commands.lifecycle import Log, RunContext, RunOutcome, run_lifecycle
from mimic_explorer.commands.options import TrainOptions
from mimic_explorer.commands.prepare import prepare_job
from mimic_explorer.data.errors import ERROR_COLUMNS, BadSample, ErrorLog
from mimic_explorer.store.atomic import write_parquet
from mimic_explorer.store.thumbs import ThumbnailWriter
from mimic_explorer.store.writer import drop_error_parts, read_error_parts
from mimic_explorer.tasks.base import Given, Job, Passes, Prepared
from mimic_explorer.training.epoch_parts import EpochParts, resume_epoch
from mimic_explorer.training.loop import NonFiniteLossError, TrainConfig, train
from mimic_explorer.util.distributed import DistContext
from mimic_explorer.util.progress import Progress

TrainRun = RunContext[TrainOptions, Job]


def run_train(
    options: TrainOptions, progress: Progress | None = None, log: Log | None = None, *, given: Given | None = None
) -> RunOutcome:
    """Make (or reuse, or resume) a training run and return where it is and its summary.

    The same as ``mimic-explorer train``: under ``torchrun`` every process calls it and each trains on
    its part of every epoch. A run killed part-way resumes from its last checkpoint when called again
    with the same options (on the process count it began with).

    Parameters
    ----------
    options
        What to train and where to write it (``TrainOptions``).
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

    def prepare(options: TrainOptions, ctx: DistContext, device: str) -> Prepared[Job]:
        return prepare_job(options, device, check_size=True, given=given)

    return run_lifecycle(options, prepare, _train_and_finalize, progress=progress, log=log)


def _config(options: TrainOptions, device: str) -> TrainConfig:
    return TrainConfig(
        epochs=options.epochs,
        batch_size=options.batch_size,
        lr=options.lr,
        weight_decay=options.weight_decay,
        optimizer=options.optimizer,
        method=options.method,
        temperature=options.temperature,
        reweight=options.reweight,
        starting_epoch=options.starting_epoch,
        seed=options.seed,
        device=device,
    )


def _non_finite(job: Job, exc: NonFiniteLossError, positions) -> ValueError:
    ids = [str(job.sample_ids[positions[p]]) for p in exc.positions]
    more = f" (+{len(ids) - 10} more)" if len(ids) > 10 else ""
    return ValueError(
        f"non-finite loss for {job.task.noun}(s) {', '.join(ids[:10])}{more}; the run is marked failed and "
        "the epochs already recorded are kept"
    )


def _train_and_finalize(run: TrainRun) -> RunOutcome:
    options, ctx, layout, job = run.options, run.dist, run.layout, run.inputs
    task, models, source = job.task, job.models, job.pool.source
    mode = task.train_mode(job, options, run)
    saved_epoch = resume_epoch(run)
    errors = ErrorLog()
    if ctx.is_main:
        errors.extend(source.open_errors)
    keep_thumbs = saved_epoch >= 0 and layout.thumbs_index.exists()  # kept only when resuming
    thumbs = ThumbnailWriter(run.out) if ctx.is_main and not keep_thumbs else None
    timings: dict[str, Any] = {}
    held = mode.first_pass(Passes(thumbs, errors, timings, run.progress))
    if thumbs is not None:  # the first pass's bad samples, then the thumbnails' index that marks the pass done
        write_parquet(layout.first_pass_errors, errors.to_frame())
        thumbs.close()
    elif ctx.is_main:  # resumed: a fine-tune's first pass was skipped, and with it the bad samples it found
        errors.extend(BadSample(*row) for row in read_error_parts(layout)[list(ERROR_COLUMNS)].itertuples(index=False))
    trained, reference_part = mode.parts()
    batches = mode.batches(held)
    drift = mode.drift() if ctx.is_main else None  # before a resumed state is loaded: it keeps where the run began
    start_epoch, optimizer_state = 0, None
    if saved_epoch >= 0:
        saved = torch.load(layout.state, weights_only=True, map_location=run.device)
        trained.load_state_dict(saved["model"])
        optimizer_state, start_epoch = saved["optimizer"], saved_epoch + 1
        if drift is not None:
            drift.per_epoch = list(saved.get("drift", []))  # the epochs measured before the run was stopped
        run.log(f"resuming {run.out} after epoch {saved_epoch}")
    parts = EpochParts(
        layout,
        job.sample_ids[held.positions],
        ctx,
        last_epoch=options.epochs - 1,
        every_s=options.checkpoint_every,
        positions=held.positions,
    )

    def on_checkpoint(epoch, module, optimizer) -> None:
        if drift is not None:
            drift.measure(epoch)
        if parts.due(epoch):
            parts.checkpoint(
                epoch,
                lambda: {
                    "model": module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "drift": [] if drift is None else list(drift.per_epoch),
                },
            )

    scored = models.reference is not None
    started = time.perf_counter()
    if start_epoch < options.epochs:
        try:
            train(
                trained,
                batches,
                _config(options, run.device),
                reference=reference_part,
                on_epoch=parts.add,
                progress=lambda d, t: run.progress("Grad-Mimic" if scored else "training", d, t),
                start_epoch=start_epoch,
                optimizer_state=optimizer_state,
                on_checkpoint=on_checkpoint,
                grad_sync=ctx.average_gradients if ctx.active else None,
                steps_per_epoch=batches.plan.batch_count,
                **mode.loop_options(),
            )
        except NonFiniteLossError as exc:
            raise _non_finite(job, exc, held.positions) from None
    timings["train_s"] = time.perf_counter() - started
    ctx.barrier()  # rank 0 finishes the run
    if not ctx.is_main:
        return run.outcome({})
    return _finalize(run, mode, held, batches, trained, errors, drift, timings)


def _without_embeddings(signals):
    """``signals`` (positions → signal arrays) without the embeddings (``--no-embeddings``)."""
    return lambda positions: kept_signals(signals(positions), embeddings=False)


def _finalize(run: TrainRun, mode, held, batches, trained, errors: ErrorLog, drift, timings: dict) -> RunOutcome:
    """Rank 0: the saved model, the end-of-run signals, Stage 2 into samples.parquet, the summary,
    the held-out metric, the drift and errors — then the lifecycle marks the run complete."""
    options, writer, job = run.options, run.writer, run.inputs
    task, models, source = job.task, job.models, job.pool.source
    scored = models.reference is not None
    if options.save_model:
        task.save_model(job, options, writer.meta, held)
    errors_frame, bad = with_positions(errors.to_frame(), source.sample_ids)
    found = mode.signals(held, batches) if scored else None
    base, signals = task.train_rows(job, held, found)
    clean = task.clean_pairs(job, options, lambda: getattr(found, "sums", None), run.device) if scored else None
    binarisation = options.binarisation or task.default_binarisation()
    if signals is not None and not options.embeddings:
        signals = _without_embeddings(signals)
    finished = finish_samples(
        writer,
        PoolView(len(source), bad, base, signals),
        Stage2Options(binarisation, options.aggregation, scored=scored, clean_pairs=clean),
    )
    summary: dict = {
        "samples": finished.summary["samples"],
        "skipped": len(errors),
        "epochs": options.epochs,
        **task.train_summary(job, options, held, scored, run.log),
    }
    if scored:
        summary.update({k: v for k, v in finished.summary.items() if k != "samples"})
        writer.meta.evaluation = finished.evaluation
        writer.meta.stage2 = {"binarisation": binarisation, "aggregation": options.aggregation}
    if options.test_data:
        summary.update(task.held_out(job, options, trained, run.device))
    if drift is not None:
        writer.meta.basis["drift_per_epoch"] = drift.per_epoch
        message = drift.warning()
        if message:
            writer.warn(message)
            run.log("WARNING: " + message)
    writer.write_errors(errors_frame)
    drop_error_parts(run.layout)
    if len(errors):
        run.log(errors.summary())
    writer.meta.timings.update(timings)
    return run.outcome(summary, report=format_evaluation(finished.evaluation) if scored else "")
