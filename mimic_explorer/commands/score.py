"""``mimic-explorer score``: mimic scores of one fixed checkpoint against a reference.

Why chunks: a pool of millions is scored in an ordered pass; every chunk of contiguous pool positions
is written as its own part file (chunks go to the ranks in turn under torchrun) as soon as it is done,
so memory stays bounded by the chunk, a killed run resumes at the first missing chunk, and rank 0
reads the parts back by position, one range at a time, to finish the run (``pipeline.finalize``).
A linear probe's features come from the shared feature cache, read a chunk at a time.
Within a batch the Stage-1 weight is ``softmax(proj)`` so the same Stage-2 rules apply; the default
Stage-2 vote for a single checkpoint is ``proj ≥ 0``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from mimic_explorer.data.captions import PAIRS
from mimic_explorer.data.errors import ErrorLog
from mimic_explorer.util.fingerprint import state_fingerprint
from mimic_explorer.models.probe import LinearProbe
from mimic_explorer.util.distributed import DistContext
from mimic_explorer.training.features import extract_features
from mimic_explorer.commands.finalize import PoolView, Stage2Options, finish_samples, format_evaluation, pool_rows, with_positions
from mimic_explorer.commands.lifecycle import Log, Prepared, RunContext, RunOutcome, run_lifecycle
from mimic_explorer.commands.options import ScoreOptions
from mimic_explorer.tasks.pairs_score import score_pairs
from mimic_explorer.tasks.pairs_setup import PairInputs, prepare_pairs
from mimic_explorer.training.pool_pass import pool_pass, thumbnail_pass
from mimic_explorer.tasks.setup import RunInputs, build_models, model_facts, open_pool, pool_fingerprints
from mimic_explorer.util.progress import Progress
from mimic_explorer.scoring.stage1 import stage1_weights
from mimic_explorer.store.atomic import write_parquet
from mimic_explorer.store.thumbs import ThumbnailWriter
from mimic_explorer.store.writer import take_error_parts, write_score_part

ScoreRun = RunContext[ScoreOptions, RunInputs]


def run_score(options: ScoreOptions, progress: Progress | None = None, log: Log | None = None) -> RunOutcome:
    """Score every sample of the pool (or return the finished run, or resume the unfinished one)."""
    return run_lifecycle(options, _prepare, _score_and_finalize, progress=progress, log=log)


def _prepare(options: ScoreOptions, ctx: DistContext, device: str) -> Prepared[RunInputs]:
    pool = open_pool(options)
    if pool.source.pool_kind == PAIRS:  # image-text pairs: pipeline/pairs_setup.py
        return prepare_pairs(options, pool, device)
    models = build_models(options, pool.source, device)  # the --model checkpoint loaded, head included
    models.model.eval()
    fingerprints = {**pool_fingerprints(pool), "model": state_fingerprint(models.model.state_dict()),
                    "reference": models.reference_fingerprint, "preprocessing": models.preprocessing}
    facts = dict(class_names=pool.source.class_names, source={"spec": options.data},
                 method=f"{options.score_method} (fixed checkpoint)", noise=pool.noise, subset=pool.subset,
                 reference={"path": options.reference}, params=options.params, **model_facts(models))
    return Prepared(RunInputs(pool, models), fingerprints, facts, pool.warnings + models.warnings, models.notes)


def _batch_scorer(options, models, scored, scored_reference, params):
    """proj (and cos), the loss and the prediction of one batch at the scored checkpoint, from one
    pass (the reference checked and the task vector computed once, here)."""
    from mimic_explorer.scoring.prepared import PreparedScorer

    head_name = LinearProbe.HEAD if options.linear_probe else models.head_name
    scorer = PreparedScorer(scored, scored_reference, params=params, method=options.score_method, head_name=head_name)

    def score_batch(x, y):
        scores = scorer(x, y)
        return scores.proj, scores.cos, scores.loss, scores.outputs.argmax(-1)

    return score_batch


def _score_and_finalize(run: ScoreRun) -> RunOutcome:
    if isinstance(run.inputs, PairInputs):  # image-text pairs: pipeline/pairs_score.py
        return score_pairs(run)
    options, ctx, device, out, writer = run.options, run.dist, run.device, run.out, run.writer
    pool, models, progress, log, layout = run.inputs.pool, run.inputs.models, run.progress, run.log, run.layout
    started = time.perf_counter()
    source = pool.source
    errors = ErrorLog()
    resuming = bool(layout.chunk_parts())
    need_thumbs = ctx.is_main and not (resuming and layout.thumbs_index.exists())
    thumbs = ThumbnailWriter(out) if need_thumbs else None
    chunks = range(-(-len(source) // options.chunk_size))
    mine = chunks[ctx.rank :: ctx.world]  # chunk c (positions c·size … (c+1)·size − 1) is rank c mod world's
    scored, scored_reference = models.model, models.reference  # linear probes score the head on features
    feats = None
    if options.linear_probe:  # one feature matrix of the whole pool, its chunks shared by the ranks
        feats = extract_features(models.model, source, pool.labels, models.transform, head_name=models.head_name,
                                 device=device, workers=options.workers, dist=ctx,
                                 progress=lambda d, t: progress("features", d, t))
        errors.extend(feats.bad)
        scored = LinearProbe(dict(models.model.named_modules())[models.head_name])
        scored_reference = LinearProbe(dict(models.reference.named_modules())[models.head_name])
    score_batch = _batch_scorer(options, models, scored, scored_reference, options.mimic_params())
    thumbnailed: set[int] = set()
    for done, chunk in enumerate(mine, start=1):
        start, stop = chunk * options.chunk_size, min((chunk + 1) * options.chunk_size, len(source))
        if layout.chunk_part_of(chunk) is not None:  # finished before an interruption
            continue
        if feats is not None:
            batches = _feature_batches(feats, pool.labels, start, stop, options.batch_size)
        else:
            batches = ((b.index, b.inputs, b.targets, b.thumbs) for b in pool_pass(
                source, pool.labels, models.transform, options.batch_size, indices=np.arange(start, stop),
                thumbnails=thumbs is not None, workers=options.workers, errors=errors))
            if thumbs is not None:
                thumbnailed.add(chunk)
        rows = []
        for step, (index, x, y, batch_thumbs) in enumerate(batches):
            proj, cos, loss, pred = score_batch(x.to(device), y.to(device))
            weights = stage1_weights(proj if options.score_method == "proj" else cos, "normed_" + options.score_method, options.temperature)
            rows.append(pd.DataFrame({
                "sample_id": source.sample_ids[index.numpy()].astype(str), "epoch": np.int32(0),
                "step": chunk * 100_000 + step, "position": index.numpy().astype(np.int64),
                "proj": proj.double().cpu().numpy(), "weight": weights.double().cpu().numpy(),
                "cos": cos.double().cpu().numpy() if cos is not None else np.nan, "loss": loss.double().cpu().numpy(),
                "pred": pred.cpu().numpy().astype(np.int32), "batch_size": np.int32(len(y)),
            }))
            for p, t in zip(index.numpy(), batch_thumbs if thumbs is not None else []):
                thumbs.add(source.sample_ids[p], t)
        frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["sample_id", "epoch", "step", "position", "proj", "weight"])
        write_score_part(layout.chunk_part(chunk, ctx.rank if ctx.active else None), frame)
        progress("scoring", done, len(mine))
    if thumbs is not None:  # chunks another rank scored, or scored from features or before a resume
        add = lambda positions, items: [thumbs.add(source.sample_ids[p], t) for p, t in zip(positions, items)]  # noqa: E731
        for chunk in chunks:
            if chunk not in thumbnailed:
                thumbnail_pass(source, pool.labels, add, options.workers,
                               indices=np.arange(chunk * options.chunk_size, min((chunk + 1) * options.chunk_size, len(source))))
        thumbs.close()
    bad_rows = [(b.sample_id, b.path, b.reason) for b in errors]
    write_parquet(layout.error_part(ctx.rank),
                  pd.DataFrame(bad_rows, columns=["sample_id", "path", "reason"]).astype("string"))
    ctx.barrier()
    if not ctx.is_main:
        return run.outcome({})
    all_errors, bad = with_positions(take_error_parts(layout), source.sample_ids)
    finished = finish_samples(writer, PoolView(len(source), bad, pool_rows(pool)),
                              Stage2Options(options.binarisation, options.aggregation, losses_from_rows=True))
    writer.write_errors(all_errors)
    if len(all_errors):
        log(f"skipped {len(all_errors)} bad sample(s); see {layout.errors}")
    writer.meta.set(evaluation=finished.evaluation, stage2={"binarisation": options.binarisation, "aggregation": options.aggregation},
                    timings={"score_s": time.perf_counter() - started})
    summary = {**finished.summary, "skipped": int(len(all_errors))}
    summary.pop("true_quality", None)
    return run.outcome(summary, report=format_evaluation(finished.evaluation))


def _feature_batches(feats, labels: np.ndarray, start: int, stop: int, batch_size: int):
    """(positions, features, labels, no thumbnails) batches of the pool positions ``start … stop − 1``,
    the features read from the cache entry by one explicit read (memory stays one chunk)."""
    lo, hi = feats.rows_between(start, stop)
    values = torch.from_numpy(feats.rows(lo, hi))
    positions = np.asarray(feats.positions[lo:hi], dtype=np.int64)
    targets = torch.from_numpy(np.asarray(labels[positions], dtype=np.int64))
    for s in range(0, hi - lo, batch_size):
        yield torch.from_numpy(positions[s : s + batch_size]), values[s : s + batch_size], targets[s : s + batch_size], []
