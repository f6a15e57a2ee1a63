"""UI-free explorer state: everything the views show, computed from a run with pandas/numpy only.

Why separate: the views stay thin and the logic is testable (and benchmarkable at a million samples)
without a browser. Nothing here imports panel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mimic_explorer.filters import FilterResult, FilterRule, apply_rule
from mimic_explorer.store.reader import Run


@dataclass
class Histogram:
    edges: np.ndarray
    counts: np.ndarray


def robust_range(values: np.ndarray, tail: float = 0.001) -> tuple[float, float]:
    """Score range without the most extreme 0.1 % at each end (and never empty)."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return 0.0, 1.0
    lo, hi = np.quantile(finite, [tail, 1 - tail]) if len(finite) > 1000 else (finite.min(), finite.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return float(lo), float(hi)


def histogram(values: np.ndarray, bins: int = 60) -> Histogram:
    finite = values[np.isfinite(values)]
    lo, hi = robust_range(finite)
    counts, edges = np.histogram(np.clip(finite, lo, hi), bins=bins, range=(lo, hi))
    return Histogram(edges, counts)


class ExplorerState:
    """A run's samples plus the current filter; recomputes counts on each threshold change."""

    def __init__(self, run: Run, column: str = "mimic_score"):
        self.run = run
        self.samples = run.samples
        self.column = column
        self.scores = self.samples[column].to_numpy(dtype=np.float64)
        self.order = np.argsort(self.scores, kind="stable")  # ascending, computed once
        self.class_names = run.class_names

    @property
    def total(self) -> int:
        return len(self.samples)

    def default_threshold(self) -> float:
        """Start where the run's own ensemble filter would cut, if it has one."""
        if "keep" in self.samples.columns and self.samples["keep"].any() and (~self.samples["keep"]).any():
            kept = self.scores[self.samples["keep"].to_numpy(dtype=bool)]
            return float(np.nanmin(kept))
        return float(np.nanmedian(self.scores))

    def apply(self, threshold: float) -> FilterResult:
        return apply_rule(self.samples, FilterRule("threshold", threshold, self.column))

    def rule(self, threshold: float) -> FilterRule:
        return FilterRule("threshold", float(threshold), self.column)

    def lowest(self, k: int) -> pd.DataFrame:
        return self.samples.iloc[self.order[:k]]

    def highest(self, k: int) -> pd.DataFrame:
        return self.samples.iloc[self.order[::-1][:k]]

    def label_name(self, label: int) -> str:
        if 0 <= int(label) < len(self.class_names):
            return self.class_names[int(label)]
        return str(label)
