"""Stage 2: turn per-epoch scores into a keep/drop filter, a per-sample utility and a quality estimate.

The paper describes this stage without shipping code, so the rules are defined here precisely:

- binarise each epoch: ``weight`` ≥ 1/B (B = the sample's batch size, i.e. above-uniform weight),
  ``proj`` ≥ 0, or a split of that epoch's proj values into two groups (``gmm``: 2-component 1-D
  Gaussian mixture; ``kmeans``: 2-means), the higher group kept;
- aggregate votes over epochs: ``majority`` (kept in more than half of the epochs; an exact tie is
  decided by the mean B·weight being ≥ 1), ``unanimity`` (kept in every epoch), or ``mean`` (mean of
  B·weight ≥ 1);
- ``mimic_score`` = fraction of epochs voted *keep*, plus a tie-break in (−0.5/E, 0.5/E) from the mean
  B·weight (or mean proj) so equal vote counts are still ranked. Higher = more useful, and
  ``keep`` under majority vote is exactly ``mimic_score ≥ 0.5``.

``split_two_groups`` is the same 2-group rule for any per-sample utility (e.g. the combined score of
``baselines.combined_score``): the keep threshold of a score that has no natural zero.

Plain numpy/pandas: arrays in, arrays out; no torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BINARISATIONS = ("weight", "proj", "gmm", "kmeans")
AGGREGATIONS = ("majority", "unanimity", "mean")


def split_two_groups(values: np.ndarray, method: str = "gmm") -> np.ndarray:
    """Boolean 'upper group' mask of a 1-D two-cluster fit: ``gmm`` (2-component Gaussian mixture,
    seeded) or ``kmeans`` (2-means from the quartiles). Fewer than two distinct values: all kept."""
    if method not in ("gmm", "kmeans"):
        raise ValueError(f"unknown two-group split {method!r}; choose gmm or kmeans")
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("a two-group split needs finite values; drop or fill NaN / inf first")
    if len(values) < 2 or np.ptp(values) == 0:
        return np.ones(len(values), dtype=bool)
    if method == "kmeans":
        lo, hi = np.percentile(values, [25, 75])
        for _ in range(100):
            upper = np.abs(values - hi) < np.abs(values - lo)
            if upper.all() or (~upper).all():
                break
            new_lo, new_hi = values[~upper].mean(), values[upper].mean()
            if np.isclose(new_lo, lo) and np.isclose(new_hi, hi):
                break
            lo, hi = new_lo, new_hi
        return np.abs(values - hi) < np.abs(values - lo)
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(2, random_state=0).fit(values.reshape(-1, 1))
    upper_component = int(np.argmax(gmm.means_.ravel()))
    return gmm.predict(values.reshape(-1, 1)) == upper_component


_two_group_split = split_two_groups  # the name earlier code used


def mean_per_sample(scores: pd.DataFrame, column: str) -> pd.Series:
    """Mean of one recorded score column over a sample's epochs, indexed by ``sample_id``
    (e.g. ``cos`` for ``baselines.combined_score``)."""
    return scores.groupby("sample_id", sort=False)[column].mean()


def binarise(scores: pd.DataFrame, rule: str = "weight") -> pd.Series:
    """Per-row keep vote for the long score table (columns epoch, proj, weight, batch_size)."""
    if rule not in BINARISATIONS:
        raise ValueError(f"unknown binarisation {rule!r}; choose one of {', '.join(BINARISATIONS)}")
    if rule == "weight":
        return pd.Series(scores["weight"].to_numpy() * scores["batch_size"].to_numpy() >= 1.0 - 1e-9, index=scores.index)
    if rule == "proj":
        return scores["proj"] >= 0
    votes = pd.Series(False, index=scores.index)
    for _, group in scores.groupby("epoch", sort=True):
        votes.loc[group.index] = split_two_groups(group["proj"].to_numpy(), rule)
    return votes


def aggregate(
    scores: pd.DataFrame, binarisation: str = "weight", aggregation: str = "majority"
) -> pd.DataFrame:
    """Per-sample Stage-2 result indexed by sample_id: ``mimic_score``, ``keep``, ``votes``, ``epochs``."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
    frame = scores.assign(vote=binarise(scores, binarisation).astype(np.float64))
    if "weight" in frame and "batch_size" in frame:
        frame["relative_weight"] = frame["weight"] * frame["batch_size"]
        tiebreak_col = "relative_weight"
    else:
        tiebreak_col = "proj"
    grouped = frame.groupby("sample_id", sort=False)
    per_sample = pd.DataFrame(
        {
            "votes": grouped["vote"].sum(),
            "epochs": grouped["vote"].count(),
            "tiebreak": grouped[tiebreak_col].mean(),
        }
    )
    vote_fraction = per_sample["votes"] / per_sample["epochs"]
    tb = per_sample["tiebreak"].to_numpy()
    if tiebreak_col == "relative_weight":
        tb = np.log(np.clip(tb, 1e-12, None))
    spread = np.nanmax(np.abs(tb)) if len(tb) and np.isfinite(tb).any() else 0.0
    squashed = np.zeros_like(tb) if spread == 0 else 0.49 * tb / spread  # within (−0.5, 0.5)
    mimic_score = vote_fraction + squashed / per_sample["epochs"]
    if aggregation == "majority":
        keep = mimic_score >= 0.5
    elif aggregation == "unanimity":
        keep = vote_fraction >= 1.0
    else:
        keep = per_sample["tiebreak"] >= (1.0 if tiebreak_col == "relative_weight" else 0.0)
    per_sample["mimic_score"] = mimic_score
    per_sample["keep"] = keep.astype(bool)
    return per_sample[["mimic_score", "keep", "votes", "epochs"]]


def quality_estimate(keep: np.ndarray) -> float:
    """Estimated fraction of useful (clean) samples: the fraction kept."""
    keep = np.asarray(keep, dtype=bool)
    return float(keep.mean()) if len(keep) else float("nan")
