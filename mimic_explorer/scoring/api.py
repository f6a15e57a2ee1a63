"""``mimic_scores``: exact per-sample mimic scores for any PyTorch model, by the cheapest path.

Why one entry point: callers (notebooks, scripts) should say *what* they want — which parameters are
the mimic layers, proj or cos, which loss — and get exact numbers at about the cost of the forward
pass (head) or a training step (any parameter set). It is a one-batch use of
``scoring.prepared.PreparedScorer``, which documents the paths; code that scores many batches against
one reference should prepare a scorer once instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from mimic_explorer.scoring.losses import PerSampleLoss
from mimic_explorer.scoring.prepared import PATHS, SCORE_METHODS, PreparedScorer

__all__ = ["PATHS", "SCORE_METHODS", "mimic_scores"]


def mimic_scores(
    model: nn.Module,
    reference: nn.Module,
    inputs: Tensor,
    targets: Any,
    *,
    params: str | Sequence[str] = "head",
    method: str = "proj",
    path: str = "auto",
    chunk_size: int | None = None,
    loss: PerSampleLoss | Callable[[Any, Any], Tensor] | None = None,
) -> Tensor:
    """Mimic score of every sample: how well its gradient step points from ``model`` toward ``reference``.

    proj: m_i = ⟨−g_i, v⟩ / ‖v‖; cos: ⟨−g_i, v⟩ / (‖g_i‖ ‖v‖), with g_i = ∇ℓ_i over the mimic layers S
    and v = θ_ref[S] − θ[S]. Positive = the sample moves the model toward the reference. One call
    scores one batch; to score many against the same reference, ``scoring.prepared.PreparedScorer``
    resolves everything once.

    Parameters
    ----------
    model, reference
        The same architecture (parameter names and shapes must match).
    inputs
        A (B, ...) batch: a tensor, or a tuple of batched tensors passed as the model's arguments.
    targets
        (B,) integer class indices for the default cross-entropy, or whatever ``loss`` accepts.
    params
        The mimic layers: ``"head"`` (the Linear producing the logits), ``"all"`` (the trainable
        parameters; every parameter when none is trainable) or a list of names from
        ``model.named_parameters()``.
    method
        ``"proj"`` or ``"cos"``.
    path
        ``"auto"`` (the cheapest exact path), or force ``"head"``, ``"output"``, ``"jvp"``, ``"vmap"``
        or ``"loop"`` (the oracle); see ``scoring.prepared``.
    chunk_size
        Samples per slice (bounds memory). Default: the whole batch for head/jvp, a memory-budgeted
        chunk for vmap.
    loss
        The per-sample loss whose gradients are scored: anything called as ``loss(outputs, targets)``
        that returns the (B,) per-sample losses of ``model(inputs)`` (``outputs`` is whatever the model
        returns: logits, or a dual encoder's ``DualOutput``). Either a ``scoring.losses.PerSampleLoss``,
        which declares whether ℓ_i depends on other samples (``couples_batch``;
        ``scoring.contrastive.InfoNCELoss`` does), or a plain callable, taken as per-sample — wrap a
        hand-written coupled loss in ``scoring.losses.CallableLoss(fn, couples_batch=True)``. Every path
        is exact for any loss so declared; a coupled loss is evaluated on the whole batch, so a sample's
        score is relative to the batch it is scored in. Default: cross-entropy with integer labels.

    Returns
    -------
    torch.Tensor
        1-D, length B, on the model's device. A model identical to the reference (on S) scores 0
        everywhere and warns.

    Raises
    ------
    ValueError
        An unknown ``method``, ``path`` or ``params``, parameter names the model lacks, a reference that
        does not match the model, a forced path that cannot be used, or non-finite losses or scores
        (naming the samples).
    """
    scorer = PreparedScorer(model, reference, params=params, method=method, path=path, chunk_size=chunk_size, loss=loss)
    scores = scorer(inputs, targets)
    return scores.cos if method == "cos" else scores.proj
