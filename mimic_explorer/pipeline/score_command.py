"""``mimic-explorer score``: mimic scores of one fixed checkpoint against a reference.

Why chunks: a pool of millions is scored in an ordered pass; every chunk of samples is written as its
own part file (per rank under torchrun) as soon as it is done, so memory stays bounded by the batch,
a killed run resumes at the first missing chunk, and rank 0 only has to read the parts at the end.
Within a batch the Stage-1 weight is ``softmax(proj)`` so the same Stage-2 rules apply; the default
Stage-2 vote for a single checkpoint is ``proj ≥ 0``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from mimic_explorer import stage2
from mimic_explorer.data.captions import PAIRS
from mimic_explorer.data.errors import ErrorLog
from mimic_explorer.fingerprint import state_fingerprint
from mimic_explorer.models.probe import LinearProbe
from mimic_explorer.pipeline.distributed import DistContext
from mimic_explorer.pipeline.features import extract_features
from mimic_explorer.pipeline.finalize import add_stage2, evaluate, format_evaluation, samples_table
from mimic_explorer.pipeline.lifecycle import Log, Prepared, RunContext, RunOutcome, run_lifecycle
from mimic_explorer.pipeline.options import ScoreOptions
from mimic_explorer.pipeline.pairs_score import score_pairs
from mimic_explorer.pipeline.pairs_setup import PairInputs, prepare_pairs
from mimic_explorer.pipeline.pool_pass import pool_pass
from mimic_explorer.pipeline.setup import RunInputs, build_models, model_facts, open_pool, pool_fingerprints
from mimic_explorer.progress import Progress
from mimic_explorer.scoring.stage1 import stage1_weights
from mimic_explorer.store.atomic import write_parquet
from mimic_explorer.store.thumbs import ThumbnailWriter

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
                 method=f"{options.score_method} (fixed checkpoint)", noise=pool.noise,
                 reference={"path": options.reference}, params=options.params, **model_facts(models))
    return Prepared(RunInputs(pool, models), fingerprints, facts, models.warnings, models.notes)


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
    params = options.mimic_params()
    errors = ErrorLog()
    resuming = bool(layout.chunk_parts())
    need_thumbs = ctx.is_main and not (resuming and layout.thumbs_index.exists())
    thumbs = ThumbnailWriter(out) if need_thumbs else None
    mine = np.arange(ctx.rank, len(source), ctx.world)
    scored, scored_reference = models.model, models.reference  # linear probes score the head on features
    feature_values = None
    if options.linear_probe:
        feats = extract_features(models.model, source, pool.labels, models.transform, head_name=models.head_name,
                                 device=device, workers=options.workers,
                                 indices=mine, on_thumbnails=None, progress=lambda d, t: progress("features", d, t))
        errors.extend(feats.bad)
        scored = LinearProbe(dict(models.model.named_modules())[models.head_name])
        scored_reference = LinearProbe(dict(models.reference.named_modules())[models.head_name])
        feature_values, feature_pos = feats.values, feats.positions
    score_batch = _batch_scorer(options, models, scored, scored_reference, params)
    done = 0
    for chunk, start in enumerate(range(0, len(mine), options.chunk_size)):
        path = layout.chunk_part(chunk, ctx.rank if ctx.active else None)
        indices = mine[start : start + options.chunk_size]
        if path.exists():  # finished before an interruption
            done += len(indices)
            continue
        rows = []
        if feature_values is not None:
            sel = np.flatnonzero(np.isin(feature_pos, indices))
            batches = ((torch.from_numpy(feature_pos[sel[s : s + options.batch_size]]),
                        feature_values[sel[s : s + options.batch_size]],
                        torch.from_numpy(pool.labels[feature_pos[sel[s : s + options.batch_size]]].copy()), [])
                       for s in range(0, len(sel), options.batch_size))
        else:
            batches = ((b.index, b.inputs, b.targets, b.thumbs) for b in pool_pass(
                source, pool.labels, models.transform, options.batch_size, indices=indices, thumbnails=thumbs is not None,
                workers=options.workers, errors=errors))
        for step, (index, x, y, batch_thumbs) in enumerate(batches):
            x, y = x.to(device), y.to(device)
            proj, cos, loss, pred = score_batch(x, y)
            weights = stage1_weights(proj if options.score_method == "proj" else cos, "normed_" + options.score_method, options.temperature)
            rows.append(pd.DataFrame({
                "sample_id": source.sample_ids[index.numpy()].astype(str), "epoch": 0, "step": chunk * 100_000 + step,
                "proj": proj.double().cpu().numpy(), "weight": weights.double().cpu().numpy(),
                "cos": cos.double().cpu().numpy() if cos is not None else np.nan, "loss": loss.double().cpu().numpy(),
                "pred": pred.cpu().numpy().astype(np.int32), "batch_size": np.int32(len(y)),
            }))
            if thumbs is not None and batch_thumbs:
                for p, t in zip(index.numpy(), batch_thumbs):
                    thumbs.add(source.sample_ids[p], t)
        frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["sample_id", "epoch", "step", "proj", "weight"])
        write_parquet(path, frame)
        done += len(indices)
        progress("scoring", done, len(mine))
    if thumbs is not None:
        if options.linear_probe:  # features came from the cache or another pass: decode for thumbnails alone
            for i, image in source.iter_images(errors=ErrorLog(), workers=options.workers):
                thumbs.add(source.sample_ids[i], image)
        thumbs.close()
    bad_rows = [(b.sample_id, b.path, b.reason) for b in errors]
    write_parquet(layout.error_part(ctx.rank),
                  pd.DataFrame(bad_rows, columns=["sample_id", "path", "reason"]).astype("string"))
    ctx.barrier()
    if not ctx.is_main:
        return run.outcome({})
    scores = pd.concat([pd.read_parquet(p) for p in layout.chunk_parts()], ignore_index=True)
    error_parts = layout.error_parts()
    all_errors = pd.concat([pd.read_parquet(p) for p in error_parts], ignore_index=True).drop_duplicates("sample_id")
    for p in error_parts:
        p.unlink()
    bad_ids = set(all_errors["sample_id"].astype(str))
    good = np.asarray([i for i, s in enumerate(source.sample_ids) if s not in bad_ids], dtype=np.int64)
    samples = samples_table(source.sample_ids[good], source.sources[good], pool.labels[good],
                            None if pool.true_labels is None else pool.true_labels[good],
                            None if pool.is_noisy is None else pool.is_noisy[good])
    per_sample = scores.set_index("sample_id")
    samples["model_loss"] = samples["sample_id"].map(per_sample["loss"]).astype(np.float64)
    samples["pred"] = samples["sample_id"].map(per_sample["pred"]).astype("Int64")
    samples = add_stage2(samples, scores, options.binarisation, options.aggregation)
    evaluation = evaluate(samples)
    summary = {"samples": int(len(samples)), "skipped": int(len(all_errors)),
               "estimated_quality": stage2.quality_estimate(samples["keep"].to_numpy())}
    if evaluation:
        summary["detection"] = evaluation["mimic_score"]
    writer.write_samples(samples)
    writer.write_errors(all_errors)
    if len(all_errors):
        log(f"skipped {len(all_errors)} bad sample(s); see {layout.errors}")
    writer.meta.set(evaluation=evaluation, stage2={"binarisation": options.binarisation, "aggregation": options.aggregation},
                    timings={"score_s": time.perf_counter() - started})
    return run.outcome(summary, report=format_evaluation(evaluation))
