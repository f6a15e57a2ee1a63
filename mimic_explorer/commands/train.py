"""``mimic-explorer train``: plain training (to make references) or Grad-Mimic with recording.

Flow (the run's life around it is ``pipeline.lifecycle``'s): open the pool (inject noise) → build
model and reference (checks) → run id / cache / resume → [linear probe: cached backbone features] →
Stage-1 training; at each checkpoint (time interval, last epoch) the recorded epochs as a part file per
rank, then a resumable state → rank 0: signals, Stage 2, evaluation, meta complete.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from mimic_explorer.data.captions import LABELLED, PAIRS
from mimic_explorer.data.errors import ErrorLog
from mimic_explorer.data.sources import open_source
from mimic_explorer.models.checkpoints import save_checkpoint
from mimic_explorer.models.init_files import SIDECAR_PREPROCESSING
from mimic_explorer.models.probe import LinearProbe
from mimic_explorer.training.pool_batches import PoolBatches
from mimic_explorer.util.distributed import DistContext
from mimic_explorer.training.epoch_parts import EpochParts, resume_epoch as _resume_epoch
from mimic_explorer.training.features import extract_features
from mimic_explorer.commands.finalize import PoolView, Stage2Options, finish_samples, format_evaluation, pool_rows, with_positions
from mimic_explorer.commands.lifecycle import Log, Prepared, RunContext, RunOutcome, run_lifecycle
from mimic_explorer.commands.options import TrainOptions
from mimic_explorer.tasks.pairs_options import train_binarisation
from mimic_explorer.tasks.pairs_train import train_pairs
from mimic_explorer.tasks.pairs_train_setup import PairTrainInputs, prepare_pair_training
from mimic_explorer.training.pool_pass import pool_pass, thumbnail_pass
from mimic_explorer.tasks.setup import (DRIFT_WARNING, RunInputs, backbone_distance, build_models, model_facts,
                                           open_pool, pool_fingerprints)
from mimic_explorer.util.progress import Progress
from mimic_explorer.store.meta import write_checkpoint_sidecar
from mimic_explorer.store.thumbs import ThumbnailWriter
from mimic_explorer.training.loop import (NonFiniteLossError, TensorBatches, TrainConfig, collect_signals, evaluate_signals,
                                   shared_batch_count, train)

TrainRun = RunContext[TrainOptions, RunInputs]


def run_train(options: TrainOptions, progress: Progress | None = None, log: Log | None = None) -> RunOutcome:
    """Make (or reuse, or resume) a training run and return where it is and its summary."""
    return run_lifecycle(options, _prepare, _train_and_finalize, progress=progress, log=log)


def _prepare(options: TrainOptions, ctx: DistContext, device: str) -> Prepared[RunInputs]:
    pool = open_pool(options)
    if options.batch_size > len(pool.source):
        raise ValueError(f"--batch-size {options.batch_size} is larger than the dataset ({len(pool.source)} samples)")
    if pool.source.pool_kind == PAIRS:  # image-text pairs: pipeline/pairs_train_setup.py
        return prepare_pair_training(options, pool, device)
    models = build_models(options, pool.source, device)
    fingerprints = {**pool_fingerprints(pool), "init": models.init_fingerprint, "reference": models.reference_fingerprint,
                    "preprocessing": models.preprocessing}
    facts = dict(class_names=pool.source.class_names, source={"spec": options.data, **_describe(pool.source)},
                 method=options.method if options.reference else "plain", noise=pool.noise, subset=pool.subset,
                 reference={"path": options.reference, "noise": options.reference_noise} if options.reference else None,
                 **model_facts(models))
    return Prepared(RunInputs(pool, models), fingerprints, facts, pool.warnings + models.warnings, models.notes)


def _describe(source) -> dict:
    try:
        return source.describe()
    except Exception:  # noqa: BLE001
        return {}


def _train_and_finalize(run: TrainRun) -> RunOutcome:
    if isinstance(run.inputs, PairTrainInputs):  # image-text pairs: pipeline/pairs_train.py
        return train_pairs(run)
    options, ctx, device, out, writer = run.options, run.dist, run.device, run.out, run.writer
    pool, models, progress, log = run.inputs.pool, run.inputs.models, run.progress, run.log
    resume_epoch = _resume_epoch(run)
    source = pool.source
    errors = ErrorLog()
    have_thumbs = resume_epoch >= 0 and run.layout.thumbs_index.exists()  # kept only when resuming
    thumbs = ThumbnailWriter(out) if ctx.is_main and not have_thumbs else None
    thumbs_cb = (lambda positions, items: [thumbs.add(source.sample_ids[p], t) for p, t in zip(positions, items)]) if thumbs else None
    config = TrainConfig(epochs=options.epochs, batch_size=options.batch_size, lr=options.lr, weight_decay=options.weight_decay,
                         optimizer=options.optimizer, method=options.method, temperature=options.temperature,
                         reweight=options.reweight, starting_epoch=options.starting_epoch, seed=options.seed, device=device)
    model, reference = models.model, models.reference
    timings = {}
    if options.linear_probe:
        for p in model.parameters():
            p.requires_grad_(False)
        t0 = time.perf_counter()
        feats = extract_features(model, source, pool.labels, models.transform, head_name=models.head_name, device=device, batch_size=max(256, options.batch_size),
                                 workers=options.workers, on_thumbnails=thumbs_cb, progress=lambda d, t: progress("features", d, t), dist=ctx)
        timings["features_s"] = time.perf_counter() - t0
        timings["features_cached"] = feats.cached
        if feats.cached and thumbs is not None:  # the cache spared the decode; thumbnails still need one
            thumbnail_pass(source, pool.labels, thumbs_cb, options.workers)
        errors.extend(feats.bad)
        head = dict(model.named_modules())[models.head_name]
        for p in head.parameters():
            p.requires_grad_(True)
        trainable = LinearProbe(head)
        ref_trainable = LinearProbe(dict(reference.named_modules())[models.head_name]) if reference is not None else None
        positions = feats.positions
        targets = torch.from_numpy(pool.labels[positions].copy())
        batches = TensorBatches(feats.values.to(device), targets.to(device), options.batch_size, options.seed, ctx.rank, ctx.world)
        ids_of_index = source.sample_ids[positions]
        shared = len(positions)
    else:
        if thumbs is not None:  # fine-tuning decodes in shuffled order; thumbnails get their own pass
            thumbnail_pass(source, pool.labels, thumbs_cb, options.workers, errors=errors)
        trainable, ref_trainable = model, reference
        batches = PoolBatches(source, pool.labels, models.transform, options.batch_size, options.seed,
                              rank=ctx.rank, world=ctx.world, workers=options.workers, errors=errors)
        ids_of_index = source.sample_ids
        shared = len(source)
    if thumbs is not None:
        thumbs.close()
    # every rank's batch count, so that the ranks' batches of one step share its number
    steps_per_epoch = max(1, shared_batch_count(shared, ctx.world, options.batch_size))
    start_epoch, optimizer_state = 0, None
    if resume_epoch >= 0:
        saved = torch.load(run.layout.state, weights_only=True, map_location=device)
        trainable.load_state_dict(saved["model"])
        optimizer_state = saved["optimizer"]
        start_epoch = resume_epoch + 1
        log(f"resuming {out} after epoch {resume_epoch}")
    drift = []
    init_trainable = copy.deepcopy(trainable).cpu() if not options.linear_probe and reference is not None else None

    parts = EpochParts(run.layout, ids_of_index, ctx, last_epoch=options.epochs - 1, every_s=options.checkpoint_every,
                       positions=feats.positions if options.linear_probe else None)

    def on_checkpoint(epoch, module, optimizer) -> None:
        if init_trainable is not None:
            drift.append({"epoch": epoch, "to_reference": backbone_distance(module, reference, models.head_name),
                          "from_init": backbone_distance(module, init_trainable, models.head_name)})
        if parts.due(epoch):
            parts.checkpoint(epoch, lambda: {"model": module.state_dict(), "optimizer": optimizer.state_dict()})

    t0 = time.perf_counter()
    if start_epoch < options.epochs:
        try:
            train(trainable, batches, config, reference=ref_trainable, on_epoch=parts.add,
                  progress=lambda d, t: progress("Grad-Mimic" if reference is not None else "training", d, t),
                  start_epoch=start_epoch, optimizer_state=optimizer_state, on_checkpoint=on_checkpoint,
                  grad_sync=ctx.average_gradients if ctx.active else None, steps_per_epoch=steps_per_epoch,
                  head_name=LinearProbe.HEAD if options.linear_probe else models.head_name)
        except NonFiniteLossError as exc:
            ids = [str(ids_of_index[p]) for p in exc.positions]
            more = f" (+{len(ids) - 10} more)" if len(ids) > 10 else ""
            raise ValueError(f"non-finite loss for sample(s) {', '.join(ids[:10])}{more}; the run is marked failed and "
                             "the epochs already recorded are kept") from None
    timings["train_s"] = time.perf_counter() - t0
    ctx.barrier()
    if not ctx.is_main:
        return run.outcome({})
    # ---------------------------------------------------------------- rank 0 finalises
    if options.save_model:
        save_checkpoint(model, options.save_model)
        write_checkpoint_sidecar(options.save_model,
                                 {"arch": options.arch, "class_names": source.class_names, "init_fingerprint": models.init_fingerprint,
                                  "run_id": writer.meta.run_id, "linear_probe": options.linear_probe, "data": options.data,
                                  SIDECAR_PREPROCESSING: models.preprocessing})
    errors_frame, bad = with_positions(errors.to_frame(), source.sample_ids)
    signals = None
    if reference is not None and options.linear_probe:
        signals = _probe_signals(feats, trainable, ref_trainable, batches)
    elif reference is not None:
        signals = _pool_signals(model, reference, pool, models, options.workers, device)
    binarisation = train_binarisation(options, LABELLED)
    finished = finish_samples(writer, PoolView(len(source), bad, pool_rows(pool), signals),
                              Stage2Options(binarisation, options.aggregation, scored=reference is not None))
    summary: dict = {"samples": finished.summary["samples"], "skipped": len(errors), "epochs": options.epochs}
    evaluation = finished.evaluation
    if reference is not None:
        summary.update({k: v for k, v in finished.summary.items() if k != "samples"})
        writer.meta.evaluation = evaluation
        writer.meta.stage2 = {"binarisation": binarisation, "aggregation": options.aggregation}
    if options.test_data:
        summary["test_accuracy"] = _test_accuracy(options, models, trainable, device, out)
    if drift:
        writer.meta.basis["drift_per_epoch"] = drift
        if drift[-1]["to_reference"] > DRIFT_WARNING:
            message = (f"FEATURE BASIS: the backbone drifted to relative distance {drift[-1]['to_reference']:.2f} from the "
                       "reference's; head-layer mimic scores may be no better than chance (use a linear probe or less drift)")
            writer.warn(message)
            log("WARNING: " + message)
    writer.write_errors(errors_frame)
    if len(errors):
        log(errors.summary())
    writer.meta.timings.update(timings)
    return run.outcome(summary, report=format_evaluation(evaluation))


def _probe_signals(feats, trainable, ref_trainable, batches):
    """End-of-run signals of a linear probe for a range of good positions, from the cached features."""
    def signals(positions: np.ndarray) -> dict:
        lo, hi = feats.rows_between(int(positions[0]), int(positions[-1]) + 1) if len(positions) else (0, 0)
        found = evaluate_signals(trainable, ref_trainable, batches.inputs[lo:hi], batches.targets[lo:hi], head_name=LinearProbe.HEAD)
        found["index"] = np.asarray(feats.positions[lo:hi], dtype=np.int64)[found["index"]]
        return found

    return signals


def _pool_signals(model, reference, pool, models, workers: int, device: str):
    """End-of-run signals of a fine-tuned model for a range of good positions, decoding their images."""
    def signals(positions: np.ndarray) -> dict:
        batches = ((b.index, b.inputs, b.targets) for b in pool_pass(pool.source, pool.labels, models.transform, 256,
                                                                       indices=positions, workers=workers))
        return collect_signals(model, reference, batches, device, head_name=models.head_name)

    return signals


def _test_accuracy(options: TrainOptions, models, trainable, device: str, out: Path) -> float:
    """Accuracy on ``--test-data`` (same class list required); linear probes reuse cached features."""
    test = open_source(options.test_data)
    if test.class_names != models.class_names:
        raise ValueError(f"--test-data has classes {test.class_names[:5]}…, the pool has {models.class_names[:5]}…; they must match")
    if options.linear_probe:
        feats = extract_features(models.model, test, test.labels, models.transform, head_name=models.head_name, device=device,
                                 workers=options.workers)
        with torch.no_grad():
            pred = trainable(feats.values.to(device)).argmax(-1).cpu().numpy()
        return float((pred == test.labels[feats.positions]).mean())
    correct = total = 0
    model = models.model
    was = model.training
    model.eval()
    with torch.no_grad():
        for batch in pool_pass(test, test.labels, models.transform, 256, workers=options.workers):
            correct += int((model(batch.inputs.to(device)).argmax(-1).cpu() == batch.targets).sum())
            total += len(batch.targets)
    model.train(was)
    return correct / max(total, 1)
