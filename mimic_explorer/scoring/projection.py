"""The mimic projection itself: proj and cos from ⟨g_i, v⟩, ‖v‖ and ‖g_i‖² — the one place it is computed.

Why one function: every caller (the training steps, the end-of-run signals, ``score``,
``mimic_scores``) gets the numerator and the norms by whatever path suits it, and must then turn them
into scores the same way, including the degenerate cases. A zero task vector (the model equals the
reference on the mimic layers) gives ⟨g_i, v⟩ = 0 exactly, and a zero gradient gives ⟨g_i, v⟩ = 0
too, so dividing by norms clamped at the dtype's smallest normal number yields proj = cos = 0 there
and the exact quotient everywhere else — with no branch, so a training step needs no device sync.
The warning about a zero task vector is given once, where the task vector is prepared
(``scoring.prepared``), not here.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

_TINY = {dtype: torch.finfo(dtype).tiny for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


class Projection(NamedTuple):
    """Per-sample results, shape (B,) each."""

    proj: Tensor  # ⟨−g_i, v⟩ / ‖v‖
    cos: Tensor | None  # proj_i / ‖g_i‖ (when the squared norms were given)
    grad_norm: Tensor | None  # ‖g_i‖ (GraNd), with the same clamping


def mimic_projection(dot: Tensor, v_norm: Tensor, sqnorm: Tensor | None = None) -> Projection:
    """proj_i = −⟨g_i, v⟩ / ‖v‖ and, from ``sqnorm`` = ‖g_i‖², cos_i = proj_i / ‖g_i‖.

    ``dot`` and ``sqnorm`` are (B,), ``v_norm`` a 0-d tensor. Norms are clamped at the dtype's
    smallest normal number (‖g_i‖² at it before the square root, which also absorbs a rounding below
    zero): a zero ‖v‖ or ‖g_i‖ comes with a zero ⟨g_i, v⟩ and gives 0, never NaN.
    """
    tiny = _TINY.get(dot.dtype) or torch.finfo(dot.dtype).tiny
    proj = -dot / v_norm.clamp_min(tiny)
    if sqnorm is None:
        return Projection(proj, None, None)
    grad_norm = sqnorm.clamp_min(tiny).sqrt()
    return Projection(proj, proj / grad_norm, grad_norm)
