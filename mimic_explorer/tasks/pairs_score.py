"""``mimic-explorer score`` on an image-text pool: the work loop.

What a pair's score means: the per-pair loss is the pair's symmetric InfoNCE term *inside the batch
it was scored in* (``scoring.contrastive``): image→text cross-entropy of its row plus text→image
cross-entropy of its column of the batch's similarity matrix, halved. The other pairs of the batch
are its negatives, so the loss, its gradient on the mimic layer and hence the mimic score
``proj_i = ⟨−∇ℓ_i, v⟩ / ‖v‖`` (``v`` = reference − model on that layer; cos divides by ‖∇ℓ_i‖) are
relative to that batch: the same pair scored with other batch-mates gets another number. Scores are
exact for the batch they come from (``scoring.prepared.PreparedScorer`` with ``InfoNCELoss``; for a
projection layer one forward and the loss's Jacobian). Batches are fixed by the pool's order and
``--batch-size`` (``pipeline.pair_batches``: never a pair alone); ``samples.parquet`` records each
pair's ``score_batch`` and ``batch_size``, and the CLIP scores and the reference loss of a pair come
from the same batch (the CLIP scores do not depend on it; the reference loss does).

The run directory is the labelled ``score``'s: chunk parts (a killed run resumes at the first missing
chunk; rows carry each pair's pool position), thumbnails, ``errors.parquet``, then Stage 2 into
``samples.parquet`` one range of pool positions at a time (``pipeline.finalize.finish_samples``, memory
bounded by the range), the per-pair columns read from the parts for that range only.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from mimic_explorer.data.errors import BadSample, ErrorLog
from mimic_explorer.models.dual import DualEncoder, DualOutput
from mimic_explorer.commands.finalize import PoolView, Stage2Options, finish_samples, format_evaluation, pool_rows, with_positions
from mimic_explorer.commands.lifecycle import RunContext, RunOutcome
from mimic_explorer.commands.options import ScoreOptions
from mimic_explorer.training.pair_batches import chunk_bounds, whole_batches
from mimic_explorer.tasks.pairs_columns import (PAIR_ROW_COLUMNS, batch_rows, batch_steps, pair_samples, score_batches,
                                                   score_step)
from mimic_explorer.tasks.pairs_setup import PairInputs
from mimic_explorer.training.pool_pass import pool_pass, thumbnail_pass
from mimic_explorer.scoring.contrastive import InfoNCELoss
from mimic_explorer.scoring.stage1 import stage1_weights
from mimic_explorer.store.atomic import write_parquet
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.score_rows import ScoreRows
from mimic_explorer.store.thumbs import ThumbnailWriter
from mimic_explorer.store.writer import take_error_parts, write_score_part

PairRun = RunContext[ScoreOptions, PairInputs]
ALONE = "alone in its scoring batch (InfoNCE needs at least one other pair as a negative)"


def _reference_outputs(reference: DualEncoder, images: torch.Tensor, tokens: torch.Tensor) -> DualOutput:
    with torch.no_grad():
        return reference(images, tokens)


def _score_chunk(run: PairRun, scorer, indices: np.ndarray, chunk: int, thumbs: ThumbnailWriter | None, errors: ErrorLog) -> pd.DataFrame:
    options, device, inputs = run.options, run.device, run.inputs
    source, models, captions = inputs.pool.source, inputs.models, inputs.captions.captions
    tokenizer = models.model.tokenizer
    stream = pool_pass(source, inputs.pool.labels, models.transform, options.batch_size, indices=indices,
                       thumbnails=thumbs is not None, workers=options.workers, errors=errors)
    rows = []
    for step, batch in enumerate(whole_batches(stream, options.batch_size)):
        positions = batch.index.numpy()
        if thumbs is not None:
            for p, t in zip(positions, batch.thumbs):
                thumbs.add(source.sample_ids[p], t)
        if len(positions) < 2:
            errors.add(BadSample(source.sample_ids[positions[0]], source.source_of(int(positions[0])), ALONE))
            continue
        tokens = tokenizer.encode(captions[positions].tolist())
        images, ids = batch.inputs.to(device), tokens.ids.to(device)
        scores = scorer((images, ids), None)
        signal = scores.proj if options.score_method == "proj" else scores.cos
        weights = stage1_weights(signal, "normed_" + options.score_method, options.temperature)
        reference = _reference_outputs(models.reference, images, ids)
        rows.append(batch_rows(source.sample_ids[positions], positions, score_step(chunk, step, run.dist.rank, run.dist.world),
                               scores, weights, reference, tokens.truncated))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["sample_id", "epoch", "step", "position", "proj", "weight"])


def score_pairs(run: PairRun) -> RunOutcome:
    """Score every pair (resuming at the first missing chunk), then write samples, errors and meta."""
    from mimic_explorer.scoring.prepared import PreparedScorer

    options, ctx, layout = run.options, run.dist, run.layout
    inputs = run.inputs
    source, models = inputs.pool.source, inputs.models
    started = time.perf_counter()
    errors = ErrorLog()
    if ctx.is_main:
        errors.extend(source.open_errors)
    resuming = bool(layout.chunk_parts())
    thumbs = ThumbnailWriter(run.out) if ctx.is_main and not (resuming and layout.thumbs_index.exists()) else None
    scorer = PreparedScorer(models.model, models.reference, params=models.params, method=options.score_method,
                            loss=InfoNCELoss())
    mine = np.arange(ctx.rank, len(source), ctx.world)
    thumbnailed = np.zeros(len(source), dtype=bool) if thumbs is not None else None
    done = 0
    for chunk, (start, stop) in enumerate(chunk_bounds(len(mine), options.chunk_size)):
        path = layout.chunk_part(chunk, ctx.rank if ctx.active else None)
        if not path.exists():  # else finished before an interruption
            write_score_part(path, _score_chunk(run, scorer, mine[start:stop], chunk, thumbs, errors))
            if thumbnailed is not None:
                thumbnailed[mine[start:stop]] = True
        done += stop - start
        run.progress("scoring", done, len(mine))
    if thumbs is not None:
        _thumbnail_the_rest(run, thumbs, thumbnailed)
        thumbs.close()
    write_parquet(layout.error_part(ctx.rank), pd.DataFrame([(b.sample_id, b.path, b.reason) for b in errors],
                                                            columns=["sample_id", "path", "reason"]).astype("string"))
    ctx.barrier()
    if not ctx.is_main:
        return run.outcome({})
    return _finalize(run, started)


def _thumbnail_the_rest(run: PairRun, thumbs: ThumbnailWriter, thumbnailed: np.ndarray) -> None:
    """Rank 0's thumbnails of the pairs it did not decode while scoring: the other ranks' positions and
    its own chunks scored before an interruption (without this the app shows no photo for them). Bad
    pairs are not recorded again: the rank that scored them did."""
    source, window = run.inputs.pool.source, max(run.options.chunk_size, 1)

    def add(positions: np.ndarray, items: list) -> None:
        for p, t in zip(positions, items):
            thumbs.add(source.sample_ids[p], t)

    for start in range(0, len(source), window):
        rest = start + np.flatnonzero(~thumbnailed[start:start + window])
        if len(rest):
            thumbnail_pass(source, run.inputs.pool.labels, add, run.options.workers, indices=rest)


def pair_rows(inputs: PairInputs, layout: RunLayout, steps: np.ndarray) -> Callable[[np.ndarray], pd.DataFrame]:
    """samples.parquet's base columns of good positions (ascending): the pool's, the caption (and,
    with swapped captions, the original and ``is_noisy``) and the per-pair columns of each pair's score
    row, read from the chunk parts for those positions only (``store.score_rows.ScoreRows``).
    ``steps``: every scoring batch's step (``pairs_columns.batch_steps``), which numbers the batches."""
    captions, base = inputs.captions, pool_rows(inputs.pool)
    rows = ScoreRows(layout)
    if not rows.positioned:
        raise ValueError("the run's score parts have no position column; they were written by an older version "
                         "(rerun with --force)")

    def at(positions: np.ndarray) -> pd.DataFrame:
        if len(positions):
            scores = rows.range(int(positions[0]), int(positions[-1]) + 1, list(PAIR_ROW_COLUMNS))
        else:
            scores = pd.DataFrame({c: pd.Series(dtype=object if c == "sample_id" else np.float64) for c in PAIR_ROW_COLUMNS})
        scores["score_batch"] = score_batches(scores["step"].to_numpy(), steps)
        return pair_samples(base(positions), captions.captions, captions.true_captions, positions, captions.is_noisy, scores)

    return at


