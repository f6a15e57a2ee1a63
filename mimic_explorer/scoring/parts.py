"""What every scoring path returns for a slice of the batch, so the API can combine paths freely.

Why: proj needs only ⟨g_i, v⟩; cos also needs ‖g_i‖², which may come from a different path (jvp for
the dot, ghost norms for the norm). Losses travel along so non-finite ones are reported by position,
and the model's outputs of the same pass so a caller needs no second forward for its predictions.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor


class Parts(NamedTuple):
    """Per-sample pieces of the mimic score for one slice of the batch (all shape (b,))."""

    dot: Tensor | None  # ⟨g_i, v⟩ over the mimic layers
    sqnorm: Tensor | None  # ‖g_i‖² over the mimic layers
    losses: Tensor  # ℓ_i with the given targets
    outputs: Any = None  # the model's outputs (logits) for the slice, detached
