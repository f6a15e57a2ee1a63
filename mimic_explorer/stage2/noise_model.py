"""How many labels of the pool are right: a label-noise model fitted with the reference's class probabilities,
and the keep threshold of the combined score that it gives.

The model. The reference was trained on clean labels, so its class probabilities ``p(j | x)`` stand for
the *true* class of sample x. A given label ``y`` is the true class passed through an unknown noise
transition ``T[j, k] = P(given label k | true class j)``, so ``P(y | x) = Σ_j p(j | x) T[j, y]``. EM fits
``T`` to the pool's given labels by maximum likelihood (the probabilities stay fixed): the E-step is the
posterior of the true class, ``r_ij ∝ p(j | x_i) T[j, y_i]``, the M-step ``T[j, k] = Σ_{i: y_i = k} r_ij /
Σ_i r_ij``. The posterior that sample i's label is right is ``r_{i, y_i}``, and the estimated clean
fraction (the dataset quality) is their mean. ``T`` is a full matrix, so class-dependent noise
(truck → automobile, cat ↔ dog) is modelled as well as symmetric noise; EM starts from a diagonal-heavy
``T`` (labels mostly right), the usual identifiability assumption of label-noise models.

Why this and not a two-group mixture on the score: the split of a 1-D (or 2-D) Gaussian mixture on the
combined score depends on the shape of the two groups. With class-dependent noise, or a smaller reference,
the clean group's lower tail (hard clean samples of confusable classes) looks like the noisy group, and
the mixture's kept fraction missed the true quality by up to 0.27 on CIFAR-10 (benchmarks/RESULTS.md,
"A split that estimates quality"). The noise model's estimate depends on the reference's probabilities
being roughly calibrated, not on the score's shape; it was within 0.02 of the truth in every measured
setting (three reference sizes, two backbones, symmetric and asymmetric noise). The keep threshold is
then the combined score's (1 − q̂) quantile: the split keeps the top q̂ of the default ranking, so the
kept fraction *is* the quality estimate.

When not to trust it (``SplitReport.warnings``): the clean and noisy groups, weighted by the posterior,
overlap on the combined score (Ashman's D below ``OVERLAP_D``): the count is an estimate but many single
keeps and drops are wrong (soft memberships mix the groups, which lowers D where the posterior is
unsure; on the CIFAR-10 runs it was within 0.08 of the true groups' D); the estimate and the combined
score's own two-group mixture disagree by more than ``DISAGREEMENT``: one of them is off (on our
benchmarks the mixture, on class-dependent noise), and a labelled sample of the pool should decide; the
reference's top class matches the given labels at near-chance rates; the fit did not converge. Without
class probabilities (runs from before they were recorded) the split falls back to the two-group
mixture on the score, and the report says so.

Bounded memory: ``fit_noise_model`` sees a subsample (``votes.fit_sample``, at most
``cap_for(classes)`` rows, fewer for many classes so the (rows × classes) arrays stay small); the split is
a threshold, applied range by range. Plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Ashman's D between the posterior-weighted clean and noisy groups below this: the groups overlap
OVERLAP_D = 2.0
#: the noise model's and the two-group mixture's quality estimates further apart than this: a warning
DISAGREEMENT = 0.1
#: at most this many (row × class) probabilities in one noise-model fit
FIT_CELLS = 20_000_000
#: EM stops when the mean log-likelihood per row improves by less than this, or after ``MAX_ITER`` steps
TOLERANCE = 1e-8
MAX_ITER = 1000


def cap_for(classes: int, cap: int) -> int:
    """How many rows a noise-model fit sees for ``classes`` classes: ``cap``, or fewer so rows × classes ≤
    ``FIT_CELLS`` (but not under 1,000 for that reason)."""
    return int(min(cap, max(1_000, FIT_CELLS // max(classes, 1))))


@dataclass(frozen=True)
class NoiseModel:
    """A fitted label-noise transition ``T[j, k] = P(given k | true j)`` and the clean fraction it implies."""

    transition: np.ndarray
    clean_fraction: float
    iterations: int
    converged: bool
    reference_accuracy: float  # how often the reference's top class is the given label, on the fit's rows

    def posterior(self, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """P(the given label is right | the reference's probabilities), per row."""
        return _posterior(_clean(probs), np.asarray(labels, dtype=np.int64), self.transition)


def _clean(probs: np.ndarray) -> np.ndarray:
    probs = np.clip(np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.0), 1e-12, None)
    return probs / probs.sum(1, keepdims=True)


def _posterior(probs: np.ndarray, labels: np.ndarray, transition: np.ndarray) -> np.ndarray:
    joint = probs * transition[:, labels].T  # (n, K): p(j | x) T[j, y]
    return joint[np.arange(len(labels)), labels] / joint.sum(1)


