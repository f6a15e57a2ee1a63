"""Labelled image classification: the task, and its two ways to train (a linear probe, a fine-tune).

The loss is the classifier's cross-entropy, whose output gradient is closed form (δ = softmax −
onehot), so the mimic layers — the head — are scored from one forward pass (``scoring.head_path``)
and re-weighted in one matmul (``training.loop``). What this task adds to the commands' shared
drivers:

- **models**: a classifier and its reference of the same architecture (``tasks.classifier_models``),
  with the shared-feature-basis checks;
- **modes**: ``LinearProbeMode`` — the backbone frozen, its features computed once into the shared
  feature cache (``training.features``), the head alone trained on them (an E-epoch probe costs about
  one backbone pass); ``FineTuneMode`` — the whole network trains on images decoded every epoch, and
  the backbone's drift from the reference's is measured after every epoch;
- **rows**: ``samples.parquet``'s label columns (``label``, and ``true_label`` / ``is_noisy`` when
  the noise is known) and the end-of-run signals (losses under model and reference, GraNd, the
  final prediction); **held out**: accuracy on ``--test-data``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mimic_explorer.data.pool import Pool, pool_fingerprints
from mimic_explorer.data.source import Source
from mimic_explorer.data.specs import open_source
from mimic_explorer.models.checkpoints import save_checkpoint
from mimic_explorer.models.distance import outside_head
from mimic_explorer.models.init_files import SIDECAR_PREPROCESSING
from mimic_explorer.models.probe import LinearProbe
from mimic_explorer.scoring.prepared import BatchScores, PreparedScorer
from mimic_explorer.store.meta import write_checkpoint_sidecar
from mimic_explorer.store.sample_rows import samples_table
from mimic_explorer.tasks.base import (
    EmbeddingSums,
    Given,
    Held,
    Job,
    Models,
    Passes,
    Prepared,
    ReferencePass,
    ScoreBatch,
)
from mimic_explorer.tasks.classifier_models import build_models, model_facts
from mimic_explorer.training.batches import TensorBatches
from mimic_explorer.training.drift import DriftMeter
from mimic_explorer.training.features import Features, extract_features
from mimic_explorer.training.pool_batches import PoolBatches
from mimic_explorer.training.pool_pass import pool_pass, thumbnail_pass
from mimic_explorer.training.recording import scored_batch_rows
from mimic_explorer.training.signals import collect_signals, evaluate_signals, reference_class_signals
from mimic_explorer.util.fingerprint import state_fingerprint

#: options only an image-text pool can use, with what a labelled pool offers instead
IMAGE_TEXT_ONLY = {
    "--mimic-layer": ("mimic_layer", "--params"),
    "--caption-noise": ("caption_noise", "--label-noise"),
    "--frozen-towers": ("frozen_towers", "--linear-probe"),
    "--frozen-image-tower": ("frozen_image_tower", None),
    "--all-captions": ("all_captions", None),
    "--fresh-projections": ("fresh_projections", None),
}
#: ``score``'s own: held-out clean pairs (``train --test-data`` on a labelled pool is its test accuracy)
SCORE_IMAGE_TEXT_ONLY = {**IMAGE_TEXT_ONLY, "--test-data": ("test_data", None)}
#: the backbone's drift warning ends with this advice
FINE_TUNE_ADVICE = "head-layer mimic scores may be no better than chance (use a linear probe or less drift)"


def _describe(source: Source) -> dict:
    try:
        return source.describe()
    except Exception:  # noqa: BLE001 - a description is a nicety; a source that cannot give one still runs
        return {}


def _pool_signals(model: nn.Module, reference: nn.Module, pool: Pool, models: Models, workers: int, device: str):
    """End-of-run signals of a fine-tuned model for a range of good positions, decoding their images."""

    def signals(positions: np.ndarray) -> dict:
        batches = (
            (b.index, b.inputs, b.targets)
            for b in pool_pass(pool.source, pool.labels, models.transform, 256, indices=positions, workers=workers)
        )
        return collect_signals(model, reference, batches, device, head_name=models.head_name)

    return signals


class LinearProbeMode:
    """The backbone frozen; its features computed once (cached across runs); the head trains on them."""

    name = "linear probe"

    def __init__(self, job: Job, options: Any, run: Any):
        self.job, self.options, self.run = job, options, run
        models = job.models
        for p in models.model.parameters():
            p.requires_grad_(False)
        head = models.model.get_submodule(models.head_name)
        for p in head.parameters():
            p.requires_grad_(True)
        self.trained = LinearProbe(head)
        self.reference = (
            LinearProbe(models.reference.get_submodule(models.head_name)) if models.reference is not None else None
        )
        self.features: Features | None = None

    def first_pass(self, passes: Passes) -> Held:
        """Extract the backbone's features of the whole pool once (from the shared cache when another run already did),
        with thumbnails and bad samples on the way; the rows the head trains on."""
        job, options, run = self.job, self.options, self.run
        models, source = job.models, job.pool.source
        thumbs = passes.thumbs
        on_thumbs = (
            (
                lambda positions, items: [
                    thumbs.add(source.sample_ids[p], t) for p, t in zip(positions, items, strict=True)
                ]
            )
            if thumbs is not None
            else None
        )
        started = time.perf_counter()
        feats = extract_features(
            models.model,
            source,
            job.pool.labels,
            models.transform,
            head_name=models.head_name,
            device=run.device,
            batch_size=max(256, options.batch_size),
            workers=options.workers,
            on_thumbnails=on_thumbs,
            progress=lambda d, t: passes.progress("features", d, t),
            dist=run.dist,
        )
        passes.timings["features_s"] = time.perf_counter() - started
        passes.timings["features_cached"] = feats.cached
        if feats.cached and on_thumbs is not None:  # the cache spared the decode; thumbnails still need one
            thumbnail_pass(source, job.pool.labels, on_thumbs, options.workers)
        passes.errors.extend(feats.bad)
        self.features = feats
        return Held(feats.positions, feats.values)

    def parts(self) -> tuple[nn.Module, nn.Module | None]:
        """(the head as a ``LinearProbe``, the reference's head likewise): what trains, and what it is compared with."""
        return self.trained, self.reference

    def batches(self, held: Held) -> TensorBatches:
        """The cached features and their labels as seeded mini-batches on the run's device (this rank's share)."""
        targets = torch.from_numpy(self.job.pool.labels[held.positions].copy())
        device, options, dist = self.run.device, self.options, self.run.dist
        return TensorBatches(
            held.rows.to(device), targets.to(device), options.batch_size, options.seed, dist.rank, dist.world
        )

    def loop_options(self) -> dict:
        """The probe's head name, so the loop takes its closed-form, no-autograd step."""
        return {"head_name": LinearProbe.HEAD}

    def drift(self) -> DriftMeter | None:
        """None: a frozen backbone cannot drift."""
        return None  # a frozen backbone cannot drift

    def signals(self, held: Held, batches: TensorBatches):
        """End-of-run signals for a range of good positions, from the cached features."""
        feats, trained, reference = self.features, self.trained, self.reference

        def signals(positions: np.ndarray) -> dict:
            lo, hi = feats.rows_between(int(positions[0]), int(positions[-1]) + 1) if len(positions) else (0, 0)
            found = evaluate_signals(
                trained, reference, batches.inputs[lo:hi], batches.targets[lo:hi], head_name=LinearProbe.HEAD
            )
            found["index"] = np.asarray(feats.positions[lo:hi], dtype=np.int64)[found["index"]]
            return found

        return signals


class FineTuneMode:
    """The whole network trains on images decoded every epoch; the backbone's drift is measured."""

    name = "fine-tune"

    def __init__(self, job: Job, options: Any, run: Any):
        self.job, self.options, self.run = job, options, run

    def first_pass(self, passes: Passes) -> Held:
        """Only thumbnails and bad samples (in pool order): fine-tuning decodes the images again every epoch."""
        job = self.job
        source = job.pool.source
        if passes.thumbs is not None:  # fine-tuning decodes in shuffled order; thumbnails get their own pass
            thumbs = passes.thumbs
            thumbnail_pass(
                source,
                job.pool.labels,
                lambda positions, items: [
                    thumbs.add(source.sample_ids[p], t) for p, t in zip(positions, items, strict=True)
                ],
                self.options.workers,
                errors=passes.errors,
            )
        self.errors = passes.errors
        return Held(np.arange(len(source), dtype=np.int64))

    def parts(self) -> tuple[nn.Module, nn.Module | None]:
        """(the whole model, the reference): everything trains."""
        return self.job.models.model, self.job.models.reference

    def batches(self, held: Held) -> PoolBatches:
        """Images decoded every epoch (``PoolBatches``), shuffled by seed and epoch, this rank's share."""
        job, options, dist = self.job, self.options, self.run.dist
        return PoolBatches(
            job.pool.source,
            job.pool.labels,
            job.models.transform,
            options.batch_size,
            options.seed,
            rank=dist.rank,
            world=dist.world,
            workers=options.workers,
            errors=self.errors,
        )

    def loop_options(self) -> dict:
        """The head's name as traced when the models were built."""
        return {"head_name": self.job.models.head_name}

    def drift(self) -> DriftMeter | None:
        """A meter of the backbone's distance from the reference's (with a reference): fine-tuning makes the shared
        feature basis drift, and the scores mean less as it does."""
        models = self.job.models
        if models.reference is None:
            return None
        return DriftMeter(models.model, models.reference, outside_head(models.head_name), "backbone", FINE_TUNE_ADVICE)

    def signals(self, held: Held, batches: PoolBatches):
        """The end-of-run signals as a function of a range of good positions, decoding their images (Stage 2 asks one
        range at a time, so the pool never has to fit in memory)."""
        job, options = self.job, self.options
        return _pool_signals(
            job.models.model, job.models.reference, job.pool, job.models, options.workers, self.run.device
        )


class LabelledScoring:
    """``score`` of a classifier: the head scored on cached features (``--linear-probe``), or any
    parameter set (``--params``) of the checkpoint on decoded images."""

    def __init__(self, job: Job, options: Any, run: Any):
        self.job, self.options, self.run = job, options, run
        self.features: Features | None = None
        models = job.models
        self.scored, self.scored_reference = models.model, models.reference

    def decodes(self) -> bool:
        """Whether the batches decode images (not with ``--linear-probe``: they read cached features)."""
        return not self.options.linear_probe

    def prepare(self, passes: Passes) -> None:
        """With ``--linear-probe``: the pool's features, extracted once and shared by the ranks, and the heads as
        probes; nothing otherwise."""
        job, options, run = self.job, self.options, self.run
        models = job.models
        if not options.linear_probe:
            return
        # one feature matrix of the whole pool, its chunks shared by the ranks
        self.features = extract_features(
            models.model,
            job.pool.source,
            job.pool.labels,
            models.transform,
            head_name=models.head_name,
            device=run.device,
            workers=options.workers,
            dist=run.dist,
            progress=lambda d, t: passes.progress("features", d, t),
        )
        passes.errors.extend(self.features.bad)
        self.scored = LinearProbe(models.model.get_submodule(models.head_name))
        self.scored_reference = LinearProbe(models.reference.get_submodule(models.head_name))

    def scorer(self) -> PreparedScorer:
        """The scorer of the run: the heads on features (``--linear-probe``), or the ``--params`` layers of the whole
        checkpoint."""
        head_name = LinearProbe.HEAD if self.options.linear_probe else self.job.models.head_name
        return PreparedScorer(
            self.scored,
            self.scored_reference,
            params=self.options.mimic_params(),
            method=self.options.score_method,
            head_name=head_name,
        )

    def batches(self, start: int, stop: int, passes: Passes) -> Iterator[ScoreBatch]:
        """Batches of the positions ``start … stop − 1`` on the run's device."""
        job, options = self.job, self.options
        if self.features is not None:
            yield from self._feature_batches(start, stop)
            return
        source, thumbs = job.pool.source, passes.thumbs
        for batch in pool_pass(
            source,
            job.pool.labels,
            job.models.transform,
            options.batch_size,
            indices=np.arange(start, stop),
            thumbnails=thumbs is not None,
            workers=options.workers,
            errors=passes.errors,
        ):
            positions = batch.index.numpy()
            if thumbs is not None:
                for p, t in zip(positions, batch.thumbs, strict=True):
                    thumbs.add(source.sample_ids[p], t)
            yield ScoreBatch(positions, batch.inputs.to(self.run.device), batch.targets.to(self.run.device))

    def reference_pass(self, batch: ScoreBatch) -> ReferencePass:
        """The reference's loss, suggested label, class probabilities and head input for one batch
        (``training.signals.reference_class_signals``): kept per chunk, they become the run's ``ref_pred`` /
        ``ref_prob`` / ``reference_loss`` columns, ``reference_probs.npy`` and the map's ``embeddings/image.npy``."""
        head = LinearProbe.HEAD if self.features is not None else self.job.models.head_name
        return ReferencePass(signals=reference_class_signals(self.scored_reference, batch.inputs, batch.targets, head))

    def _feature_batches(self, start: int, stop: int) -> Iterator[ScoreBatch]:
        """Batches of the pool positions ``start … stop − 1`` from the cache entry, read by one explicit
        read (memory stays one chunk)."""
        feats, labels, size, device = self.features, self.job.pool.labels, self.options.batch_size, self.run.device
        lo, hi = feats.rows_between(start, stop)
        values = torch.from_numpy(feats.rows(lo, hi))
        positions = np.asarray(feats.positions[lo:hi], dtype=np.int64)
        targets = torch.from_numpy(np.asarray(labels[positions], dtype=np.int64))
        for s in range(0, hi - lo, size):
            yield ScoreBatch(positions[s : s + size], values[s : s + size].to(device), targets[s : s + size].to(device))


class LabelledTask:
    """Labelled image classification (module docstring)."""

    kind = "labelled"
    noun = "sample"
    min_batch = 1
    loss = None  # the classifier's closed-form cross-entropy

    def check_options(self, options: Any) -> None:
        """Refuse, before anything is written, an option only an image-text pool can use."""
        only = SCORE_IMAGE_TEXT_ONLY if options.command == "score" else IMAGE_TEXT_ONLY
        named = [flag for flag, (field, _) in only.items() if getattr(options, field, None)]
        if getattr(options, "redraws", 1) > 1:
            named.append(f"--redraws {options.redraws}")  # a sample's cross-entropy ignores its batch-mates
        if named:
            hint = ", ".join(f"{only[n][1]} instead of {n}" for n in named if n in only and only[n][1])
            raise ValueError(
                f"{', '.join(named)}: only for image-text pools (captions in .txt/.json or a caption column), "
                f"and {options.data} is a labelled pool" + (f"; on a labelled pool use {hint}" if hint else "")
            )

    def default_binarisation(self) -> str:
        """Stage 2's per-epoch vote of a ``train`` run: weight ≥ 1/B."""
        return "weight"

    # ------------------------------------------------------------------ preparing
    def prepare_train(self, options: Any, pool: Pool, device: str, given: Given | None = None) -> Prepared:
        """Build and check model and reference of a ``train`` run (``tasks.classifier_models``; or check the ones
        ``given``): the job, the fingerprints of data, init, reference and preprocessing, and the facts ``meta.json``
        records."""
        models = build_models(options, pool.source, device, given)
        fingerprints = {
            **pool_fingerprints(pool),
            "init": models.init_fingerprint,
            "reference": models.reference_fingerprint,
            "preprocessing": models.preprocessing,
        }
        facts = dict(
            class_names=pool.source.class_names,
            source={"spec": options.data, **_describe(pool.source), **pool.source_facts()},
            method=options.method if options.reference else "plain",
            noise=pool.noise,
            subset=pool.subset,
            reference={"path": options.reference, "noise": options.reference_noise} if options.reference else None,
            **model_facts(models),
        )
        return Prepared(Job(self, pool, models), fingerprints, facts, pool.warnings + models.warnings, models.notes)

    def prepare_score(self, options: Any, pool: Pool, device: str, given: Given | None = None) -> Prepared:
        """Load and check the ``--model`` checkpoint and its reference (or check the ones ``given``): the job, the
        fingerprints of data, model, reference and preprocessing, and the facts ``meta.json`` records."""
        models = build_models(options, pool.source, device, given)  # the --model checkpoint loaded, head included
        models.model.eval()
        fingerprints = {
            **pool_fingerprints(pool),
            "model": state_fingerprint(models.model.state_dict()),
            "reference": models.reference_fingerprint,
            "preprocessing": models.preprocessing,
        }
        facts = dict(
            class_names=pool.source.class_names,
            source={"spec": options.data, **pool.source_facts()},
            method=f"{options.score_method} (fixed checkpoint)",
            noise=pool.noise,
            subset=pool.subset,
            reference={"path": options.reference},
            params=options.params,
            **model_facts(models),
        )
        return Prepared(Job(self, pool, models), fingerprints, facts, pool.warnings + models.warnings, models.notes)

    def train_mode(self, job: Job, options: Any, run: Any):
        """``LinearProbeMode`` with ``--linear-probe``, else ``FineTuneMode``."""
        return LinearProbeMode(job, options, run) if options.linear_probe else FineTuneMode(job, options, run)

    def score_mode(self, job: Job, options: Any, run: Any) -> LabelledScoring:
        """``LabelledScoring``."""
        return LabelledScoring(job, options, run)

    # ------------------------------------------------------------------ rows
    def score_rows(
        self,
        job: Job,
        batch: ScoreBatch,
        scores: BatchScores,
        weights: torch.Tensor,
        step: int,
        reference: ReferencePass,
    ) -> Any:
        """The score rows of one batch: proj, Stage-1 weight, cos, loss and the predicted class (the reference's
        signals are samples columns, not row columns)."""
        return scored_batch_rows(job.sample_ids, batch.positions, step, scores, weights, pred=scores.outputs.argmax(-1))

    def train_rows(self, job: Job, held: Held, signals: Any):
        """The pool's base columns (labels as trained on, the truth when known) and the signals as they are."""
        return pool_rows(job.pool), signals

    def score_base_rows(self, job: Job, layout: Any):
        """The pool's base columns."""
        return pool_rows(job.pool)

    # ------------------------------------------------------------------ the end of a run
    def save_model(self, job: Job, options: Any, meta: Any, held: Held) -> None:
        """Save the trained classifier and its sidecar (architecture, classes, init fingerprint, preprocessing), so it
        can be a later run's ``--reference`` or ``--init``."""
        models = job.models
        save_checkpoint(models.model, options.save_model)
        write_checkpoint_sidecar(
            options.save_model,
            {
                "arch": options.arch,
                "class_names": job.pool.source.class_names,
                "init_fingerprint": models.init_fingerprint,
                "run_id": meta.run_id,
                "linear_probe": options.linear_probe,
                "data": options.data,
                SIDECAR_PREPROCESSING: models.preprocessing,
            },
        )

    def held_out(self, job: Job, options: Any, trained: nn.Module, device: str) -> dict:
        """``test_accuracy`` of the trained model on ``--test-data``."""
        return {"test_accuracy": test_accuracy(options, job.models, trained, device)}

    def clean_pairs(self, job: Job, options: Any, sums: EmbeddingSums, device: str) -> None:
        """None: a labelled run's quality estimate comes from the reference's class probabilities (the noise model)."""
        return None

    def train_summary(self, job: Job, options: Any, held: Held, scored: bool, log) -> dict:
        """Nothing: a labelled run's summary is the commands' own."""
        return {}

    def score_summary(self, job: Job, options: Any, layout: Any, log) -> dict:
        """Nothing: a labelled run's summary is the commands' own."""
        return {}

    def losses_from_rows(self) -> bool:
        """``score``: a sample's model loss and prediction come from its score rows."""
        return True


def pool_rows(pool: Pool):
    """``samples.parquet``'s base columns of given positions of the pool (its labels as trained on), then the
    pool's joined metadata columns (``Pool.extra_rows``): the one place both tasks' rows start from."""
    source = pool.source

    def rows(positions: np.ndarray) -> pd.DataFrame:
        frame = samples_table(
            source.sample_ids[positions],
            [source.source_of(int(i)) for i in positions],
            pool.labels[positions],
            None if pool.true_labels is None else pool.true_labels[positions],
            None if pool.is_noisy is None else pool.is_noisy[positions],
        )
        extra = pool.extra_rows(positions)
        return frame if extra is None else pd.concat([frame, extra], axis=1)

    return rows


def test_accuracy(options: Any, models: Models, trainable: nn.Module, device: str) -> float:
    """Accuracy on ``--test-data`` (same class list required); linear probes reuse cached features."""
    test = open_source(options.test_data)
    if test.class_names != models.class_names:
        raise ValueError(
            f"--test-data has classes {test.class_names[:5]}…, the pool has {models.class_names[:5]}…; they must match"
        )
    if options.linear_probe:
        feats = extract_features(
            models.model,
            test,
            test.labels,
            models.transform,
            head_name=models.head_name,
            device=device,
            workers=options.workers,
        )
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
