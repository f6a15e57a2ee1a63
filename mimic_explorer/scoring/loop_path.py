"""The brute-force oracle: one sample at a time, plain autograd, nothing clever.

Why: every fast path is tested against this. It shares no maths with them — a per-sample forward,
``torch.autograd.grad`` of that sample's loss, then explicit dot products — so agreement is evidence.
Slow by design (B forward/backward passes); use ``path="loop"`` only to verify.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mimic_explorer.scoring.checks import per_sample_losses
from mimic_explorer.scoring.parts import Parts


def loop_parts(
    model: nn.Module,
    v: dict[str, Tensor],
    inputs: Tensor,
    targets: Tensor,
    need_norm: bool,
    state: dict[str, Tensor] | None = None,
) -> Parts:
    """⟨g_i, v⟩, ‖g_i‖² (if asked) and ℓ_i by a Python loop over the samples."""
    state = dict(state or {})
    params = dict(model.named_parameters())
    dots, sqnorms, losses = [], [], []
    with torch.enable_grad():
        for i in range(inputs.shape[0]):
            leaves = {n: state.get(n, params[n]).detach().requires_grad_(True) for n in v}
            logits = functional_call(model, {**state, **leaves}, (inputs[i : i + 1],))
            loss = per_sample_losses(logits, targets[i : i + 1], offset=i)[0]
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves.values())]
            dots.append(sum((g * v[n].to(g.dtype)).sum() for g, n in zip(grads, v)))
            if need_norm:
                sqnorms.append(sum(g.pow(2).sum() for g in grads))
            losses.append(loss.detach())
    empty = inputs.new_zeros(0)
    return Parts(
        torch.stack(dots) if dots else empty,
        (torch.stack(sqnorms) if sqnorms else empty) if need_norm else None,
        torch.stack(losses) if losses else empty,
    )
