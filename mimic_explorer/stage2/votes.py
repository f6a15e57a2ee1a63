"""Stage 2: turn per-epoch scores into a keep/drop filter, a per-sample utility and a quality estimate.

The paper describes this stage without shipping code, so the rules are defined here precisely:

- binarise each epoch: ``weight`` ≥ 1/B (B = the sample's batch size, i.e. above-uniform weight),
  ``proj`` ≥ 0, or a split of that epoch's proj values into two groups (``gmm``: 2-component 1-D
  Gaussian mixture; ``kmeans``: 2-means), the higher group kept;
- aggregate votes over epochs: ``majority`` (kept in more than half of the epochs; an exact tie is
  decided by the mean B·weight being ≥ 1), ``unanimity`` (kept in every epoch), or ``mean`` (mean of
  B·weight ≥ 1);
- ``mimic_score`` = fraction of epochs voted *keep*, plus a tie-break in (−0.5/E, 0.5/E) from the mean
  B·weight (or mean proj: without weights, or for a sample never re-weighted — every B·weight 1, as
  when scores are recorded while training plainly) so equal vote counts are still ranked. Higher = more useful, and
  ``keep`` under majority vote is exactly ``mimic_score ≥ 0.5``.

``split_two_groups`` is the same 2-group rule for any per-sample utility (e.g. the combined score of
``baselines.combined_score``): the keep threshold of a score that has no natural zero.

Why fits and chunks: at millions of samples the score rows do not fit in memory at once, so Stage 2
runs in two passes over ranges of pool positions (``commands.finalize``): ``Stage2Fitter`` gathers
what the rules need from the whole pool (the tie-break's spread, each epoch's values for a 2-group
fit), ``Stage2Fit.apply`` then scores one range at a time. A 2-group fit sees at most ``FIT_CAP``
values, a subsample chosen by a hash of the pool position (``fit_sample``), so the fit — and every
result — is the same however the pool is cut into chunks, and the same in the one-chunk, in-memory
path (``aggregate``). Per-sample reductions run over rows sorted by (position, epoch, step).

Plain numpy/pandas: arrays in, arrays out; no torch. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mimic_explorer.util.choices import AGGREGATIONS, BINARISATIONS

#: at most this many values (in expectation) feed one 2-group fit; above it, a deterministic subsample
FIT_CAP = 100_000
#: the columns of one sample's Stage-2 result, in the order samples.parquet holds them
PER_SAMPLE_COLUMNS = ("mimic_score", "keep", "votes", "proj_mean", "proj_min", "proj_last", "cos_mean")


def fit_sample(positions: np.ndarray, total: int, cap: int = FIT_CAP) -> np.ndarray:
    """Boolean mask of the values a 2-group fit sees: all of them when ``total`` ≤ ``cap``, else those
    whose position hashes below cap/total (about ``cap`` of them, spread uniformly over the pool).
    Depends on each position alone, so any chunking of the pool selects the same values."""
    positions = np.asarray(positions, dtype=np.int64)
    if total <= cap:
        return np.ones(len(positions), dtype=bool)
    z = positions.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)  # splitmix64's finaliser: a uniform hash
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 < cap / total


@dataclass(frozen=True)
class TwoGroupSplit:
    """A fitted 1-D two-cluster rule; ``upper(values)`` marks the values of the higher group.

    ``gmm``: a 2-component Gaussian mixture (scikit-learn, seeded) whose upper component is the one
    with the higher mean; a value belongs to the component of highest weighted density (computed here,
    element by element, so predicting in chunks gives the same marks). ``kmeans``: 2-means from the
    quartiles; a value is upper when nearer the upper centre. Fewer than two distinct values: all upper.
    """

    method: str
    everything: bool = False
    centres: tuple[float, float] = (0.0, 0.0)  # kmeans: lower, upper
    means: tuple[float, ...] = ()  # gmm, per component
    precisions: tuple[float, ...] = ()  # gmm: 1 / standard deviation
    log_weights: tuple[float, ...] = ()
    upper_component: int = 0

    @classmethod
    def fit(cls, values: np.ndarray, method: str) -> TwoGroupSplit:
        """Fit the split on ``values`` (finite, in a fixed order: the fit is seeded and order-sensitive). Raises
        ``ValueError`` for another method or for non-finite values."""
        if method not in ("gmm", "kmeans"):
            raise ValueError(f"unknown two-group split {method!r}; choose gmm or kmeans")
        values = np.asarray(values, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("a two-group split needs finite values; drop or fill NaN / inf first")
        if len(values) < 2 or np.ptp(values) == 0:
            return cls(method, everything=True)
        if method == "kmeans":
            return cls(method, centres=_two_means(values))
        from sklearn.mixture import GaussianMixture

        gmm = GaussianMixture(2, random_state=0).fit(values.reshape(-1, 1))
        return cls(
            method,
            means=tuple(float(m) for m in gmm.means_.ravel()),
            precisions=tuple(float(p) for p in gmm.precisions_cholesky_.ravel()),
            log_weights=tuple(float(w) for w in np.log(gmm.weights_)),
            upper_component=int(np.argmax(gmm.means_.ravel())),
        )

    def upper(self, values: np.ndarray) -> np.ndarray:
        """Whether each value belongs to the upper group (False for NaN), element by element, so marks predicted in
        chunks equal marks predicted at once."""
        values = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(values)
        if self.everything:
            return finite
        if self.method == "kmeans":
            lo, hi = self.centres
            return finite & (np.abs(values - hi) < np.abs(values - lo))
        log_density = np.stack(
            [
                -0.5 * (np.log(2 * np.pi) + (values * p - m * p) ** 2) + np.log(p) + w
                for m, p, w in zip(self.means, self.precisions, self.log_weights, strict=True)
            ]
        )
        return finite & (np.argmax(log_density, axis=0) == self.upper_component)


def _two_means(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [25, 75])
    for _ in range(100):
        upper = np.abs(values - hi) < np.abs(values - lo)
        if upper.all() or (~upper).all():
            break
        new_lo, new_hi = values[~upper].mean(), values[upper].mean()
        if np.isclose(new_lo, lo) and np.isclose(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    return float(lo), float(hi)


def split_two_groups(
    values: np.ndarray, method: str = "gmm", *, positions: np.ndarray | None = None, cap: int = FIT_CAP
) -> np.ndarray:
    """Boolean 'upper group' mask of a 1-D two-cluster fit (``gmm`` or ``kmeans``, see
    ``TwoGroupSplit``), fitted on at most ``cap`` values chosen by ``fit_sample`` (``positions``
    default to 0..n−1). Fewer than two distinct values: all kept."""
    if method not in ("gmm", "kmeans"):
        raise ValueError(f"unknown two-group split {method!r}; choose gmm or kmeans")
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("a two-group split needs finite values; drop or fill NaN / inf first")
    positions = np.arange(len(values)) if positions is None else np.asarray(positions, dtype=np.int64)
    split = TwoGroupSplit.fit(values[fit_sample(positions, len(values), cap)], method)
    return split.upper(values)


def _check_rules(binarisation: str, aggregation: str = "majority") -> None:
    if binarisation not in BINARISATIONS:
        raise ValueError(f"unknown binarisation {binarisation!r}; choose one of {', '.join(BINARISATIONS)}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")


def _votes(rows: pd.DataFrame, rule: str, splits: dict[int, TwoGroupSplit]) -> np.ndarray:
    """Per-row keep vote (bool) under ``rule``; ``splits``: each epoch's fitted 2-group rule."""
    if rule == "weight":
        return rows["weight"].to_numpy(np.float64) * rows["batch_size"].to_numpy(np.float64) >= 1.0 - 1e-9
    proj = rows["proj"].to_numpy(np.float64)
    if rule == "proj":
        return proj >= 0
    epochs = rows["epoch"].to_numpy()
    votes = np.zeros(len(rows), dtype=bool)
    for epoch in np.unique(epochs):
        in_epoch = epochs == epoch
        split = splits.get(int(epoch))
        if split is not None:
            votes[in_epoch] = split.upper(proj[in_epoch])
    return votes


