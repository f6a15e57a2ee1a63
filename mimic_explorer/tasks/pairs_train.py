"""``mimic-explorer train`` on an image-text pool: the work loop (frozen towers, or towers trained).

Flow, ``--frozen-towers``: one decoding pass computes every good pair's tower outputs (image tower on
the image, text tower on its caption as trained — swapped when ``--caption-noise`` swapped it) and
writes the thumbnails; the projections and the logit scale then train on those rows
(``pair_training.train_projections``): plainly without a reference, with Grad-Mimic on the
``--mimic-layer`` projection with one. The tower outputs are held in memory for the run (they depend on
the captions as trained, which the shared image feature cache does not key on): a pool's rows cost
(image_dim + text_dim) floats each, 2 KB for the built-in model.

Without ``--frozen-towers`` (the towers train too, ``tower_training``; plainly, or with a reference
Grad-Mimic on the ``--mimic-layer`` projection) the caption tokens are held (with ``--all-captions``
all of each photo's captions, one drawn per step). With ``--frozen-image-tower`` the decoding pass
keeps every good pair's image-tower output in memory; when the image tower learns, the first pass
only finds the good pairs and writes the thumbnails, and every epoch decodes its pairs again
(``pair_stream.StreamedPairs``: a preprocessed image is 12 KB at 32 px but 600 KB at open_clip's
224 px, too much to hold for a pool). With a reference, the towers' drift from the
reference's is measured after every epoch (``basis.drift_per_epoch`` in meta.json; a warning past
``DRIFT_WARNING``): a projection's task vector assumes the towers still share a basis.

Per epoch, every pair's proj/weight/loss (its symmetric InfoNCE term in its training batch) go to the
run's epoch parts as for a labelled run, so resuming, Stage 2 and the app work unchanged. At the end
(with a reference) ``pair_training.collect_pair_signals`` scores every pair once more (with its
recorded caption; on tower outputs when the towers were frozen, through the towers otherwise) in
seeded random batches of ``--batch-size``: the model and reference losses, the CLIP scores under both, the
gradient norm, and ``score_batch`` / ``batch_size`` (the batch those numbers are relative to).
``--test-data`` (pairs) adds image→text and text→image recall@1/5/10 of the trained model, with every
caption each test photo has.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from mimic_explorer.data.errors import ErrorLog
from mimic_explorer.data.captions import PAIRS
from mimic_explorer.data.sources import open_source
from mimic_explorer.models.dual import ProjectionProbe, mimic_layer_params
from mimic_explorer.models.dual_checkpoint import save_dual_encoder
from mimic_explorer.training.pair_training import collect_pair_signals, pair_batches, tower_features, train_projections
from mimic_explorer.training.epoch_parts import EpochParts, resume_epoch
from mimic_explorer.commands.finalize import PoolView, Stage2Options, finish_samples, format_evaluation, pool_rows, with_positions
from mimic_explorer.commands.lifecycle import RunContext, RunOutcome
from mimic_explorer.commands.options import TrainOptions
from mimic_explorer.tasks.pairs_options import train_binarisation
from mimic_explorer.training.pair_stream import StreamedPairs
from mimic_explorer.tasks.pairs_setup import tower_distance
from mimic_explorer.tasks.pairs_train_setup import PairTrainInputs
from mimic_explorer.training.pool_pass import no_input, pool_pass
from mimic_explorer.scoring.context import preserved_modes
from mimic_explorer.scoring.contrastive import retrieval_recall
from mimic_explorer.store.thumbs import ThumbnailWriter
from mimic_explorer.tasks.setup import DRIFT_WARNING
from mimic_explorer.training.tower_training import (caption_sets, draw_counts, image_inputs, reference_part, trainable_part,
                                           train_tower_batches, train_towers)
from mimic_explorer.training.loop import NonFiniteLossError, TrainConfig, shared_batch_count

PairTrainRun = RunContext[TrainOptions, PairTrainInputs]
#: pairs per batch of the decoding pass that computes tower outputs
FEATURE_BATCH = 256
#: columns each pair's row of the end-of-run signals adds to samples.parquet beside the standard signals
PAIR_SIGNAL_COLUMNS = ("clip_score_ref", "clip_score_model", "score_batch", "batch_size")
#: the k of the held-out recall@k (``--test-data``)
RECALL_AT = (1, 5, 10)


@dataclass
class SignalInputs:
    """What the end-of-run signals score: the trained part and the reference's matching part, on
    batches of the inputs they take (tower outputs for ``ProjectionProbe``s; (images or image-tower
    outputs, caption tokens) for dual encoders or their ``TextSide``s), indexed by the run's rows."""

    model: torch.nn.Module
    reference: torch.nn.Module
    batches: Iterable[tuple[torch.Tensor, Any, None]]


