"""Image-text pairs (DataComp's setting): the task, its three ways to train, and how it scores.

The loss of pair i is its symmetric InfoNCE term *inside the batch it was scored in*
(``scoring.contrastive``): the other pairs of the batch are its negatives, so the loss, its gradient
on the mimic layer (a tower's last linear projection) and hence its mimic score are relative to that
batch; every row records its batch (``score_batch``, ``batch_size``) and a batch never holds a pair
alone. What this task adds to the commands' shared drivers:

- **models**: dual encoders from dual checkpoints, an image classifier's weights, the reference
  itself or fresh (``tasks.dual_models``), checked for shared towers;
- **captions**: the pool's captions, ``--caption-noise`` of them swapped (seeded), and with
  ``--all-captions`` every caption of each photo;
- **modes** (``training.towers``): ``FrozenTowersMode`` — tower outputs computed once and held (they
  depend on the captions as trained, which the shared image feature cache does not key on; 2 KB a
  pair for the built-in model), the projections and logit scale trained on them;
  ``FrozenImageTowerMode`` — the image tower's outputs held, the text side trains;
  ``BothTowersMode`` — the first pass only finds the good pairs and writes thumbnails, every epoch
  decodes its pairs again (``training.pool_batches.StreamedPairs``: a preprocessed image is 600 KB at
  open_clip's 224 px, too much to hold for a pool);
- **rows**: the caption (and with swapped captions the original and ``is_noisy``), whether it was
  cut to the text encoder's context, and the per-pair signals a DataComp user filters on — the CLIP
  score (cosine of a pair's two embeddings) under model and reference and the reference loss;
  **held out**: image→text and text→image recall@1/5/10 with every caption of each test photo.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from torch import nn

from mimic_explorer.data.captions import PAIRS
from mimic_explorer.data.errors import BadSample, ErrorLog
from mimic_explorer.data.noise import caption_noise
from mimic_explorer.data.pool import Pool, pool_fingerprints
from mimic_explorer.data.specs import open_source
from mimic_explorer.models.checkpoints import CheckpointError
from mimic_explorer.models.distance import outside_params
from mimic_explorer.models.dual import ProjectionProbe, mimic_layer_params
from mimic_explorer.models.dual_checkpoint import save_dual_encoder
from mimic_explorer.models.dual_registry import is_open_clip
from mimic_explorer.scoring.context import preserved_modes
from mimic_explorer.scoring.contrastive import InfoNCELoss, clip_score, retrieval_recall
from mimic_explorer.scoring.prepared import BatchScores, PreparedScorer
from mimic_explorer.scoring.redraws import batch_noise, redraw_order
from mimic_explorer.stage2.pair_quality import CleanPairs, add_embedding_sums
from mimic_explorer.store.chunk_signals import ChunkSignals
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.run_arrays import RowArrayWriter, read_row_array
from mimic_explorer.store.score_rows import ScoreRows
from mimic_explorer.store.thumbs import ThumbnailWriter
from mimic_explorer.tasks.base import EmbeddingSums, Given, Held, Job, Passes, Prepared, ReferencePass, ScoreBatch
from mimic_explorer.tasks.dual_models import DEFAULT_MIMIC_LAYER, build_pair_models, build_train_pair_models
from mimic_explorer.tasks.labelled import pool_rows
from mimic_explorer.training.batches import MIN_PAIR_BATCH, CaptionDraws, pair_batches
from mimic_explorer.training.drift import DriftMeter
from mimic_explorer.training.pool_batches import StreamedPairs, chunk_bounds, whole_batches
from mimic_explorer.training.pool_pass import no_input, pool_pass
from mimic_explorer.training.recording import scored_batch_rows
from mimic_explorer.training.signals import PAIR_EMBEDDINGS, collect_pair_signals, unit_embeddings
from mimic_explorer.training.towers import (
    caption_sets,
    draw_counts,
    image_inputs,
    image_tower_differences,
    reference_part,
    tower_features,
    trainable_part,
)
from mimic_explorer.util.fingerprint import state_fingerprint

#: pairs per batch of the decoding pass that computes tower outputs
FEATURE_BATCH = 256
#: columns each pair's row of the end-of-run signals adds to samples.parquet beside the standard signals
PAIR_SIGNAL_COLUMNS = ("clip_score_ref", "clip_score_model", "score_batch", "batch_size")
#: score-row columns of a pairs ``score`` beyond the long format's
PAIR_COLUMNS = ("clip_score_model", "clip_score_ref", "reference_loss", "truncated")
#: score-row columns the samples of a pairs ``score`` read (with ``score_batch``, derived from ``step``)
PAIR_ROW_COLUMNS = ("sample_id", "step", "loss", "batch_size", *PAIR_COLUMNS)
#: the k of the held-out recall@k (``--test-data``)
RECALL_AT = (1, 5, 10)
ALONE = "alone in its scoring batch (InfoNCE needs at least one other pair as a negative)"
#: options only a labelled pool can use
LABELLED_ONLY = (
    ("label_noise", "--label-noise"),
    ("reference_noise", "--reference-noise"),
    ("linear_probe", "--linear-probe"),
)
#: the towers' drift warning ends with this advice
TOWERS_ADVICE = (
    "projection-layer mimic scores assume shared towers and may be no better than chance (train fewer epochs, "
    "a smaller learning rate, --frozen-image-tower, or --frozen-towers)"
)


@dataclass
class PairCaptions:
    """The captions the run pairs with the images (after ``--caption-noise``) and the truth."""

    captions: np.ndarray  # object array of str, one per pool position
    true_captions: np.ndarray
    is_noisy: np.ndarray | None  # None when no noise was injected (the truth is unknown)
    noise: dict
    #: with ``--all-captions``: every caption of each pool position (its own first), else None
    sets: list[list[str]] | None = None


def pair_captions(pool: Pool, rate: float, seed: int) -> PairCaptions:
    """The pool's captions, ``int(rate · N)`` of them swapped among themselves (a seeded derangement)."""
    true_captions = pool.source.captions
    if not rate:
        return PairCaptions(true_captions, true_captions, None, {})
    noisy = caption_noise(len(true_captions), rate, seed)
    noise = {"kind": "caption_swap", "rate": rate, "seed": seed, "swapped": int(noisy.is_noisy.sum())}
    return PairCaptions(true_captions[noisy.order], true_captions, noisy.is_noisy, noise)