def binarise(scores: pd.DataFrame, rule: str = "weight", *, cap: int = FIT_CAP) -> pd.Series:
    """Per-row keep vote for the long score table (columns epoch, proj, weight, batch_size; ``position``
    when present chooses the values a 2-group fit sees, else the row order within the epoch)."""
    _check_rules(rule)
    fitter = Stage2Fitter(rule, "majority", total=_pool_size(scores), cap=cap)
    fitter.add_votes(_with_positions(scores))
    return pd.Series(_votes(scores, rule, fitter.splits()), index=scores.index)


def _with_positions(scores: pd.DataFrame) -> pd.DataFrame:
    """The rows with a ``position`` column: their own, or the order of first appearance of sample ids."""
    if "position" in scores.columns:
        return scores
    return scores.assign(position=pd.factorize(scores["sample_id"])[0].astype(np.int64))


def _pool_size(scores: pd.DataFrame) -> int:
    if "position" in scores.columns:
        return int(scores["position"].max()) + 1 if len(scores) else 0
    return int(scores["sample_id"].nunique())


def sort_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows in the order every per-sample reduction uses: by position, then epoch, then step."""
    keys = [rows[name].to_numpy() for name in ("step", "epoch") if name in rows.columns]
    order = np.lexsort([*keys, rows["position"].to_numpy()])
    return rows.iloc[order].reset_index(drop=True)


@dataclass
class _Samples:
    """Per-sample reductions of rows sorted by ``sort_rows``: one entry per distinct position."""

    position: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    tiebreak: np.ndarray  # log of mean B·weight, or mean proj: ranks equal vote counts (see ``of``)

    @classmethod
    def of(cls, rows: pd.DataFrame) -> _Samples:
        """The samples of rows sorted by ``sort_rows``, with the tie-break of equal vote counts: the log of the mean
        B·weight where rows have weights, else the mean proj."""
        positions = rows["position"].to_numpy(np.int64)
        starts = (
            np.flatnonzero(np.r_[True, positions[1:] != positions[:-1]]) if len(positions) else np.zeros(0, np.int64)
        )
        counts = np.diff(np.r_[starts, len(positions)])
        samples = cls(positions[starts], starts, counts, np.zeros(len(starts)))
        mean_proj = samples.mean(rows["proj"].to_numpy(np.float64))
        if "weight" in rows.columns and "batch_size" in rows.columns:
            scaled = rows["weight"].to_numpy(np.float64) * rows["batch_size"].to_numpy(np.float64)
            relative = samples.mean(scaled)
            # a sample never re-weighted (every row uniform: B·weight = 1, as when scores are recorded while
            # training plainly, --starting-epoch = --epochs) is ranked by its mean proj: its weights say nothing
            uniform = samples.total((np.abs(scaled - 1.0) > 1e-6).astype(np.float64)) == 0
            samples.tiebreak = np.where(uniform, mean_proj, np.log(np.clip(relative, 1e-12, None)))
        else:
            samples.tiebreak = mean_proj
        return samples

    def total(self, values: np.ndarray) -> np.ndarray:
        """Sum of ``values`` (one per row) per sample."""
        return np.add.reduceat(values, self.starts) if len(self.starts) else np.zeros(0)

    def mean(self, values: np.ndarray) -> np.ndarray:
        """Mean of the finite values of each sample (NaN when it has none)."""
        finite = np.isfinite(values)
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.total(np.where(finite, values, 0.0)) / self.total(finite.astype(np.float64))

    def minimum(self, values: np.ndarray) -> np.ndarray:
        """Minimum of ``values`` per sample (NaN only where all are NaN)."""
        return np.fmin.reduceat(values, self.starts) if len(self.starts) else np.zeros(0)

    def last(self, values: np.ndarray) -> np.ndarray:
        """Each sample's value in its last row (the latest epoch and step)."""
        return values[self.starts + self.counts - 1]