def _finalize(run: PairRun, started: float) -> RunOutcome:
    """Stage 2 into samples.parquet one range of pool positions at a time (``finalize.finish_samples``,
    as for a labelled run), then errors and meta."""
    options, layout, writer, inputs = run.options, run.layout, run.writer, run.inputs
    all_errors, bad = with_positions(take_error_parts(layout), inputs.pool.source.sample_ids)
    steps = batch_steps(layout.chunk_parts())
    finished = finish_samples(writer, PoolView(len(inputs.pool.source), bad, pair_rows(inputs, layout, steps)),
                              Stage2Options(options.binarisation, options.aggregation))
    truncated = int(pq.read_table(layout.samples, columns=["caption_truncated"]).column("caption_truncated").to_numpy().sum())
    summary = {**finished.summary, "skipped": int(len(all_errors)),
               "pairs": {"loss": "symmetric InfoNCE of each pair within its scoring batch", "batch_size": options.batch_size,
                         "batches": int(len(steps)), "mimic_layers": inputs.models.params,
                         "truncated_captions": truncated}}
    summary.pop("true_quality", None)
    evaluation = finished.evaluation
    writer.write_errors(all_errors)
    if len(all_errors):
        run.log(f"skipped {len(all_errors)} bad pair(s); see {layout.errors}")
    if truncated:
        run.log(f"{truncated} caption(s) were longer than the text encoder's context and were cut (column caption_truncated)")
    writer.meta.set(evaluation=evaluation, stage2={"binarisation": options.binarisation, "aggregation": options.aggregation},
                    timings={"score_s": time.perf_counter() - started})
    return run.outcome(summary, report=format_evaluation(evaluation))
