"""From recorded scores to the run's per-sample table, Stage 2 and evaluation.

Shared by ``train``, ``score`` and ``demo`` so all write the same ``samples.parquet`` columns and the
same evaluation block in ``meta.json``.

Why in chunks: at millions of samples neither the score rows nor the per-sample table fit in memory
comfortably, so ``finish_samples`` works through the pool one range of positions (``STAGE2_CHUNK``) at
a time, in two passes: the first gathers what needs the whole pool (``stage2.Stage2Fitter``: the
tie-break's spread and subsamples for 2-group fits; ``baselines.Moments`` of the combined score's two
halves — an image-text pairs run's of its three inputs, ``baselines.PAIR_COMBINED_INPUTS``; a subsample
of the combined score, with the given labels and the reference's class probabilities, for its keep
threshold: ``stage2.noise_model``; a pairs run's: a GMM split), the second writes each range's
rows to ``samples.parquet`` as a row group stream. Signals that cost a model pass (``train``) are
computed once, in the first pass, and kept in a scratch file in between. ``add_stage2`` is the same
computation on one range holding the whole pool (the in-memory path, for small pools and tests); the
two give identical tables. Evaluation reads ``samples.parquet`` back a column at a time and holds
O(N) arrays (is_noisy, keep, mimic_score and one signal at a time): AUROC and AP rank the whole pool.
The walk from ``--out`` to the app is in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mimic_explorer.stage2 import baselines, noise_model, pair_quality
from mimic_explorer.stage2 import votes as stage2
from mimic_explorer.stage2.baselines import MOMENT_BLOCK, Moments, Standardiser
from mimic_explorer.stage2.evaluation import detection_metrics, threshold_at_quality
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.run_arrays import RowArrayWriter
from mimic_explorer.store.score_rows import ScoreRows
from mimic_explorer.store.writer import RunWriter

#: pool positions per Stage-2 chunk (a multiple of ``baselines.MOMENT_BLOCK``)
STAGE2_CHUNK = 65_536
#: per-sample signal columns, in the order samples.parquet holds them
SIGNAL_COLUMNS = ("reference_loss", "model_loss", "reducible_loss", "grand")
#: the suggested label: the reference's predicted class and its probability (labelled runs with a reference)
SUGGESTION_COLUMNS = ("ref_pred", "ref_prob")
#: signals that are a vector per sample, written as run arrays (row r = samples.parquet row r), and their dtype
ROW_ARRAYS = {"reference_probs": np.float32, "embedding_image": np.float16, "embedding_text": np.float16}
#: score-row columns Stage 2 reads
ROW_COLUMNS = ("epoch", "step", "position", "proj", "weight", "batch_size", "cos")
COMBINED_COLUMNS = ("combined_score", "combined_keep")
#: pairs combined-score inputs that are Stage-2 columns, read in pass 1 from the score rows (a row column's mean)
PAIR_ROW_MEANS = {"proj_mean": "proj"}

Signals = Callable[[np.ndarray], dict[str, np.ndarray]]


def _signal_columns(signals: dict[str, np.ndarray], rows: int, index: np.ndarray | None = None) -> pd.DataFrame:
    """Signal arrays (``train.collect_signals``'s names) as samples.parquet columns for ``rows`` samples;
    ``index``: which of them each signal value belongs to (default: all, in order). Missing: NaN / NA."""
    index = np.arange(rows) if index is None else np.asarray(index, dtype=np.int64)
    frame = pd.DataFrame(index=pd.RangeIndex(rows))
    for name in SIGNAL_COLUMNS:
        if name in signals:
            column = np.full(rows, np.nan)
            column[index] = np.asarray(signals[name], dtype=np.float64)
            frame[name] = column
    for name, column in (("model_pred", "pred"), ("ref_pred", "ref_pred")):
        if name in signals:
            pred = pd.array(np.zeros(rows, dtype=np.int64), dtype="Int64")
            pred[:] = pd.NA
            pred[index] = np.asarray(signals[name], dtype=np.int64)
            frame[column] = pred
    if "ref_prob" in signals:
        column = np.full(rows, np.nan)
        column[index] = np.asarray(signals["ref_prob"], dtype=np.float64)
        frame["ref_prob"] = column
    return frame


def kept_signals(signals: dict[str, np.ndarray], embeddings: bool) -> dict[str, np.ndarray]:
    """``signals`` without the embeddings when the run does not keep them (``--no-embeddings``)."""
    if embeddings:
        return signals
    return {name: values for name, values in signals.items() if not name.startswith("embedding_")}


def array_path(layout: RunLayout, name: str) -> Path:
    """Where the run array of signal ``name`` (one of ``ROW_ARRAYS``) is written."""
    if name == "reference_probs":
        return layout.reference_probs
    return layout.embedding(name.removeprefix("embedding_"))


class RowArrays:
    """The vector-per-sample signals of a run (``ROW_ARRAYS``), filled one range at a time by samples row and
    published together when the samples are (``commit``); a failure leaves none of them."""

    def __init__(self, layout: RunLayout, rows: int):
        self.layout, self.rows = layout, rows
        self.writers: dict[str, RowArrayWriter] = {}

    def take(self, found: dict[str, np.ndarray], rows: np.ndarray) -> None:
        """Pop the vector signals out of ``found`` (one range's signals) and store them at samples rows ``rows``."""
        for name, dtype in ROW_ARRAYS.items():
            values = found.pop(name, None)
            if values is None or not len(values):
                continue
            if name not in self.writers:
                self.writers[name] = RowArrayWriter(array_path(self.layout, name), self.rows, dtype)
            self.writers[name].write(rows, np.asarray(values).reshape(len(values), -1))

    def commit(self) -> list[Path]:
        """Publish every array given (rows never given are NaN)."""
        return [path for writer in self.writers.values() if (path := writer.commit()) is not None]

    def abort(self) -> None:
        """Remove every temporary array."""
        for writer in self.writers.values():
            writer.abort()


def write_signal_arrays(layout: RunLayout, signals: dict[str, np.ndarray], rows: np.ndarray, total: int) -> None:
    """The in-memory path (``demo``): the vector signals of the whole pool as run arrays, value i at samples row
    ``rows[i]`` of ``total``."""
    arrays = RowArrays(layout, total)
    try:
        arrays.take(dict(signals), np.asarray(rows, dtype=np.int64))
        arrays.commit()
    except BaseException:
        arrays.abort()
        raise


def add_signals(samples: pd.DataFrame, signals: dict[str, np.ndarray], row_ids: np.ndarray) -> pd.DataFrame:
    """Join per-sample signal arrays (rows identified by ``row_ids``) onto ``samples``."""
    where = pd.Index(samples["sample_id"]).get_indexer(np.asarray(row_ids, dtype=object).astype(str))
    found = where >= 0
    skipped = {"index", *ROW_ARRAYS}
    picked = {name: np.asarray(values)[found] for name, values in signals.items() if name not in skipped}
    extra = _signal_columns(picked, len(samples), where[found])
    return pd.concat([samples.reset_index(drop=True), extra], axis=1)


def with_positions(errors: pd.DataFrame, sample_ids: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """``errors.parquet`` rows with each bad sample's pool position (−1 for one outside the pool), and
    the sorted positions of the bad samples in the pool."""
    ids = errors["sample_id"].astype(str).to_numpy(dtype=object)
    found = np.flatnonzero(np.isin(sample_ids, ids)) if len(ids) else np.zeros(0, dtype=np.int64)
    where = dict(zip((str(i) for i in sample_ids[found]), found.tolist(), strict=True))
    positions = np.asarray([where.get(i, -1) for i in ids], dtype=np.int64)
    return errors.assign(position=positions), np.sort(positions[positions >= 0])


@dataclass
class PoolView:
    """What finishing a run needs of its pool, one range of pool positions at a time."""

    size: int  # pool positions are 0 .. size − 1
    bad: np.ndarray  # sorted positions without a samples row (errors.parquet)
    base: Callable[[np.ndarray], pd.DataFrame]  # good positions (ascending) -> ``samples_table`` columns
    signals: Signals | None = None  # good positions -> per-sample signal arrays (a model pass); ``index``:
    # the pool position of each value (default: the positions asked for, in order)

    def good(self, start: int, stop: int) -> np.ndarray:
        """The positions in [start, stop) that have a samples row (the bad ones left out), ascending."""
        positions = np.arange(start, stop, dtype=np.int64)
        bad = self.bad[(self.bad >= start) & (self.bad < stop)]
        return np.setdiff1d(positions, bad, assume_unique=True) if len(bad) else positions


@dataclass(frozen=True)
class Stage2Options:
    """How a run's samples are finished."""

    binarisation: str = "weight"
    aggregation: str = "majority"
    scored: bool = True  # False (no reference): mimic_score NaN and every sample kept
    losses_from_rows: bool = False  # ``score``: model_loss and pred come from the score rows
    clean_pairs: pair_quality.CleanPairs | None = None  # a pairs run's held-out clean pairs, for its quality estimate
    chunk: int = STAGE2_CHUNK
    cap: int = stage2.FIT_CAP


@dataclass
class Finished:
    """What finishing wrote: the summary's Stage-2 part and the evaluation (also for ``meta.json``)."""

    summary: dict
    evaluation: dict[str, dict[str, float]]


@dataclass
class _Combined:
    """Pass-1 state of the combined score: the moments of its parts (mean cos, the reference's and the model's
    loss), and a subsample (with the given labels and the reference's class probabilities, where the run has
    them) for its split."""

    total: int
    cap: int
    cos: Moments = field(default_factory=Moments)
    loss: Moments = field(default_factory=Moments)
    model: Moments = field(default_factory=Moments)
    sample: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    scales: tuple[Standardiser, ...] | None = None
    split: stage2.TwoGroupSplit | None = None  # the fallback split, without class probabilities
    threshold: float | None = None  # the noise model's keep threshold on the score
    report: noise_model.SplitReport | None = None

    def add(
        self,
        positions: np.ndarray,
        cos_mean: np.ndarray,
        reference_loss: np.ndarray,
        labels: np.ndarray | None = None,
        probs: np.ndarray | None = None,
        model_loss: np.ndarray | None = None,
    ) -> None:
        """Take one range's mean cos, reference loss and model loss into the moments, and a seeded subsample of it
        (with its labels and class probabilities) for the split (the pool need not fit in memory)."""
        model_loss = np.full(len(positions), np.nan) if model_loss is None else model_loss
        self.cos.add(cos_mean, positions)
        self.loss.add(baselines.reference_utility(reference_loss), positions)
        self.model.add(baselines.reference_utility(model_loss), positions)
        chosen = stage2.fit_sample(positions, self.total, self.cap)
        labels = np.full(len(positions), -1, dtype=np.int64) if labels is None else labels
        probs = np.full((len(positions), 0), np.nan) if probs is None else probs
        self.sample.append(
            (
                positions[chosen],
                cos_mean[chosen],
                reference_loss[chosen],
                model_loss[chosen],
                labels[chosen],
                probs[chosen],
            )
        )

    @property
    def _with_model(self) -> bool:
        """Whether the model's loss is a part (every run that records one; not the in-memory callers without it)."""
        return bool(self.model.count)

    def _score(self, cos_mean: np.ndarray, reference_loss: np.ndarray, model_loss: np.ndarray | None) -> np.ndarray:
        model = model_loss if self._with_model else None
        return baselines.combined_score(cos_mean, reference_loss, model, scales=self.scales)

    def fit(self) -> bool:
        """Fit the keep threshold; False when no sample has a mean cos (nothing to combine)."""
        if not self.cos.count or not self.loss.count:
            return False
        parts = (self.cos, self.loss, self.model) if self._with_model else (self.cos, self.loss)
        self.scales = tuple(part.standardiser() for part in parts)
        positions, cos_mean, loss, model_loss, labels = (
            np.concatenate(parts) for parts in list(zip(*self.sample, strict=True))[:5]
        )
        widths = {part[5].shape[1] for part in self.sample if len(part[5])}
        width = next(iter(widths)) if len(widths) == 1 else None  # parts without rows may have any width
        probs = None if width is None else np.concatenate([p[5].reshape(len(p[5]), width) for p in self.sample])
        order = np.argsort(positions, kind="stable")
        values = self._score(cos_mean[order], loss[order], model_loss[order])
        finite = np.isfinite(values)
        # the two-group mixture (the cross-check, and the split without class probabilities) is fitted on mean cos
        # and the reference loss only: the model loss's skewed utility bends the ranking's distribution away from
        # two groups (the mixture's clean fraction was 0.21-0.56 against a true 0.80 with it; RESULTS.md)
        mixed = baselines.combined_score(cos_mean[order], loss[order], scales=self.scales[:2])
        mixed_finite = np.isfinite(mixed)
        self.split = stage2.TwoGroupSplit.fit(mixed[mixed_finite], "gmm")
        mixture_quality = float(self.split.upper(mixed[mixed_finite]).mean()) if mixed_finite.any() else float("nan")
        labels = labels[order]
        usable = finite & (labels >= 0)
        if probs is not None and widths != {0}:
            probs = probs[order]
            usable &= np.isfinite(probs).all(1) & (labels < probs.shape[1])
        if probs is None or widths == {0} or not usable.any():
            if self._with_model and finite.any():  # the top (mixture's clean fraction) of the ranking
                self.threshold = noise_model.quantile_threshold(values[finite], mixture_quality)
            self.report = noise_model.SplitReport("two-group mixture", mixture_quality, mixture_quality, float("nan"))
            self.report = replace(self.report, warnings=noise_model.split_warnings(self.report))
            return True
        classes = probs.shape[1]
        em_rows = usable & stage2.fit_sample(positions[order], self.total, noise_model.cap_for(classes, self.cap))
        model = noise_model.fit_noise_model(probs[em_rows], labels[em_rows])
        posterior = model.posterior(probs[usable], labels[usable])
        self.threshold = noise_model.quantile_threshold(values[finite], model.clean_fraction)
        report = noise_model.SplitReport(
            "noise model",
            model.clean_fraction,
            mixture_quality,
            noise_model.ashman_d(values[usable], posterior),
            model.reference_accuracy,
            model.converged,
        )
        self.report = replace(report, warnings=noise_model.split_warnings(report, classes))
        return True

    def columns(
        self, cos_mean: np.ndarray, reference_loss: np.ndarray, model_loss: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """``combined_score`` and ``combined_keep`` of one range, with the scales and the split ``fit`` found."""
        score = self._score(cos_mean, reference_loss, model_loss)
        keep = self.split.upper(score) if self.threshold is None else np.isfinite(score) & (score >= self.threshold)
        return {"combined_score": score, "combined_keep": keep}


def combined_split(
    cos_mean: np.ndarray,
    reference_loss: np.ndarray,
    labels: np.ndarray | None = None,
    reference_probs: np.ndarray | None = None,
    *,
    model_loss: np.ndarray | None = None,
    cap: int = stage2.FIT_CAP,
) -> tuple[np.ndarray, np.ndarray, noise_model.SplitReport | None]:
    """``combined_score``, ``combined_keep`` and the split's report of a whole pool held in memory (row i = pool
    position i), as ``finish_samples`` computes them range by range: for benchmarks and notebooks that
    recompute the split of a finished run from its files (give ``model_loss`` as the run has it)."""
    combined = _Combined(len(cos_mean), cap)
    positions = np.arange(len(cos_mean))
    probs = None if reference_probs is None else np.asarray(reference_probs, dtype=np.float64)
    cos_mean = np.asarray(cos_mean, dtype=np.float64)
    reference_loss = np.asarray(reference_loss, dtype=np.float64)
    model_loss = None if model_loss is None else np.asarray(model_loss, dtype=np.float64)
    combined.add(
        positions,
        cos_mean,
        reference_loss,
        None if labels is None else np.asarray(labels, dtype=np.int64),
        probs,
        model_loss,
    )
    if not combined.fit():
        return np.full(len(cos_mean), np.nan), np.zeros(len(cos_mean), dtype=bool), None
    columns = combined.columns(cos_mean, reference_loss, model_loss)
    return columns["combined_score"], columns["combined_keep"], combined.report


def pair_combined_split(
    inputs: dict[str, np.ndarray], clean: pair_quality.CleanPairs | None = None, *, cap: int = stage2.FIT_CAP
) -> tuple[np.ndarray, np.ndarray, noise_model.SplitReport | None]:
    """A pairs run's ``combined_score``, ``combined_keep`` and the split's report for a whole pool held in memory
    (``inputs``: ``baselines.PAIR_COMBINED_INPUTS`` by name, row i = pool position i; ``clean``: held-out clean
    pairs, as ``--test-data`` gives them), as ``finish_samples`` computes them range by range."""
    frame = pd.DataFrame({name: np.asarray(inputs[name], dtype=np.float64) for name in baselines.PAIR_COMBINED_INPUTS})
    combined = _PairCombined(len(frame), cap, clean=clean)
    combined.add(np.arange(len(frame)), frame)
    if not combined.fit():
        return np.full(len(frame), np.nan), np.zeros(len(frame), dtype=bool), None
    columns = combined.columns(frame)
    return columns["combined_score"], columns["combined_keep"], combined.report


#: why a pairs run's split without held-out clean pairs is only a rough guide (RESULTS.md, issue 25)
PAIR_MIXTURE_WARNING = (
    "no held-out clean pairs (--test-data): the split is the two-group mixture on the score, which kept "
    "0.62-0.68 of Flickr8k pools whatever their clean fraction (0.5-0.7): a rough guide, not an estimate"
)


@dataclass
class _PairCombined:
    """Pass-1 state of a pairs run's combined score (``baselines.pair_combined_score``): the moments of each
    input's utility and a subsample for the split — the labelled ``_Combined``'s machinery on other inputs."""

    total: int
    cap: int
    moments: dict[str, Moments] = field(
        default_factory=lambda: {name: Moments() for name in baselines.PAIR_COMBINED_INPUTS}
    )
    sample: list[tuple[np.ndarray, dict[str, np.ndarray]]] = field(default_factory=list)
    scales: dict[str, Standardiser] | None = None
    split: stage2.TwoGroupSplit | None = None
    clean: pair_quality.CleanPairs | None = None  # held-out clean pairs (``--test-data``): the estimate
    threshold: float | None = None  # the top q̂ of the score, q̂ from ``clean``
    report: noise_model.SplitReport | None = None

    @classmethod
    def applies(cls, frame: pd.DataFrame) -> bool:
        """Whether a range's frame holds every input (a pairs run scored against a reference)."""
        return "caption" in frame.columns and all(
            name in frame.columns or name in PAIR_ROW_MEANS for name in baselines.PAIR_COMBINED_INPUTS
        )

    @classmethod
    def inputs(cls, frame: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with the inputs that come from the score rows (pass 1 has no Stage-2 columns yet)."""
        positions = frame["position"].to_numpy()
        derived = {
            name: _per_sample(rows, column, positions)
            for name, column in PAIR_ROW_MEANS.items()
            if name in baselines.PAIR_COMBINED_INPUTS and name not in frame.columns
        }
        return frame.assign(**derived)

    def add(self, positions: np.ndarray, frame: pd.DataFrame) -> None:
        """Take one range's inputs into the moments, and a seeded subsample of them for the split."""
        inputs = {name: frame[name].to_numpy(np.float64) for name in baselines.PAIR_COMBINED_INPUTS}
        for name, values in inputs.items():
            self.moments[name].add(baselines.pair_utility(name, values), positions)
        chosen = stage2.fit_sample(positions, self.total, self.cap)
        self.sample.append((positions[chosen], {name: values[chosen] for name, values in inputs.items()}))

    def fit(self) -> bool:
        """Fit the keep threshold; False when an input has no finite value (nothing to combine)."""
        if not self.sample or not all(m.count for m in self.moments.values()):
            return False
        self.scales = {name: m.standardiser() for name, m in self.moments.items()}
        positions = np.concatenate([part[0] for part in self.sample])
        order = np.argsort(positions, kind="stable")
        inputs = {
            name: np.concatenate([part[1][name] for part in self.sample])[order]
            for name in baselines.PAIR_COMBINED_INPUTS
        }
        values = baselines.pair_combined_score(inputs, self.scales)
        finite = np.isfinite(values)
        self.split = stage2.TwoGroupSplit.fit(values[finite], "gmm")
        mixture_quality = float(self.split.upper(values[finite]).mean()) if finite.any() else float("nan")
        self.report = self._estimate(values[finite], mixture_quality)
        return True

    def _estimate(self, values: np.ndarray, mixture_quality: float) -> noise_model.SplitReport:
        """The split's report; with held-out clean pairs, the keep threshold at their clean-fraction estimate
        (``stage2.pair_quality``), else the two-group mixture's split, said to be a rough guide."""
        if self.clean is None:
            return noise_model.SplitReport(
                "two-group mixture",
                mixture_quality,
                mixture_quality,
                float("nan"),
                warnings=(PAIR_MIXTURE_WARNING,),
            )
        scores = self.moments["clip_score_ref"]  # the pool's reference CLIP scores (utility = the score itself)
        pool_mean = scores.standardiser().mean
        mismatched = pair_quality.mismatch_mean(
            self.clean.image_sum, self.clean.text_sum, pool_mean * scores.count, scores.count
        )
        raw = pair_quality.clean_fraction(pool_mean, self.clean.clean_mean, mismatched)
        warned = pair_quality.estimate_warnings(raw, self.clean.clean_mean, mismatched)
        if not np.isfinite(raw) or not len(values):
            return noise_model.SplitReport(
                "two-group mixture", mixture_quality, mixture_quality, float("nan"), warnings=warned
            )
        estimate = float(np.clip(raw, 0.0, 1.0))
        self.threshold = noise_model.quantile_threshold(values, estimate)
        # what it cannot see (docs/guide/image-text-pools.md): a bad pair the reference scores like a clean one
        return noise_model.SplitReport("held-out clean pairs", estimate, mixture_quality, float("nan"), warnings=warned)

    def columns(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """``combined_score`` and ``combined_keep`` of one range's frame, with the scales and split ``fit`` found."""
        inputs = {name: frame[name].to_numpy(np.float64) for name in baselines.PAIR_COMBINED_INPUTS}
        score = baselines.pair_combined_score(inputs, self.scales)
        if self.threshold is not None:
            return {"combined_score": score, "combined_keep": np.isfinite(score) & (score >= self.threshold)}
        return {"combined_score": score, "combined_keep": self.split.upper(score)}


class _Finisher:
    """Stage 2 over ranges of positions: ``observe`` every range (pass 1), ``fit``, then ``finish``
    every range (pass 2). A range is its samples' base frame (with ``position``) and score rows."""

    def __init__(self, options: Stage2Options, total: int):
        self.options = options
        self.fitter = stage2.Stage2Fitter(options.binarisation, options.aggregation, total, options.cap)
        self.combined = _Combined(total, options.cap)
        # pairs runs: used instead of ``combined``
        self.pair_combined = _PairCombined(total, options.cap, clean=options.clean_pairs)
        self.pairs = False
        self.combine = False
        #: the combined score's mimic part: each sample's mean cos, or its mean proj where the run recorded no cos
        #: (``score --method proj``, the default of a fixed checkpoint)
        self.mimic_signal: str | None = None
        self.fit_result: stage2.Stage2Fit | None = None

    def observe(self, frame: pd.DataFrame, rows: pd.DataFrame, probs: np.ndarray | None = None) -> None:
        """Pass 1 over a range: its score rows into the Stage-2 fitter, its combined-score halves into their
        moments (with the given labels and ``probs``, the reference's class probabilities of the frame's rows
        where the run has them, for the combined score's split)."""
        if not self.options.scored:
            return
        self.fitter.add(rows)
        if _PairCombined.applies(frame):  # image-text pairs: their own combined score
            self.pairs = True
            self.pair_combined.add(frame["position"].to_numpy(), _PairCombined.inputs(frame, rows))
        elif "reference_loss" in frame.columns:
            positions = frame["position"].to_numpy()
            if self.mimic_signal is None and len(rows):
                recorded = "cos" in rows.columns and np.isfinite(pd.to_numeric(rows["cos"], errors="coerce")).any()
                self.mimic_signal = "cos" if recorded else "proj"
            cos_mean = _per_sample(rows, self.mimic_signal or "cos", positions)
            labels = _labels(frame)
            self.combined.add(
                positions,
                cos_mean,
                frame["reference_loss"].to_numpy(np.float64),
                labels,
                probs,
                self._model_loss(frame, rows, positions),
            )

    def _model_loss(self, frame: pd.DataFrame, rows: pd.DataFrame, positions: np.ndarray) -> np.ndarray | None:
        """The model's loss of a range: its end-of-run signal, or (``score``) the mean over its score rows."""
        if self.options.losses_from_rows:
            return _per_sample(rows, "loss", positions)
        return frame["model_loss"].to_numpy(np.float64) if "model_loss" in frame.columns else None

    def fit(self) -> None:
        """Fit Stage 2 (and the combined score, where the run has one) on what the ranges contributed."""
        if self.options.scored:
            self.fit_result = self.fitter.fit()
            self.combine = self.pair_combined.fit() if self.pairs else self.combined.fit()

    def finish(self, frame: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
        """The range's samples.parquet rows (without ``position``)."""
        positions = frame["position"].to_numpy()
        out = frame.drop(columns="position").reset_index(drop=True)
        if not self.options.scored:
            out["mimic_score"] = np.nan
            out["keep"] = True
            return out
        result = self.fit_result.apply(rows).reindex(positions)
        if self.options.losses_from_rows:
            out["model_loss"] = _per_sample(rows, "loss", positions)
            out["pred"] = pd.array(_last_per_sample(rows, "pred", positions), dtype="Int64")
            if "reference_loss" in out.columns:  # a labelled score run's reference pass (store.chunk_signals)
                out["reducible_loss"] = out["model_loss"] - out["reference_loss"]
        for column in stage2.PER_SAMPLE_COLUMNS:
            if column == "keep":  # a sample without score rows is not kept
                out[column] = result[column].fillna(False).to_numpy(dtype=bool)
            else:
                out[column] = result[column].to_numpy(dtype=np.float64)
        if self.combine and self.pairs:
            for name, values in self.pair_combined.columns(out).items():
                out[name] = values
        elif self.combine:
            model_loss = out["model_loss"].to_numpy(np.float64) if "model_loss" in out.columns else None
            mimic = out["proj_mean" if self.mimic_signal == "proj" else "cos_mean"].to_numpy()
            for name, values in self.combined.columns(mimic, out["reference_loss"].to_numpy(), model_loss).items():
                out[name] = values
        return out


def _labels(frame: pd.DataFrame) -> np.ndarray | None:
    """The given labels as int64 (−1 where missing), or None for a pool without class labels."""
    if "label" not in frame.columns or not pd.api.types.is_numeric_dtype(frame["label"]):
        return None
    return pd.to_numeric(frame["label"], errors="coerce").fillna(-1).to_numpy(np.int64)


def _per_sample(rows: pd.DataFrame, column: str, positions: np.ndarray) -> np.ndarray:
    """Mean of a score-row column per sample (finite values), at ``positions`` (NaN where none)."""
    if column not in rows.columns or not len(rows):
        return np.full(len(positions), np.nan)
    return stage2.per_sample_mean(rows, column).reindex(positions).to_numpy(np.float64)


def _last_per_sample(rows: pd.DataFrame, column: str, positions: np.ndarray) -> np.ndarray:
    last = rows.drop_duplicates("position", keep="last").set_index("position")[column]
    return last.reindex(positions).to_numpy(dtype=object)


def add_stage2(
    samples: pd.DataFrame,
    scores: pd.DataFrame,
    binarisation: str,
    aggregation: str,
    *,
    positions: np.ndarray | None = None,
    total: int | None = None,
    cap: int = stage2.FIT_CAP,
    reference_probs: np.ndarray | None = None,
) -> pd.DataFrame:
    """The in-memory path: ``samples`` (base columns and signals, one row per sample) with Stage 2's
    columns added from ``scores`` (every score row), the whole pool as one range. ``positions``: each
    sample's pool position (default: from the score rows' ``position`` column, else the row order);
    ``total``: the pool size (default: the last position + 1); ``reference_probs``: the reference's class
    probabilities, a row per ``samples`` row, for the combined score's noise-model split."""
    if positions is None:
        if "position" in scores.columns and len(scores):
            by_id = scores.drop_duplicates("sample_id").set_index("sample_id")["position"]
            positions = by_id.reindex(samples["sample_id"].astype(str)).to_numpy()
            if np.isnan(positions.astype(np.float64)).any():
                raise ValueError("some samples have no score rows; give their positions")
        else:
            positions = np.arange(len(samples))
            ids = pd.Index(samples["sample_id"].astype(str))
            scores = scores.assign(position=ids.get_indexer(scores["sample_id"].astype(str)))
    positions = np.asarray(positions, dtype=np.int64)
    frame = samples.reset_index(drop=True).assign(position=positions)
    order = np.argsort(positions, kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    rows = stage2.sort_rows(scores[[c for c in scores.columns if c in (*ROW_COLUMNS, "loss", "pred")]])
    finisher = _Finisher(
        Stage2Options(binarisation, aggregation, cap=cap),
        int(positions.max()) + 1 if total is None and len(positions) else (total or 0),
    )
    probs = None if reference_probs is None else np.asarray(reference_probs, dtype=np.float64)[order]
    finisher.observe(frame, rows, probs)
    finisher.fit()
    out = finisher.finish(frame, rows)
    return out.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)


class _Scratch:
    """The ranges' base frames (with signals) between the two passes: one row group per range in a
    hidden file of the run directory, so a model pass over the pool runs once."""

    def __init__(self, layout: RunLayout):
        self.path = layout.scratch("stage2-samples")
        self._writer: pq.ParquetWriter | None = None
        self._reader: pq.ParquetFile | None = None

    def put(self, frame: pd.DataFrame) -> None:
        """Append one range's base frame as the next row group (the schema of the first one holds for all)."""
        table = pa.Table.from_pandas(
            frame, preserve_index=False, schema=None if self._writer is None else self._writer.schema
        )
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))

    def get(self, index: int) -> pd.DataFrame:
        """Range ``index``'s base frame (the first read closes the writer: pass 1 is over)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._reader = pq.ParquetFile(self.path)
        return self._reader.read_row_group(index).to_pandas()

    def remove(self) -> None:
        """Delete the scratch file (it only lives between the two passes)."""
        if self._writer is not None:
            self._writer.close()
        self.path.unlink(missing_ok=True)


def _ranges(size: int, chunk: int) -> list[tuple[int, int]]:
    if chunk % MOMENT_BLOCK:
        raise ValueError(f"the Stage-2 chunk ({chunk}) must be a multiple of {MOMENT_BLOCK} positions")
    return [(start, min(start + chunk, size)) for start in range(0, size, chunk)]


def _base_frame(
    pool: PoolView, positions: np.ndarray, arrays: RowArrays | None = None, first_row: int = 0
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """One range's base columns and signal columns; its vector signals go to ``arrays`` (samples rows from
    ``first_row``), or are dropped without it. Also the range's reference class probabilities (a row per
    frame row, NaN where a sample has none), or None when the pool gives none (for the combined split)."""
    frame = pool.base(positions).reset_index(drop=True)
    frame.insert(0, "position", positions)
    probs = None
    if pool.signals is not None:
        found = dict(pool.signals(positions))
        rows = np.searchsorted(positions, np.asarray(found.pop("index"), dtype=np.int64)) if "index" in found else None
        given = found.get("reference_probs")
        if given is not None and len(given):
            given = np.asarray(given, dtype=np.float64).reshape(len(given), -1)
            probs = np.full((len(positions), given.shape[1]), np.nan)
            probs[np.arange(len(positions)) if rows is None else rows] = given
        if arrays is not None:
            arrays.take(found, first_row + (np.arange(len(positions)) if rows is None else rows))
        for name in ROW_ARRAYS:
            found.pop(name, None)
        frame = pd.concat([frame, _signal_columns(found, len(positions), rows)], axis=1)
    return frame, probs


def finish_samples(writer: RunWriter, pool: PoolView, options: Stage2Options) -> Finished:
    """Stage 2 and ``samples.parquet`` for a run whose score parts are on disk, in chunks of
    ``options.chunk`` positions; then the evaluation, read back a column at a time."""
    layout = writer.layout
    scores = ScoreRows(layout) if options.scored else None
    if scores is not None and scores.available and not scores.positioned:
        raise ValueError(
            "the run's score parts have no position column; they were written by an older version (rerun with --force)"
        )
    columns = [c for c in (*ROW_COLUMNS, "loss", "pred") if scores is not None and c in scores.columns]
    finisher = _Finisher(options, pool.size)
    scratch = _Scratch(layout) if pool.signals is not None else None
    arrays = RowArrays(layout, pool.size - len(pool.bad)) if pool.signals is not None else None
    ranges = _ranges(pool.size, options.chunk)

    def rows_of(start: int, stop: int) -> pd.DataFrame:
        if scores is None or not scores.available:
            return pd.DataFrame({c: pd.Series(dtype=np.float64) for c in ("epoch", "position", "proj")})
        return stage2.sort_rows(scores.range(start, stop, columns))

    try:
        first_row = 0
        for start, stop in ranges:  # pass 1: base frames (signals kept in the scratch file), fits
            good = pool.good(start, stop)
            frame, probs = _base_frame(pool, good, arrays, first_row)
            first_row += len(good)
            if scratch is not None:
                scratch.put(frame)
            if options.scored:
                finisher.observe(frame, rows_of(start, stop), probs)
        finisher.fit()
        if arrays is not None:  # complete now; published before samples.parquet, which says the run's rows
            arrays.commit()
        with writer.samples_writer() as samples:  # pass 2: each range's rows, streamed
            for index, (start, stop) in enumerate(ranges):
                frame = scratch.get(index) if scratch is not None else _base_frame(pool, pool.good(start, stop))[0]
                samples.write(finisher.finish(frame, rows_of(start, stop) if options.scored else None))
            if not ranges:
                samples.write(finisher.finish(_base_frame(pool, np.zeros(0, dtype=np.int64))[0], rows_of(0, 0)))
    except BaseException:
        if arrays is not None:
            arrays.abort()
        raise
    finally:
        if scratch is not None:
            scratch.remove()
    finished = _evaluate_file(layout)
    report = (finisher.pair_combined if finisher.pairs else finisher.combined).report if finisher.combine else None
    if report is not None:
        finished.summary["combined_split"] = report.as_dict()
    return finished


def _evaluate_file(layout: RunLayout) -> Finished:
    names = pq.read_schema(layout.samples).names
    reader = pq.ParquetFile(layout.samples)

    def column(name: str) -> np.ndarray:
        return reader.read(columns=[name]).column(name).to_numpy(zero_copy_only=False)

    return _evaluate(column, names)


def _evaluate(column: Callable[[str], np.ndarray], names: list[str]) -> Finished:
    keep = column("keep").astype(bool)
    summary = {"samples": len(keep), "estimated_quality": stage2.quality_estimate(keep)}
    if "combined_keep" in names:
        finite = np.isfinite(column("combined_score").astype(np.float64))
        summary["combined_quality"] = stage2.quality_estimate(column("combined_keep").astype(bool)[finite])
    evaluation: dict[str, dict[str, float]] = {}
    if "is_noisy" in names and "mimic_score" in names:
        mimic = column("mimic_score").astype(np.float64)
        valid = np.isfinite(mimic)
        if valid.any():
            is_noisy = column("is_noisy").astype(bool)[valid]
            kept = keep[valid]
            evaluation["mimic_score"] = detection_metrics(is_noisy, mimic[valid], kept)
            quality = stage2.quality_estimate(kept)
            for name in baselines.UTILITY_SIGN:
                if name == "mimic_score" or name not in names:
                    continue
                util = baselines.UTILITY_SIGN[name] * column(name).astype(np.float64)[valid]
                if not np.isfinite(util).all():
                    continue
                own = column("combined_keep").astype(bool)[valid] if name == "combined_score" else None
                evaluation[name] = detection_metrics(
                    is_noisy, util, own if own is not None else threshold_at_quality(util, quality)
                )
    if evaluation:
        summary["detection"] = evaluation["mimic_score"]
        summary["true_quality"] = evaluation["mimic_score"]["true_quality"]
    return Finished(summary, evaluation)


def evaluate(samples: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Detection metrics for mimic_score and combined_score (each with its own filter) and every other
    baseline (cut at mimic_score's kept fraction), when ground truth exists; empty otherwise."""
    if "keep" not in samples.columns:
        return {}
    return _evaluate(lambda name: samples[name].to_numpy(), list(samples.columns)).evaluation


def format_evaluation(evaluation: dict[str, dict[str, float]]) -> str:
    """The evaluation as the table ``train`` and ``score`` print: AUROC, AP, precision, recall and F1 per signal, then
    the estimated against the true quality."""
    if not evaluation:
        return ""
    lines = [f"{'signal':<16}{'AUROC':>8}{'AP':>8}{'prec':>8}{'recall':>8}{'F1':>8}"]
    for name, m in evaluation.items():
        lines.append(
            f"{name:<16}{m['auroc']:>8.3f}{m['ap']:>8.3f}{m.get('precision', float('nan')):>8.3f}"
            f"{m.get('recall', float('nan')):>8.3f}{m.get('f1', float('nan')):>8.3f}"
        )
    m = evaluation["mimic_score"]
    lines.append(
        f"quality: estimated {m['estimated_quality']:.3f}, true {m['true_quality']:.3f} "
        f"(error {m['quality_error']:+.3f})"
    )
    if "combined_score" in evaluation:
        c = evaluation["combined_score"]
        lines.append(
            f"combined_score quality: estimated {c['estimated_quality']:.3f} (error {c['quality_error']:+.3f})"
        )
    return "\n".join(lines)
