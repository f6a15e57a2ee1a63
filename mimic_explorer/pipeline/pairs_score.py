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
chunk), thumbnails, ``errors.parquet``, then Stage 2 into ``samples.parquet``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from mimic_explorer import stage2
from mimic_explorer.data.errors import BadSample, ErrorLog
from mimic_explorer.models.dual import DualEncoder, DualOutput
from mimic_explorer.pipeline.finalize import add_stage2, evaluate, format_evaluation, samples_table
from mimic_explorer.pipeline.lifecycle import RunContext, RunOutcome
from mimic_explorer.pipeline.options import ScoreOptions
from mimic_explorer.pipeline.pair_batches import chunk_bounds, whole_batches
from mimic_explorer.pipeline.pairs_columns import batch_rows, pair_samples, read_pair_scores
from mimic_explorer.pipeline.pairs_setup import PairInputs
from mimic_explorer.pipeline.pool_pass import pool_pass
from mimic_explorer.scoring.contrastive import InfoNCELoss
from mimic_explorer.scoring.stage1 import stage1_weights
from mimic_explorer.store.atomic import write_parquet
from mimic_explorer.store.thumbs import ThumbnailWriter
from mimic_explorer.store.writer import take_error_parts

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
        rows.append(batch_rows(source.sample_ids[positions], chunk * 100_000 + step, scores, weights, reference, tokens.truncated))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["sample_id", "epoch", "step", "proj", "weight"])


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
    done = 0
    for chunk, (start, stop) in enumerate(chunk_bounds(len(mine), options.chunk_size)):
        path = layout.chunk_part(chunk, ctx.rank if ctx.active else None)
        if not path.exists():  # else finished before an interruption
            write_parquet(path, _score_chunk(run, scorer, mine[start:stop], chunk, thumbs, errors))
        done += stop - start
        run.progress("scoring", done, len(mine))
    if thumbs is not None:
        thumbs.close()
    write_parquet(layout.error_part(ctx.rank), pd.DataFrame([(b.sample_id, b.path, b.reason) for b in errors],
                                                            columns=["sample_id", "path", "reason"]).astype("string"))
    ctx.barrier()
    if not ctx.is_main:
        return run.outcome({})
    return _finalize(run, started)


def _finalize(run: PairRun, started: float) -> RunOutcome:
    options, layout, writer, inputs = run.options, run.layout, run.writer, run.inputs
    source, captions = inputs.pool.source, inputs.captions
    scores = read_pair_scores(layout.chunk_parts())
    all_errors = take_error_parts(layout)
    scored = set(scores["sample_id"].astype(str))
    good = np.asarray([i for i, s in enumerate(source.sample_ids) if s in scored], dtype=np.int64)
    samples = samples_table(source.sample_ids[good], source.sources[good], inputs.pool.labels[good], None, None)
    samples = pair_samples(samples, captions.captions, captions.true_captions, good, captions.is_noisy, scores)
    samples = add_stage2(samples, scores, options.binarisation, options.aggregation)
    evaluation = evaluate(samples)
    truncated = int(samples["caption_truncated"].sum())
    summary = {"samples": int(len(samples)), "skipped": int(len(all_errors)),
               "estimated_quality": stage2.quality_estimate(samples["keep"].to_numpy()),
               "pairs": {"loss": "symmetric InfoNCE of each pair within its scoring batch", "batch_size": options.batch_size,
                         "batches": int(scores["score_batch"].nunique()), "mimic_layers": inputs.models.params,
                         "truncated_captions": truncated}}
    if evaluation:
        summary["detection"] = evaluation["mimic_score"]
    writer.write_samples(samples)
    writer.write_errors(all_errors)
    if len(all_errors):
        run.log(f"skipped {len(all_errors)} bad pair(s); see {layout.errors}")
    if truncated:
        run.log(f"{truncated} caption(s) were longer than the text encoder's context and were cut (column caption_truncated)")
    writer.meta.set(evaluation=evaluation, stage2={"binarisation": options.binarisation, "aggregation": options.aggregation},
                    timings={"score_s": time.perf_counter() - started})
    return run.outcome(summary, report=format_evaluation(evaluation))