class TowerDrift:
    """The towers' distance from the reference's (and from where they started) after each epoch of a
    Grad-Mimic run that trains them: ``pairs_setup.tower_distance`` over everything but the mimic layer."""

    def __init__(self, model, reference, mimic_layer: str):
        self.model, self.reference = model, reference
        self.mimic = mimic_layer_params(model, mimic_layer)
        self.start = copy.deepcopy(model).cpu()
        self.per_epoch: list[dict] = []

    def measure(self, epoch: int) -> None:
        self.per_epoch.append({"epoch": epoch, "to_reference": tower_distance(self.model, self.reference, self.mimic),
                               "from_init": tower_distance(self.model, self.start, self.mimic)})

    def warning(self) -> str | None:
        last = self.per_epoch[-1]["to_reference"] if self.per_epoch else 0.0
        if last <= DRIFT_WARNING:
            return None
        return (f"FEATURE BASIS: the towers drifted to relative distance {last:.2f} from the reference's (> {DRIFT_WARNING}); "
                "projection-layer mimic scores assume shared towers and may be no better than chance (train fewer epochs, "
                "a smaller learning rate, --frozen-image-tower, or --frozen-towers)")


def pair_tower_features(models, source, labels, captions: np.ndarray, device: str, workers: int = 0,
                        thumbs: ThumbnailWriter | None = None, errors: ErrorLog | None = None
                        ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(tower outputs, pool positions, caption truncated?) of every good pair, in pool order."""
    return _pair_rows(models, source, labels, captions, workers, thumbs, errors,
                      lambda images, ids: tower_features(models.model, [(images, ids)], device))


def _pair_rows(models, source, labels, captions: np.ndarray, workers: int, thumbs: ThumbnailWriter | None,
               errors: ErrorLog | None, encode, transform=None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """One decoding pass: ``encode(images, token ids)`` of every good pair, its position and whether its
    caption was cut, in pool order (thumbnails and bad samples recorded on the way). ``transform``:
    the images' preprocessing (default the model's; ``pool_pass.no_input`` makes none)."""
    parts, positions, truncated = [], [], []
    tokenizer = models.model.tokenizer
    transform = models.transform if transform is None else transform
    for batch in pool_pass(source, labels, transform, FEATURE_BATCH, thumbnails=thumbs is not None,
                           workers=workers, errors=errors):
        index = batch.index.numpy()
        tokens = tokenizer.encode(captions[index].tolist())
        parts.append(encode(batch.inputs, tokens.ids))
        positions.append(index)
        truncated.append(np.asarray(tokens.truncated, dtype=bool))
        if thumbs is not None:
            for p, t in zip(index, batch.thumbs):
                thumbs.add(source.sample_ids[p], t)
    if not parts:
        raise ValueError(f"no pair of {source.spec} could be decoded")
    return torch.cat(parts), np.concatenate(positions).astype(np.int64), np.concatenate(truncated)


def train_pairs(run: PairTrainRun) -> RunOutcome:
    """Tower outputs once, projections trained (resuming after the last saved epoch), then samples."""
    options, ctx, device, layout = run.options, run.dist, run.device, run.layout
    inputs = run.inputs
    source, models, captions = inputs.pool.source, inputs.models, inputs.captions
    saved_epoch = resume_epoch(run)
    errors = ErrorLog()
    if ctx.is_main:
        errors.extend(source.open_errors)
    keep_thumbs = saved_epoch >= 0 and layout.thumbs_index.exists()
    thumbs = ThumbnailWriter(run.out) if ctx.is_main and not keep_thumbs else None
    timings: dict = {}
    t0 = time.perf_counter()
    towers = not options.frozen_towers
    freeze_image = options.frozen_image_tower
    streamed = towers and not freeze_image  # the image tower learns: its pairs are decoded every epoch
    if streamed:
        features, positions, truncated = _pair_rows(models, source, inputs.pool.labels, captions.captions, options.workers,
                                                    thumbs, errors, lambda images, ids: images, transform=no_input)
    elif towers:
        features, positions, truncated = _pair_rows(models, source, inputs.pool.labels, captions.captions, options.workers,
                                                    thumbs, errors, lambda images, ids: image_inputs(models.model, images, True, device))
    else:
        features, positions, truncated = pair_tower_features(models, source, inputs.pool.labels, captions.captions, device,
                                                             options.workers, thumbs, errors)
    timings["features_s"] = time.perf_counter() - t0
    timings["features_cached"] = False  # held in memory for this run only, or decoded per epoch (module docstring)
    if thumbs is not None:
        thumbs.close()
    config = TrainConfig(epochs=options.epochs, batch_size=options.batch_size, lr=options.lr, weight_decay=options.weight_decay,
                         optimizer=options.optimizer, method=options.method, temperature=options.temperature,
                         reweight=options.reweight, starting_epoch=options.starting_epoch, seed=options.seed, device=device)
    probe = ProjectionProbe.sharing(models.model)
    trained = trainable_part(models.model, freeze_image) if towers else probe
    drift = TowerDrift(models.model, models.reference, models.mimic_layer) \
        if towers and models.reference is not None and ctx.is_main else None  # before a resumed state is loaded
    start_epoch, optimizer_state = 0, None
    if saved_epoch >= 0:
        saved = torch.load(layout.state, weights_only=True, map_location=device)
        trained.load_state_dict(saved["model"])
        optimizer_state, start_epoch = saved["optimizer"], saved_epoch + 1
        if drift is not None:
            drift.per_epoch = list(saved.get("drift", []))  # the epochs measured before the run was stopped
        run.log(f"resuming {run.out} after epoch {saved_epoch}")
    parts = EpochParts(layout, source.sample_ids[positions], ctx, last_epoch=options.epochs - 1,
                       every_s=options.checkpoint_every, positions=positions)

    def on_checkpoint(epoch, module, optimizer) -> None:
        if drift is not None:
            drift.measure(epoch)
        if parts.due(epoch):
            parts.checkpoint(epoch, lambda: {"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                                             "drift": [] if drift is None else list(drift.per_epoch)})

    common = dict(rank=ctx.rank, world=ctx.world, on_epoch=parts.add, on_checkpoint=on_checkpoint,
                  progress=lambda d, t: run.progress("Grad-Mimic" if models.reference is not None else "training", d, t),
                  start_epoch=start_epoch, optimizer_state=optimizer_state,
                  grad_sync=ctx.average_gradients if ctx.active else None, steps_per_epoch=max(1, shared_batch_count(len(positions), ctx.world, options.batch_size, 2)))
    if towers:
        sets = [inputs.caption_sets[p] for p in positions] if inputs.caption_sets is not None else \
            [[c] for c in captions.captions[positions].tolist()]
        token_sets, counts = caption_sets(models.model.tokenizer, sets)
        timings["captions"] = draw_counts(counts)
    t0 = time.perf_counter()
    if start_epoch < options.epochs:
        try:
            with warnings.catch_warnings():  # the feature-basis warning was given when the run was prepared
                warnings.simplefilter("ignore", UserWarning)
                if streamed:
                    batches = StreamedPairs(source, inputs.pool.labels, models.transform, positions, token_sets, counts,
                                            options.batch_size, options.seed, rank=ctx.rank, world=ctx.world,
                                            workers=options.workers)
                    train_tower_batches(models.model, batches, config, reference=models.reference,
                                        mimic_layer=models.mimic_layer, **{k: v for k, v in common.items() if k not in ("rank", "world")})
                elif towers:
                    train_towers(models.model, features, token_sets, counts, config, freeze_image=True,
                                 reference=models.reference, mimic_layer=models.mimic_layer, **common)
                else:
                    train_projections(models.model, features, config, models.reference, mimic_layer=models.mimic_layer, **common)
        except NonFiniteLossError as exc:
            ids = [str(source.sample_ids[positions[p]]) for p in exc.positions[:10]]
            raise ValueError(f"non-finite loss for pair(s) {', '.join(ids)}; the run is marked failed and the epochs "
                             "already recorded are kept") from None
    timings["train_s"] = time.perf_counter() - t0
    ctx.barrier()  # rank 0 finishes the run
    if not ctx.is_main:
        return run.outcome({})
    scored = None
    if models.reference is not None:  # each pair with its recorded caption: seeded random batches, as --batch-size
        if streamed:
            batches = StreamedPairs(source, inputs.pool.labels, models.transform, positions, token_sets[:, :1],
                                    torch.ones(len(positions), dtype=torch.long), options.batch_size, options.seed,
                                    workers=options.workers).epoch(0)
        else:
            rows = (features.to(device), token_sets[:, 0].to(device)) if towers else features.to(device)
            batches = pair_batches(rows, options.batch_size, options.seed).epoch(0)
        model_part, reference_side = (trained, reference_part(models.reference, freeze_image)) if towers else \
            (probe, ProjectionProbe.sharing(models.reference))
        scored = SignalInputs(model_part, reference_side, batches)
    if drift is not None:
        run.writer.meta.basis["drift_per_epoch"] = drift.per_epoch
        message = drift.warning()
        if message:
            run.writer.warn(message)
            run.log("WARNING: " + message)
    return _finalize(run, scored, positions, truncated, errors, timings)


def _finalize(run: PairTrainRun, scoring: SignalInputs | None, positions: np.ndarray,
              truncated: np.ndarray, errors: ErrorLog, timings: dict) -> RunOutcome:
    options, writer, inputs = run.options, run.writer, run.inputs
    source, models = inputs.pool.source, inputs.models
    if options.save_model:
        save_dual_encoder(models.model, options.save_model, arch=models.arch, input_shape=models.input_shape,
                          extra={"run_id": writer.meta.run_id, "data": options.data, "frozen_towers": options.frozen_towers,
                                 "frozen_image_tower": options.frozen_image_tower, "all_captions": options.all_captions})
    errors_frame, bad = with_positions(errors.to_frame(), source.sample_ids)
    signals = None
    if scoring is not None:
        found = collect_pair_signals(scoring.model, scoring.reference, scoring.batches, run.device,
                                     mimic_params=models.mimic_layer)
        found["index"] = positions[found["index"]]
        signals = pd.DataFrame(found).rename(columns={"batch": "score_batch"}).set_index("index").sort_index()
    scored = signals is not None
    binarisation = train_binarisation(options, PAIRS)
    finished = finish_samples(writer, PoolView(len(source), bad, _base_rows(inputs, positions, truncated, signals),
                                               _standard_signals(signals) if scored else None),
                              Stage2Options(binarisation, options.aggregation, scored=scored))
    summary: dict = {"samples": finished.summary["samples"], "skipped": len(errors), "epochs": options.epochs,
                     "pairs": {"loss": "symmetric InfoNCE of each pair within its batch", "batch_size": options.batch_size,
                               "mimic_layer": models.mimic_layer if scored else None, "frozen_towers": options.frozen_towers,
                               "truncated_captions": int(truncated.sum())}}
    if scored:
        summary.update({k: v for k, v in finished.summary.items() if k != "samples"})
        writer.meta.evaluation = finished.evaluation
        writer.meta.stage2 = {"binarisation": binarisation, "aggregation": options.aggregation}
    if options.test_data:
        summary["test_recall"], summary["test_recall_ranked"] = held_out_recall(options.test_data, models, run.device,
                                                                                options.workers)
    if "captions" in timings:
        summary["pairs"].update(towers_trained="text" if options.frozen_image_tower else "both", **timings.pop("captions"))
    writer.write_errors(errors_frame)
    if len(errors):
        run.log(errors.summary())
    if truncated.any():
        run.log(f"{int(truncated.sum())} caption(s) were longer than the text encoder's context and were cut (column caption_truncated)")
    writer.meta.timings.update(timings)
    return run.outcome(summary, report=format_evaluation(finished.evaluation) if scored else "")


def _base_rows(inputs: PairTrainInputs, positions: np.ndarray, truncated: np.ndarray, signals: pd.DataFrame | None):
    """samples.parquet's base columns of good positions: the pool's, the caption (and, with swapped
    captions, the original and ``is_noisy``), whether it was cut, and the per-pair signal columns."""
    captions = inputs.captions
    labelled = pool_rows(inputs.pool)
    cut = pd.Series(truncated, index=positions)

    def rows(good: np.ndarray) -> pd.DataFrame:
        frame = labelled(good)
        frame["caption"] = pd.array(captions.captions[good].astype(str), dtype="str")
        if captions.is_noisy is not None:
            frame["true_caption"] = pd.array(captions.true_captions[good].astype(str), dtype="str")
            frame["is_noisy"] = np.asarray(captions.is_noisy[good], dtype=bool)
        frame["caption_truncated"] = cut.reindex(good).fillna(False).to_numpy(dtype=bool)
        if signals is not None:
            for column in PAIR_SIGNAL_COLUMNS:
                values = signals[column].reindex(good)
                frame[column] = values.to_numpy(np.float64) if column.startswith("clip") else values.astype("Int64").to_numpy()
        return frame

    return rows


def _standard_signals(signals: pd.DataFrame):
    """The finaliser's signal callable: the standard per-sample signals of the asked positions."""
    def at(good: np.ndarray) -> dict:
        rows = signals.reindex(good).dropna(subset=["model_loss"])
        found = {k: rows[k].to_numpy() for k in rows.columns if k not in PAIR_SIGNAL_COLUMNS}
        found["index"] = rows.index.to_numpy(np.int64)
        return found

    return at