def per_sample_mean(rows: pd.DataFrame, column: str) -> pd.Series:
    """Mean of the finite values of one score-row column per sample, indexed by position (ascending),
    from rows sorted by ``sort_rows`` (the reduction ``Stage2Fit.apply`` uses for ``cos_mean``)."""
    samples = _Samples.of(rows)
    return pd.Series(samples.mean(rows[column].to_numpy(np.float64)), index=samples.position)


@dataclass
class Stage2Fit:
    """What the rules learnt from the whole pool; ``apply`` scores the rows of any range of samples."""

    binarisation: str
    aggregation: str
    splits: dict[int, TwoGroupSplit]
    spread: float  # largest |tie-break| in the pool: scales the tie-break into (−0.5, 0.5)

    def apply(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Per-sample ``PER_SAMPLE_COLUMNS`` plus ``epochs``, indexed by position (ascending), from the
        rows of whole samples (every epoch of each) sorted by ``sort_rows``."""
        samples = _Samples.of(rows)
        votes = samples.total(_votes(rows, self.binarisation, self.splits).astype(np.float64))
        epochs = samples.counts.astype(np.float64)
        squashed = np.zeros(len(votes)) if self.spread == 0 else 0.49 * samples.tiebreak / self.spread
        mimic_score = votes / epochs + squashed / epochs
        if self.aggregation == "majority":
            keep = mimic_score >= 0.5
        elif self.aggregation == "unanimity":
            keep = votes / epochs >= 1.0
        else:  # mean: log(mean B·weight) ≥ 0, i.e. mean B·weight ≥ 1 (or mean proj ≥ 0)
            keep = samples.tiebreak >= 0.0
        proj = rows["proj"].to_numpy(np.float64)
        cos = rows["cos"].to_numpy(np.float64) if "cos" in rows.columns else np.full(len(rows), np.nan)
        return pd.DataFrame(
            {
                "mimic_score": mimic_score,
                "keep": keep.astype(bool),
                "votes": votes,
                "proj_mean": samples.mean(proj),
                "proj_min": samples.minimum(proj),
                "proj_last": samples.last(proj),
                "cos_mean": samples.mean(cos),
                "epochs": samples.counts.astype(np.int64),
            },
            index=pd.Index(samples.position, name="position"),
        )


@dataclass
class Stage2Fitter:
    """Pass 1 of Stage 2, fed the rows of whole samples one range of positions at a time (any order
    of ranges): the tie-break's spread and, for ``gmm``/``kmeans``, each epoch's subsample of proj."""

    binarisation: str
    aggregation: str
    total: int  # pool size: with ``cap``, how many values a fit may see
    cap: int = FIT_CAP
    spread: float = 0.0
    _fit_values: dict[int, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_rules(self.binarisation, self.aggregation)

    def add(self, rows: pd.DataFrame) -> None:
        """Rows sorted by ``sort_rows``."""
        tiebreak = _Samples.of(rows).tiebreak
        finite = np.abs(tiebreak[np.isfinite(tiebreak)])
        if len(finite):
            self.spread = max(self.spread, float(finite.max()))
        self.add_votes(rows)

    def add_votes(self, rows: pd.DataFrame) -> None:
        """For ``gmm``/``kmeans``: each epoch's proj values of a seeded subsample of the rows (at most ``cap`` over the
        pool), kept to fit that epoch's split."""
        if self.binarisation not in ("gmm", "kmeans"):
            return
        positions = rows["position"].to_numpy(np.int64)
        chosen = fit_sample(positions, self.total, self.cap)
        epochs, proj = rows["epoch"].to_numpy()[chosen], rows["proj"].to_numpy(np.float64)[chosen]
        positions = positions[chosen]
        for epoch in np.unique(epochs):
            in_epoch = (epochs == epoch) & np.isfinite(proj)
            self._fit_values.setdefault(int(epoch), []).append((positions[in_epoch], proj[in_epoch]))

    def splits(self) -> dict[int, TwoGroupSplit]:
        """Each epoch's 2-group rule, fitted on its subsample in position order (whatever order the
        ranges came in)."""
        splits = {}
        for epoch, pieces in self._fit_values.items():
            positions = np.concatenate([p for p, _ in pieces])
            values = np.concatenate([v for _, v in pieces])
            splits[epoch] = TwoGroupSplit.fit(values[np.argsort(positions, kind="stable")], self.binarisation)
        return splits

    def fit(self) -> Stage2Fit:
        """Pass 1 is over: the fitted rule that ``Stage2Fit.apply`` runs on every range in pass 2."""
        return Stage2Fit(self.binarisation, self.aggregation, self.splits(), self.spread)


def aggregate(
    scores: pd.DataFrame, binarisation: str = "weight", aggregation: str = "majority", *, cap: int = FIT_CAP
) -> pd.DataFrame:
    """Per-sample Stage-2 result indexed by sample_id: ``mimic_score``, ``keep``, ``votes``, ``epochs``
    (the in-memory path: one range holding the whole pool)."""
    _check_rules(binarisation, aggregation)
    rows = sort_rows(_with_positions(scores))
    fitter = Stage2Fitter(binarisation, aggregation, total=_pool_size(rows), cap=cap)
    fitter.add(rows)
    result = fitter.fit().apply(rows)
    first = rows.drop_duplicates("position")
    result.index = pd.Index(first["sample_id"].to_numpy(), name="sample_id")
    order = pd.Index(pd.unique(scores["sample_id"]), name="sample_id")  # as before: order of first appearance
    return result.reindex(order)[["mimic_score", "keep", "votes", "epochs"]]


def quality_estimate(keep: np.ndarray) -> float:
    """Estimated fraction of useful (clean) samples: the fraction kept."""
    keep = np.asarray(keep, dtype=bool)
    return float(keep.mean()) if len(keep) else float("nan")
