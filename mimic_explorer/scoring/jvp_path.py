"""⟨g_i, v⟩ for any parameter set by forward-mode AD: one dual forward pass for the whole batch.

Why: ⟨∇ℓ_i(θ), v⟩ is the directional derivative of ℓ_i along v. Making the mimic-layer parameters
dual numbers (primal θ, tangent v) and running the batch forward once yields every sample's
projection at about the cost of a training step, and — unlike per-sample gradients — needs no B×P
memory and no saved activations (nothing is recorded for a backward pass). It is exact for any loss,
even one that couples the batch (InfoNCE): the tangent of ℓ_i is ⟨∇ℓ_i, v⟩ whatever ℓ_i depends on.

We use ``torch.autograd.forward_ad`` with ``torch.func.functional_call`` (the same maths as
``torch.func.jvp``, without functorch's per-op wrapper). The caller provides eval mode and the math
attention backend (``scoring.context``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_map

from mimic_explorer.scoring.losses import PerSampleLoss, loss_values
from mimic_explorer.scoring.parts import Parts
from mimic_explorer.scoring.trees import as_args, input_batch_size


def is_forward_ad_gap(error: BaseException) -> bool:
    """True for PyTorch's 'no forward-mode rule for this op' errors (the vmap path still works)."""
    text = str(error)
    return isinstance(error, (RuntimeError, NotImplementedError)) and (
        "forward AD" in text or "forward-mode" in text or "forward mode" in text or "jvp function" in text
    )


def is_transform_gap(error: BaseException) -> bool:
    """True for 'this op or autograd.Function does not support torch.func transforms' errors."""
    text = str(error)
    keys = ("functorch", "vmap", "torch.func", "setup_context", "Batching rule", "batching rule")
    return isinstance(error, (RuntimeError, NotImplementedError)) and any(k in text for k in keys)


def jvp_parts(
    model: nn.Module,
    tangents: dict[str, Tensor],
    inputs: Any,
    targets: Any,
    state: dict[str, Tensor] | None,
    offset: int,
    loss: PerSampleLoss,
) -> Parts:
    """Losses and their directional derivatives along ``tangents`` (name → v) for every sample, and the
    model's outputs (primal part).

    ``state`` optionally replaces parameters and buffers (a float32 copy of a half-precision model).
    """
    state = dict(state or {})
    params = dict(model.named_parameters())
    with torch.no_grad(), fwAD.dual_level():
        tensors = dict(state)
        for name, tangent in tangents.items():
            primal = state.get(name, params[name]).detach()
            tensors[name] = fwAD.make_dual(primal, tangent.to(primal.dtype))
        outputs = functional_call(model, tensors, as_args(inputs))
        losses = loss_values(loss, outputs, targets, input_batch_size(inputs), offset)
        primal, tangent = fwAD.unpack_dual(losses)
        outputs = tree_map(lambda t: fwAD.unpack_dual(t).primal if isinstance(t, Tensor) else t, outputs)
    if tangent is None:  # the loss does not depend on the mimic layers
        tangent = torch.zeros_like(primal)
    return Parts(tangent, None, primal, outputs)