def held_out_recall(spec: str, models, device: str, workers: int = 0) -> tuple[dict[str, float], dict[str, int]]:
    """Image→text and text→image recall@1/5/10 of the trained model on the held-out pairs ``spec``,
    with every caption each photo has (Flickr8k's and COCO's five; the standard protocol: a photo
    retrieves any of its captions, each caption retrieves its photo) — one caption where the
    shards list no others. Returns (recall, what was ranked: {"photos", "captions"})."""
    test = open_source(spec)
    if test.pool_kind != PAIRS:
        raise ValueError(f"--test-data {spec} is a labelled pool; recall needs image-text pairs")
    model = models.model
    with torch.no_grad(), preserved_modes(model):
        model.eval()
        image, positions, _ = _pair_rows(models, test, test.labels, test.captions, workers, None, None,
                                         lambda images, ids: model.encode_image(images.to(device)).cpu())
        captions = [test.all_captions(int(p)) or [str(test.captions[p])] for p in positions]
        texts = [c for row in captions for c in row]
        text = torch.cat([model.encode_text(model.tokenizer.encode(texts[s : s + FEATURE_BATCH]).ids.to(device)).cpu()
                          for s in range(0, len(texts), FEATURE_BATCH)])
    image_of_text = torch.as_tensor(np.repeat(np.arange(len(captions)), [len(row) for row in captions]))
    return retrieval_recall(image, text, image_of_text, ks=RECALL_AT), {"photos": len(captions), "captions": len(texts)}