def fit_noise_model(probs: np.ndarray, labels: np.ndarray, *, start_diagonal: float = 0.9) -> NoiseModel:
    """Fit the transition by EM (module docstring) on rows of ``probs`` (n, K: the reference's class
    probabilities) and ``labels`` (n: the given labels, 0..K−1). Rows with a non-finite probability or a
    label outside 0..K−1 are left out. Raises ``ValueError`` when no row is usable."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs {probs.shape} and labels {labels.shape}: one row of class probabilities per label")
    classes = probs.shape[1]
    usable = np.isfinite(probs).all(1) & (labels >= 0) & (labels < classes)
    if not usable.any():
        raise ValueError("no row with finite class probabilities and a label among them")
    probs, labels = _clean(probs[usable]), labels[usable].astype(np.int64)
    order = np.argsort(labels, kind="stable")
    probs, labels = probs[order], labels[order]
    present, starts = np.unique(labels, return_index=True)
    off = (1.0 - start_diagonal) / max(classes - 1, 1)
    transition = np.full((classes, classes), off)
    np.fill_diagonal(transition, start_diagonal if classes > 1 else 1.0)
    converged, iterations, last = False, 0, -np.inf
    for step in range(1, MAX_ITER + 1):
        iterations = step
        joint = probs * transition[:, labels].T
        likelihood = joint.sum(1, keepdims=True)  # P(y_i | x_i) under the current transition
        joint /= likelihood  # r_ij: posterior of the true class
        mean_log = float(np.log(likelihood).mean())
        if mean_log - last < TOLERANCE:
            converged = True
            break
        last = mean_log
        counts = np.zeros((classes, classes))
        counts[:, present] = np.add.reduceat(joint, starts, axis=0).T  # counts[j, k] = Σ_{i: y_i = k} r_ij
        mass = counts.sum(1, keepdims=True)
        transition = np.where(mass > 0, counts / np.where(mass > 0, mass, 1.0), transition)
    posterior = _posterior(probs, labels, transition)
    return NoiseModel(
        transition=transition,
        clean_fraction=float(posterior.mean()),
        iterations=iterations,
        converged=converged,
        reference_accuracy=float((probs.argmax(1) == labels).mean()),
    )


def ashman_d(values: np.ndarray, upper_weight: np.ndarray) -> float:
    """Ashman's D = √2 |μ₁ − μ₂| / √(σ₁² + σ₂²) of two groups given by soft memberships (``upper_weight`` in
    [0, 1] for group 1, its complement for group 2). D > 2: the groups separate cleanly; NaN if one is empty."""
    values = np.asarray(values, dtype=np.float64)
    w = np.clip(np.asarray(upper_weight, dtype=np.float64), 0.0, 1.0)
    moments = []
    for weight in (w, 1.0 - w):
        total = weight.sum()
        if total <= 0:
            return float("nan")
        mean = float((weight * values).sum() / total)
        moments.append((mean, float((weight * (values - mean) ** 2).sum() / total)))
    (m1, v1), (m2, v2) = moments
    spread = np.sqrt(v1 + v2)
    return float(np.sqrt(2.0) * abs(m1 - m2) / spread) if spread > 0 else float("inf")


@dataclass(frozen=True)
class SplitReport:
    """What the combined score's split found, for ``meta.json``'s summary (``as_dict``) and the app's note."""

    method: str  # "noise model" or "two-group mixture" (no class probabilities)
    estimated_quality: float  # the estimate the threshold was placed at
    mixture_quality: float  # the two-group mixture's kept fraction on the score, for comparison
    separation: float  # Ashman's D of the posterior-weighted groups on the score (NaN without a noise model)
    reference_accuracy: float = float("nan")
    converged: bool = True
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def trusted(self) -> bool:
        """No warning fired."""
        return not self.warnings

    def as_dict(self) -> dict:
        def number(value: float) -> float | None:
            return float(value) if np.isfinite(value) else None

        return {
            "method": self.method,
            "estimated_quality": number(self.estimated_quality),
            "mixture_quality": number(self.mixture_quality),
            "separation": number(self.separation),
            "reference_accuracy": number(self.reference_accuracy),
            "converged": bool(self.converged),
            "trusted": self.trusted,
            "warnings": list(self.warnings),
        }


def split_warnings(report: SplitReport, classes: int | None = None) -> tuple[str, ...]:
    """The reasons (plain sentences) not to trust ``report``'s estimate or its keep-list."""
    out = []
    if report.method != "noise model":
        out.append(
            "no class probabilities from the reference: the split is the two-group mixture on the score, "
            "which missed the true quality by up to 0.27 under class-dependent noise"
        )
    if np.isfinite(report.separation) and report.separation < OVERLAP_D:
        out.append(
            f"the clean and noisy groups overlap on the score (Ashman's D {report.separation:.2f} < {OVERLAP_D:g}): "
            "the kept fraction is an estimate of the count, but many single keeps and drops are wrong"
        )
    if np.isfinite(report.mixture_quality) and abs(report.estimated_quality - report.mixture_quality) > DISAGREEMENT:
        out.append(
            f"the noise model ({report.estimated_quality:.3f}) and the score's two-group mixture "
            f"({report.mixture_quality:.3f}) disagree by more than {DISAGREEMENT:g}: check a labelled sample"
        )
    if classes and np.isfinite(report.reference_accuracy) and report.reference_accuracy < 2.0 / classes:
        out.append(
            f"the reference's top class matches the given label on {report.reference_accuracy:.1%} of the pool, "
            "near chance: its probabilities carry little about the true class"
        )
    if not report.converged:
        out.append(f"the noise model's fit did not converge in {MAX_ITER} steps")
    return tuple(out)


def quantile_threshold(values: np.ndarray, keep_fraction: float) -> float:
    """The threshold t such that about ``keep_fraction`` of ``values`` are ≥ t (the (1 − q) quantile,
    taken at an observed value); −inf keeps everything, +inf nothing."""
    values = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])
    keep = round(float(np.clip(keep_fraction, 0.0, 1.0)) * len(values))
    if keep >= len(values):
        return float("-inf")
    if keep <= 0:
        return float("inf")
    return float(values[len(values) - keep])