def _caption_sets(pool: Pool) -> list[list[str]]:
    """Every caption of each position (its own first): what ``--all-captions`` draws from."""
    source = pool.source
    return [source.all_captions(i) or [str(source.captions[i])] for i in range(len(source))]


def _pair_rows_pass(
    models,
    source,
    labels,
    captions: np.ndarray,
    workers: int,
    thumbs: ThumbnailWriter | None,
    errors: ErrorLog | None,
    encode,
    transform=None,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """One decoding pass: ``encode(images, token ids)`` of every good pair, its position and whether its
    caption was cut, in pool order (thumbnails and bad samples recorded on the way). ``transform``:
    the images' preprocessing (default the model's; ``pool_pass.no_input`` makes none)."""
    parts, positions, truncated = [], [], []
    tokenizer = models.model.tokenizer
    transform = models.transform if transform is None else transform
    for batch in pool_pass(
        source, labels, transform, FEATURE_BATCH, thumbnails=thumbs is not None, workers=workers, errors=errors
    ):
        index = batch.index.numpy()
        tokens = tokenizer.encode(captions[index].tolist())
        parts.append(encode(batch.inputs, tokens.ids))
        positions.append(index)
        truncated.append(np.asarray(tokens.truncated, dtype=bool))
        if thumbs is not None:
            for p, t in zip(index, batch.thumbs, strict=True):
                thumbs.add(source.sample_ids[p], t)
    if not parts:
        raise ValueError(f"no pair of {source.spec} could be decoded")
    return torch.cat(parts), np.concatenate(positions).astype(np.int64), np.concatenate(truncated)


@dataclass
class PairSignals:
    """The per-pair end-of-run signals: one row per pair indexed by pool position (ascending), and the
    reference's image and caption embeddings (``training.signals.PAIR_EMBEDDINGS``, memory-mapped from
    scratch files of the run) by held row: frame row i is held row ``rows[i]``."""

    frame: pd.DataFrame
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    rows: np.ndarray | None = None
    #: the sums of every pair's unit embeddings, by name (kept with --no-embeddings too): the quality estimate's
    #: mean over wrong pairings (``stage2.pair_quality``)
    sums: dict[str, np.ndarray] = field(default_factory=dict)


class _PairMode:
    """What the three training modes share: the first pass's shape, the caption sets, the loop's options."""

    name = ""
    freeze_image = False

    def __init__(self, job: Job, options: Any, run: Any):
        self.job, self.options, self.run = job, options, run
        self.models = job.models

    def _encode(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _transform(self):
        return None

    def first_pass(self, passes: Passes) -> Held:
        """Decode every pair once: the rows the mode holds (tower outputs, image inputs, or nothing), which pairs are
        good, which captions were cut, thumbnails and bad pairs on the way."""
        job, options = self.job, self.options
        started = time.perf_counter()
        rows, positions, truncated = _pair_rows_pass(
            self.models,
            job.pool.source,
            job.pool.labels,
            job.data.captions,
            options.workers,
            passes.thumbs,
            passes.errors,
            self._encode,
            transform=self._transform(),
        )
        passes.timings["features_s"] = time.perf_counter() - started
        passes.timings["features_cached"] = False  # held for this run only, or decoded per epoch (module docstring)
        return Held(positions, rows, {"truncated": truncated})

    def _token_sets(self, held: Held) -> None:
        """Each good pair's caption set as token ids (every caption with ``--all-captions``)."""
        captions = self.job.data
        sets = (
            [captions.sets[p] for p in held.positions]
            if captions.sets is not None
            else [[c] for c in captions.captions[held.positions].tolist()]
        )
        held.extra["token_sets"], held.extra["counts"] = caption_sets(self.models.model.tokenizer, sets)
        held.extra["captions"] = draw_counts(held.extra["counts"])

    def loop_options(self) -> dict:
        """The InfoNCE loss and, with a reference, the parameters of the mimic layers (the projection named by
        ``--mimic-layer``) for Grad-Mimic to re-weight."""
        trained, _ = self.parts()
        reference = self.models.reference
        names = mimic_layer_params(trained, self.models.mimic_layers) if reference is not None else None
        return {"loss": InfoNCELoss(), "mimic_params": names}

    def drift(self) -> DriftMeter | None:
        """A meter of the towers' distance from the reference's (with a reference): towers that learn move the shared
        feature basis the projection scores assume."""
        models = self.models
        if models.reference is None:
            return None
        return DriftMeter(
            models.model,
            models.reference,
            outside_params(mimic_layer_params(models.model, models.mimic_layers)),
            "towers",
            TOWERS_ADVICE,
        )

    def _collect(self, held: Held, model_part: nn.Module, reference_side: nn.Module, batches) -> PairSignals:
        """The per-pair signals, and the reference's embeddings written batch by batch to scratch files of the run
        by held row (millions of pairs' vectors never sit in memory), read back memory-mapped."""
        layout = self.run.layout
        kept = PAIR_EMBEDDINGS if self.options.embeddings else ()  # --no-embeddings: none written, even as scratch
        writers = {name: RowArrayWriter(layout.scratch(name), len(held.positions), np.float16) for name in kept}

        sums: dict[str, np.ndarray] = {}

        def keep_vectors(index: np.ndarray, found: dict[str, np.ndarray]) -> None:
            add_embedding_sums(sums, found)
            for name, values in found.items():
                if name in writers:
                    writers[name].write(index, values)

        try:
            found = collect_pair_signals(
                model_part,
                reference_side,
                batches,
                self.run.device,
                mimic_params=self.models.mimic_layers,
                vectors=keep_vectors,
            )
            paths = {name: writer.commit() for name, writer in writers.items()}
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        held_rows = np.asarray(found["index"], dtype=np.int64)
        found["index"] = held.positions[held_rows]
        order = np.argsort(found["index"], kind="stable")
        frame = pd.DataFrame(found).rename(columns={"batch": "score_batch"}).set_index("index").iloc[order]
        vectors = {name: read_row_array(path) for name, path in paths.items() if path is not None}
        return PairSignals(frame, vectors, held_rows[order], sums)


class FrozenTowersMode(_PairMode):
    """Tower outputs computed once and held; the projections and the logit scale train on them."""

    name = "frozen towers"

    def __init__(self, job: Job, options: Any, run: Any):
        super().__init__(job, options, run)
        model = self.models.model
        self.probe = ProjectionProbe.sharing(model)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self.probe.parameters():
            p.requires_grad_(True)
        reference = self.models.reference
        self.reference_probe = ProjectionProbe.sharing(reference) if reference is not None else None

    def _encode(self, images, ids):
        return tower_features(self.models.model, [(images, ids)], self.run.device)

    def parts(self) -> tuple[nn.Module, nn.Module | None]:
        """(a probe that *is* the model's projections and logit scale, the reference's likewise)."""
        return self.probe, self.reference_probe

    def batches(self, held: Held):
        """The held tower outputs as seeded batches of at least two pairs, this rank's share."""
        dist = self.run.dist
        return pair_batches(
            held.rows.to(self.run.device), self.options.batch_size, self.options.seed, dist.rank, dist.world
        )

    def drift(self) -> DriftMeter | None:
        """None: frozen towers cannot drift."""
        return None  # frozen towers cannot drift

    def signals(self, held: Held, batches) -> PairSignals:
        """The per-pair end-of-run signals (CLIP scores, reference loss, score batch) over the held outputs."""
        rows = pair_batches(held.rows.to(self.run.device), self.options.batch_size, self.options.seed)
        return self._collect(held, self.probe, ProjectionProbe.sharing(self.models.reference), rows.epoch(0))


class _TowersLearn(_PairMode):
    """What the two modes whose towers learn share: the trained part (the model, or its ``TextSide``
    with the image tower frozen), the reference as that part sees its inputs, and the caption sets."""

    def __init__(self, job: Job, options: Any, run: Any):
        super().__init__(job, options, run)
        self.trained = trainable_part(self.models.model, self.freeze_image)
        reference = self.models.reference
        self.reference_side = reference_part(reference, self.freeze_image) if reference is not None else None

    def parts(self) -> tuple[nn.Module, nn.Module | None]:
        """(the model, or its text side with the image tower frozen; the reference as that part sees its inputs)."""
        return self.trained, self.reference_side

    def first_pass(self, passes: Passes) -> Held:
        """The first pass, then every good pair's caption set as token ids."""
        held = super().first_pass(passes)
        self._token_sets(held)
        return held


class FrozenImageTowerMode(_TowersLearn):
    """The image tower's outputs computed once and held; the text tower, both projections and the
    logit scale train (the built-in model)."""

    name = "frozen image tower"
    freeze_image = True

    def _encode(self, images, ids):
        return image_inputs(self.models.model, images, True, self.run.device)

    def batches(self, held: Held) -> CaptionDraws:
        """The held image inputs with a caption drawn from each photo's set every epoch (``CaptionDraws``), this rank's
        share."""
        device, dist = self.run.device, self.run.dist
        return CaptionDraws(
            held.rows.to(device),
            held.extra["token_sets"].to(device),
            held.extra["counts"].to(device),
            self.options.batch_size,
            self.options.seed,
            dist.rank,
            dist.world,
        )

    def signals(self, held: Held, batches) -> PairSignals:
        """The per-pair end-of-run signals, each photo with its own caption."""
        device = self.run.device
        rows = pair_batches(
            (held.rows.to(device), held.extra["token_sets"][:, 0].to(device)),
            self.options.batch_size,
            self.options.seed,
        )
        return self._collect(held, self.trained, self.reference_side, rows.epoch(0))


class BothTowersMode(_TowersLearn):
    """Both towers learn: the first pass finds the good pairs, every epoch decodes them again."""

    name = "both towers"

    def _encode(self, images, ids):
        return images

    def _transform(self):
        return no_input

    def _stream(self, held: Held, token_sets, counts, rank: int = 0, world: int = 1) -> StreamedPairs:
        job, options = self.job, self.options
        return StreamedPairs(
            job.pool.source,
            job.pool.labels,
            self.models.transform,
            held.positions,
            token_sets,
            counts,
            options.batch_size,
            options.seed,
            rank=rank,
            world=world,
            workers=options.workers,
        )

    def batches(self, held: Held) -> StreamedPairs:
        """Pairs decoded again every epoch (``StreamedPairs``), this rank's share."""
        dist = self.run.dist
        return self._stream(held, held.extra["token_sets"], held.extra["counts"], dist.rank, dist.world)

    def signals(self, held: Held, batches) -> PairSignals:
        """The per-pair end-of-run signals, each photo with its own caption, from one more decoded pass."""
        stream = self._stream(held, held.extra["token_sets"][:, :1], torch.ones(len(held.positions), dtype=torch.long))
        return self._collect(held, self.trained, self.reference_side, stream.epoch(0))


class PairScoring:
    """``score`` of a dual encoder: the pool in its order, cut into batches that never leave a pair
    alone (``training.pool_batches.whole_batches``), one exact pass of the scorer per batch."""

    def __init__(self, job: Job, options: Any, run: Any):
        self.job, self.options, self.run = job, options, run

    def decodes(self) -> bool:
        """True: scoring decodes every pair (thumbnails come with it)."""
        return True

    def prepare(self, passes: Passes) -> None:
        """Nothing is computed ahead: every batch is decoded."""
        return None

    def scorer(self) -> PreparedScorer:
        """The scorer of the run: the mimic-layer projection under the symmetric InfoNCE loss."""
        models = self.job.models
        return PreparedScorer(
            models.model,
            models.reference,
            params=models.mimic_layers,
            method=self.options.score_method,
            loss=InfoNCELoss(),
        )

    def batches(self, start: int, stop: int, passes: Passes) -> Iterator[ScoreBatch]:
        """Batches of the positions ``start … stop − 1`` in pool order, tokenized; a pair left alone in a batch cannot
        be scored (InfoNCE needs a negative) and is a bad sample."""
        return self._batches(np.arange(start, stop), passes.thumbs, passes.errors)

    def redrawn_batches(self, start: int, stop: int, draw: int) -> Iterator[ScoreBatch]:
        """The same positions cut into batches after a shuffle (``--redraws``: ``scoring.redraws.redraw_order``), for
        the scores alone: no thumbnails, and bad pairs were already recorded by the pool-order pass."""
        return self._batches(redraw_order(start, stop, self.options.seed, draw), None, ErrorLog())

    def _batches(self, indices: np.ndarray, thumbs: ThumbnailWriter | None, errors: ErrorLog) -> Iterator[ScoreBatch]:
        job, options = self.job, self.options
        source, models, captions = job.pool.source, job.models, job.data.captions
        stream = pool_pass(
            source,
            job.pool.labels,
            models.transform,
            options.batch_size,
            indices=indices,
            thumbnails=thumbs is not None,
            workers=options.workers,
            errors=errors,
        )
        for batch in whole_batches(stream, options.batch_size):
            positions = batch.index.numpy()
            if thumbs is not None:
                for p, t in zip(positions, batch.thumbs, strict=True):
                    thumbs.add(source.sample_ids[p], t)
            if len(positions) < MIN_PAIR_BATCH:
                errors.add(BadSample(source.sample_ids[positions[0]], source.source_of(int(positions[0])), ALONE))
                continue
            tokens = models.model.tokenizer.encode(captions[positions].tolist())
            inputs = (batch.inputs.to(self.run.device), tokens.ids.to(self.run.device))
            yield ScoreBatch(positions, inputs, None, {"truncated": np.asarray(tokens.truncated, dtype=bool)})

    def reference_pass(self, batch: ScoreBatch) -> ReferencePass:
        """The reference's CLIP score and InfoNCE loss of each pair (score-row columns), and its image and caption
        embeddings, unit length (the map's vectors, kept per chunk until the run is finished)."""
        reference = self.job.models.reference
        with torch.no_grad(), preserved_modes(reference):
            outputs = reference(*batch.inputs)
            loss = InfoNCELoss()(outputs, None)
        rows = {"clip_score_ref": _numpy(clip_score(outputs.image, outputs.text)), "reference_loss": _numpy(loss)}
        signals = {name: values.cpu().numpy() for name, values in unit_embeddings(outputs.image, outputs.text).items()}
        return ReferencePass(rows, signals)


def _numpy(values: torch.Tensor) -> np.ndarray:
    return values.detach().double().cpu().numpy()


def batch_steps(parts) -> np.ndarray:
    """The sorted distinct ``step`` of every scoring batch of the parts (one small column read per part:
    memory is one value per batch, not per pair)."""
    found = [np.unique(pq.read_table(path, columns=["step"]).column("step").to_numpy()) for path in parts]
    return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def score_batches(steps: np.ndarray, all_steps: np.ndarray) -> np.ndarray:
    """``score_batch`` of rows with these ``steps``: the batch's number, dense from 0 over the run."""
    return np.searchsorted(all_steps, np.asarray(steps)).astype(np.int64)


def pair_samples(
    samples: pd.DataFrame,
    captions: np.ndarray,
    true_captions: np.ndarray,
    positions: np.ndarray,
    is_noisy: np.ndarray | None,
    scores: pd.DataFrame,
) -> pd.DataFrame:
    """``samples`` (one row per good pair, at pool ``positions``) with its caption (and, when captions
    were swapped, the original and ``is_noisy``), and the per-pair columns of its score row."""
    samples = samples.copy()
    samples["caption"] = pd.array(captions[positions].astype(str), dtype="str")
    if is_noisy is not None:
        samples["true_caption"] = pd.array(true_captions[positions].astype(str), dtype="str")
        samples["is_noisy"] = np.asarray(is_noisy[positions], dtype=bool)
    per_pair = scores.set_index("sample_id")
    for column in ("clip_score_ref", "clip_score_model", "reference_loss"):
        samples[column] = samples["sample_id"].map(per_pair[column]).astype(np.float64)
    samples["model_loss"] = samples["sample_id"].map(per_pair["loss"]).astype(np.float64)
    samples["score_batch"] = samples["sample_id"].map(per_pair["score_batch"]).astype("Int64")
    samples["batch_size"] = samples["sample_id"].map(per_pair["batch_size"]).astype("Int64")
    samples["caption_truncated"] = samples["sample_id"].map(per_pair["truncated"]).fillna(False).astype(bool)
    return samples


class PairsTask:
    """Image-text pairs (module docstring)."""

    kind = PAIRS
    noun = "pair"
    min_batch = MIN_PAIR_BATCH

    def __init__(self) -> None:
        self.loss = InfoNCELoss()

    def check_options(self, options: Any) -> None:
        """Refuse, before anything is written, an option a pairs pool cannot use."""
        named = [
            flag if value is True else f"{flag} {value}"
            for field, flag in LABELLED_ONLY
            if (value := getattr(options, field, None))
        ]
        if options.init and options.command != "train":  # train: the towers' initial weights
            named.append("--init")
        if named:
            raise ValueError(
                f"{', '.join(named)}: only for labelled pools, and {options.data} is a pool of image-text "
                "pairs (use --caption-noise RATE to swap captions)"
            )
        if options.batch_size < MIN_PAIR_BATCH:
            raise ValueError(
                f"--batch-size {options.batch_size}: a pair's InfoNCE loss needs the other pairs of its batch "
                f"as negatives, so an image-text pool is scored in batches of at least {MIN_PAIR_BATCH}"
            )
        if options.command != "train":
            return
        if options.frozen_towers and (options.frozen_image_tower or options.all_captions):
            raise ValueError(
                "--frozen-image-tower and --all-captions are for training the towers; drop --frozen-towers"
            )
        if not options.frozen_towers and is_open_clip(options.arch) and options.frozen_image_tower:
            raise ValueError(
                f"--frozen-image-tower is available for the built-in --arch small_dual; {options.arch} trains "
                "both towers (drop --frozen-image-tower) or its projections alone (--frozen-towers)"
            )

    def default_binarisation(self) -> str:
        """Stage 2's per-epoch vote of a ``train`` run: the two-group GMM split of each epoch's proj —
        on Flickr8k with swapped captions its kept fraction estimated the clean fraction within 0.01
        where ``weight`` (weight ≥ 1/B) kept about half of a 70 %-clean pool (benchmarks/RESULTS.md)."""
        return "gmm"

    def losses_from_rows(self) -> bool:
        """False: a pair's loss depends on its batch, so the score rows' loss is not a per-sample column."""
        return False

    # ------------------------------------------------------------------ preparing
    def prepare_score(self, options: Any, pool: Pool, device: str, given: Given | None = None) -> Prepared:
        """Load the dual-encoder checkpoint and its reference, swap captions when asked: the job, the fingerprints of
        data, model and reference, and the facts ``meta.json`` records. ``given``: a transform only (in-memory dual
        encoders are refused: ``_refuse_given_models``)."""
        _refuse_given_models(given)
        captions = pair_captions(pool, options.caption_noise, options.noise_seed)
        models = _with_given_transform(build_pair_models(options, device), given)
        # the data fingerprint covers the captions; the swapped ones follow from --caption-noise and --noise-seed
        fingerprints = {
            **pool_fingerprints(pool),
            "model": state_fingerprint(models.model.state_dict()),
            "reference": state_fingerprint(models.reference.state_dict()),
        }
        layers = models.mimic_layers if isinstance(models.mimic_layers, str) else ",".join(models.mimic_layers)
        facts = dict(
            class_names=[],
            source={"spec": options.data, "pool_kind": "pairs", **pool.source_facts()},
            method=f"{options.score_method} of the symmetric InfoNCE term within each batch of {options.batch_size} "
            "pairs (fixed checkpoint)",
            noise=captions.noise,
            reference={"path": options.reference},
            params=layers,
            basis=models.basis,
            subset=pool.subset,
        )
        return Prepared(Job(self, pool, models, captions), fingerprints, facts, pool.warnings + models.warnings)

    def prepare_train(self, options: Any, pool: Pool, device: str, given: Given | None = None) -> Prepared:
        """Build the dual encoder to train (from ``--init``, the reference's towers or fresh) and check it against the
        reference: the job, the fingerprints, and the facts ``meta.json`` records. ``given``: a transform only."""
        _refuse_given_models(given)
        captions = pair_captions(pool, options.caption_noise, options.noise_seed)
        captions.sets = _caption_sets(pool) if options.all_captions else None
        texts = [c for row in captions.sets for c in row] if captions.sets is not None else captions.captions.tolist()
        models = _with_given_transform(build_train_pair_models(options, texts, device), given)
        if models.reference is not None and options.frozen_image_tower:
            differing = image_tower_differences(models.model, models.reference)
            if differing:
                raise CheckpointError(
                    f"--frozen-image-tower with --reference {options.reference}: the reference would score "
                    f"the model's cached image-tower outputs, but its image tower differs ({len(differing)} "
                    f"tensor(s), e.g. {differing[0]}); start the model from the reference (no --init) or "
                    "train both towers"
                )
        fingerprints = {
            **pool_fingerprints(pool),
            "init": state_fingerprint(models.model.state_dict()),
            "reference": None if models.reference is None else state_fingerprint(models.reference.state_dict()),
        }
        method = (
            (
                f"{options.method} Grad-Mimic on the {models.mimic_layers} projection (symmetric InfoNCE within each "
                f"batch of {options.batch_size} pairs; {_trained_part(options)})"
            )
            if models.reference is not None
            else f"plain ({_trained_part(options)})"
        )
        facts = dict(
            class_names=[],
            source={"spec": options.data, "pool_kind": "pairs", **pool.source_facts()},
            method=method,
            noise=captions.noise,
            reference={"path": options.reference} if options.reference else None,
            basis=models.basis,
            subset=pool.subset,
        )
        return Prepared(
            Job(self, pool, models, captions), fingerprints, facts, pool.warnings + models.warnings, models.notes
        )

    def train_mode(self, job: Job, options: Any, run: Any) -> _PairMode:
        """``FrozenTowersMode``, ``FrozenImageTowerMode`` or ``BothTowersMode``, as the options say."""
        if options.frozen_towers:
            return FrozenTowersMode(job, options, run)
        return (
            FrozenImageTowerMode(job, options, run) if options.frozen_image_tower else BothTowersMode(job, options, run)
        )

    def score_mode(self, job: Job, options: Any, run: Any) -> PairScoring:
        """``PairScoring``."""
        return PairScoring(job, options, run)

    # ------------------------------------------------------------------ rows
    def score_rows(
        self,
        job: Job,
        batch: ScoreBatch,
        scores: BatchScores,
        weights: torch.Tensor,
        step: int,
        reference: ReferencePass,
    ):
        """The score rows of one batch with the pairs' own columns: CLIP score under the model, the reference's
        CLIP score and loss (``reference.rows``), and whether the caption was cut."""
        outputs = scores.outputs
        extra = {
            "clip_score_model": _numpy(clip_score(outputs.image, outputs.text)),
            **reference.rows,
            "truncated": batch.extra["truncated"],
        }
        return scored_batch_rows(job.sample_ids, batch.positions, step, scores, weights, extra=extra)

    def train_rows(self, job: Job, held: Held, found: PairSignals | None):
        """samples.parquet's base columns of good positions — the pool's, the caption (and, with swapped
        captions, the original and ``is_noisy``), whether it was cut, the per-pair signal columns — and
        the standard signals."""
        captions, labelled = job.data, pool_rows(job.pool)
        cut = pd.Series(held.extra["truncated"], index=held.positions)
        signals = None if found is None else found.frame

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
                    frame[column] = (
                        values.to_numpy(np.float64) if column.startswith("clip") else values.astype("Int64").to_numpy()
                    )
            return frame

        def standard(good: np.ndarray) -> dict:
            where = signals.index.get_indexer(good)
            where = where[where >= 0]
            where = where[~np.isnan(signals["model_loss"].to_numpy(np.float64)[where])]
            found_rows = signals.iloc[where]
            values = {k: found_rows[k].to_numpy() for k in found_rows.columns if k not in PAIR_SIGNAL_COLUMNS}
            values["index"] = found_rows.index.to_numpy(np.int64)
            values.update({name: np.asarray(vectors[found.rows[where]]) for name, vectors in found.vectors.items()})
            return values

        return rows, (standard if signals is not None else None)

    def score_base_rows(self, job: Job, layout: RunLayout):
        """samples.parquet's base columns of good positions (ascending): the pool's, the caption (and,
        with swapped captions, the original and ``is_noisy``) and the per-pair columns of each pair's
        score row, read from the chunk parts for those positions only (``store.score_rows.ScoreRows``)."""
        captions, base = job.data, pool_rows(job.pool)
        rows = ScoreRows(layout)
        if not rows.positioned:
            raise ValueError(
                "the run's score parts have no position column; they were written by an older version "
                "(rerun with --force)"
            )
        steps = self._steps(layout)

        def at(positions: np.ndarray) -> pd.DataFrame:
            if len(positions):
                scores = rows.range(int(positions[0]), int(positions[-1]) + 1, list(PAIR_ROW_COLUMNS))
            else:
                scores = pd.DataFrame(
                    {c: pd.Series(dtype=object if c == "sample_id" else np.float64) for c in PAIR_ROW_COLUMNS}
                )
            scores["score_batch"] = score_batches(scores["step"].to_numpy(), steps)
            return pair_samples(
                base(positions), captions.captions, captions.true_captions, positions, captions.is_noisy, scores
            )

        return at

    def _steps(self, layout: RunLayout) -> np.ndarray:
        """Every scoring batch's step, read from the parts once per run (it numbers the batches)."""
        found = getattr(self, "_batch_steps", None)
        if found is None or found[0] != layout.root:
            found = (layout.root, batch_steps(layout.chunk_parts()))
            self._batch_steps = found
        return found[1]

    # ------------------------------------------------------------------ the end of a run
    def save_model(self, job: Job, options: Any, meta: Any, held: Held) -> None:
        """Save the trained dual encoder with its architecture and input shape, so it can be a later run's
        ``--reference``, ``--model`` or ``--init``."""
        models = job.models
        save_dual_encoder(
            models.model,
            options.save_model,
            arch=models.arch,
            input_shape=models.input_shape,
            extra={
                "run_id": meta.run_id,
                "data": options.data,
                "frozen_towers": options.frozen_towers,
                "frozen_image_tower": options.frozen_image_tower,
                "all_captions": options.all_captions,
            },
        )

    def held_out(self, job: Job, options: Any, trained: nn.Module, device: str) -> dict:
        """``test_recall`` (recall@1/5/10 over every caption of each held-out photo) of the trained model."""
        recall, ranked = held_out_recall(options.test_data, job.models, device, options.workers)
        return {"test_recall": recall, "test_recall_ranked": ranked}

    def clean_pairs(self, job: Job, options: Any, sums: EmbeddingSums, device: str) -> CleanPairs | None:
        """With ``--test-data`` (held-out pairs known to be clean) and a reference: the reference's mean CLIP score
        over them, with ``sums()`` (the sums of the pool's embeddings, by name) — what the split's clean-fraction
        estimate needs (``stage2.pair_quality``). None otherwise."""
        if not getattr(options, "test_data", None):
            return None
        pool = sums()
        if not pool or set(pool) != set(PAIR_EMBEDDINGS):
            return None
        scores = held_out_clip_scores(options.test_data, job.models, device, options.workers)
        return CleanPairs(float(scores.mean()), len(scores), pool["embedding_image"], pool["embedding_text"])

    def train_summary(self, job: Job, options: Any, held: Held, scored: bool, log) -> dict:
        """The pairs' part of the summary: the loss, batch size, mimic layer, what trained and how many captions were
        cut (said to ``log`` too)."""
        truncated = held.extra["truncated"]
        pairs = {
            "loss": "symmetric InfoNCE of each pair within its batch",
            "batch_size": options.batch_size,
            "mimic_layer": job.models.mimic_layers if scored else None,
            "frozen_towers": options.frozen_towers,
            "truncated_captions": int(truncated.sum()),
        }
        if "captions" in held.extra:
            pairs.update(towers_trained="text" if options.frozen_image_tower else "both", **held.extra["captions"])
        if truncated.any():
            log(
                f"{int(truncated.sum())} caption(s) were longer than the text encoder's context and were cut "
                "(column caption_truncated)"
            )
        return {"pairs": pairs}

    def score_summary(self, job: Job, options: Any, layout: RunLayout, log) -> dict:
        """The pairs' part of the summary: the loss, batch size, number of scoring batches, mimic layers and how many
        captions were cut (said to ``log`` too)."""
        truncated = int(
            pq.read_table(layout.samples, columns=["caption_truncated"]).column("caption_truncated").to_numpy().sum()
        )
        if truncated:
            log(
                f"{truncated} caption(s) were longer than the text encoder's context and were cut (column "
                "caption_truncated)"
            )
        pairs = {
            "loss": "symmetric InfoNCE of each pair within its scoring batch",
            "batch_size": options.batch_size,
            "batches": len(self._steps(layout)),
            "mimic_layers": job.models.mimic_layers,
            "truncated_captions": truncated,
        }
        if options.redraws > 1:
            chunks = ChunkSignals(layout, chunk_bounds(len(job.pool.source), options.chunk_size, self.min_batch))
            noise = batch_noise(chunks.totals(), options.redraws)
            pairs["loss"] = f"symmetric InfoNCE of each pair, the mean over {options.redraws} batchings of its chunk"
            pairs["batch_noise"] = noise
            if noise is not None:
                log(
                    f"batch noise: {noise['noise_share_one_draw']:.1%} of one batching's proj variance, "
                    f"{noise['noise_share_averaged']:.1%} after the mean over {options.redraws} "
                    "(summary.pairs.batch_noise)"
                )
        return {"pairs": pairs}


def _refuse_given_models(given: Given | None) -> None:
    """Dual encoders come from checkpoint files only: a dual encoder is more than a module (its tokenizer, its
    towers' outputs and projections are found by the checkpoint's recorded architecture), so one built in memory
    cannot be handed in as it is."""
    if given is not None and (given.model is not None or given.reference is not None):
        raise ValueError(
            "image-text pairs are scored with dual encoders from checkpoint files: save the model and reference "
            "(a dual-encoder checkpoint, or an open_clip model) and pass their paths with arch="
        )


def _with_given_transform(models, given: Given | None):
    """``models`` with the caller's picture → input transform in place of the checkpoint's, when one is given."""
    if given is not None and given.transform is not None:
        models.transform = given.transform
    return models


def _trained_part(options: Any) -> str:
    if options.frozen_towers:
        return "frozen towers"
    drawn = "; each step one of every photo's captions" if options.all_captions else ""
    return (
        "text tower and projections; image tower frozen"
        if options.frozen_image_tower
        else "both towers and projections"
    ) + drawn


def _held_out_pairs(spec: str):
    """The ``--test-data`` source, refused in one line when it is a labelled pool."""
    test = open_source(spec)
    if test.pool_kind != PAIRS:
        raise ValueError(f"--test-data {spec} is a labelled pool; recall needs image-text pairs")
    return test


def held_out_clip_scores(spec: str, models, device: str, workers: int = 0) -> np.ndarray:
    """The reference's CLIP score of each held-out pair ``spec`` (its caption #0, as the pool's): the clean pairs'
    side of a pairs run's quality estimate."""
    test = _held_out_pairs(spec)
    reference = models.reference

    def encode(images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        outputs = reference(images.to(device), ids.to(device))
        return clip_score(outputs.image, outputs.text).double().cpu()

    with torch.no_grad(), preserved_modes(reference):
        scores, _, _ = _pair_rows_pass(models, test, test.labels, test.captions, workers, None, None, encode)
    return scores.numpy()


def held_out_recall(spec: str, models, device: str, workers: int = 0) -> tuple[dict[str, float], dict[str, int]]:
    """Image→text and text→image recall@1/5/10 of the trained model on the held-out pairs ``spec``,
    with every caption each photo has (Flickr8k's and COCO's five; the standard protocol: a photo
    retrieves any of its captions, each caption retrieves its photo) — one caption where the
    shards list no others. Returns (recall, what was ranked: {"photos", "captions"})."""
    test = _held_out_pairs(spec)
    model = models.model
    with torch.no_grad(), preserved_modes(model):
        model.eval()
        image, positions, _ = _pair_rows_pass(
            models,
            test,
            test.labels,
            test.captions,
            workers,
            None,
            None,
            lambda images, ids: model.encode_image(images.to(device)).cpu(),
        )
        captions = [test.all_captions(int(p)) or [str(test.captions[p])] for p in positions]
        texts = [c for row in captions for c in row]
        text = torch.cat(
            [
                model.encode_text(model.tokenizer.encode(texts[s : s + FEATURE_BATCH]).ids.to(device)).cpu()
                for s in range(0, len(texts), FEATURE_BATCH)
            ]
        )
    image_of_text = torch.as_tensor(np.repeat(np.arange(len(captions)), [len(row) for row in captions]))
    return retrieval_recall(image, text, image_of_text, ks=RECALL_AT), {"photos": len(captions), "captions": len(texts)}


__all__ = ["DEFAULT_MIMIC_LAYER", "PairCaptions", "PairsTask", "held_out_recall", "pair_captions"]
