"""The brute-force oracle: one sample at a time, plain autograd, nothing clever.

Why: every fast path is tested against this. It shares no maths with them — a per-sample forward,
``torch.autograd.grad`` of that sample's loss, then explicit dot products — so agreement is evidence.
Slow by design (B forward/backward passes); use ``path="loop"`` only to verify. Per-sample losses only
(each sample is its own batch of one); a loss that couples the batch takes ``scoring.jacobian_path``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mimic_explorer.scoring.losses import CrossEntropyLoss, PerSampleLoss, loss_values
from mimic_explorer.scoring.parts import Parts
from mimic_explorer.scoring.trees import as_args, cat_rows, detached, input_batch_size, rows


def loop_parts(
    model: nn.Module,
    v: dict[str, Tensor],
    inputs: Any,
    targets: Any,
    need_norm: bool,
    state: dict[str, Tensor] | None = None,
    loss: PerSampleLoss | None = None,
) -> Parts:
    """⟨g_i, v⟩, ‖g_i‖² (if asked), ℓ_i and the outputs by a Python loop over the samples."""
    state = dict(state or {})
    params = dict(model.named_parameters())
    loss_fn = loss or CrossEntropyLoss()
    batch = input_batch_size(inputs)
    dots, sqnorms, losses, outputs = [], [], [], []
    with torch.enable_grad():
        for i in range(batch):
            leaves = {n: state.get(n, params[n]).detach().requires_grad_(True) for n in v}
            out = functional_call(model, {**state, **leaves}, as_args(rows(inputs, i, i + 1, batch)))
            loss = loss_values(loss_fn, out, rows(targets, i, i + 1, batch), 1, offset=i)[0]
            outputs.append(detached(out))
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves.values(), strict=True)]
            dots.append(sum((g * v[n].to(g.dtype)).sum() for g, n in zip(grads, v, strict=True)))
            if need_norm:
                sqnorms.append(sum(g.pow(2).sum() for g in grads))
            losses.append(loss.detach())
    empty = next(iter(v.values())).new_zeros(0)
    return Parts(
        torch.stack(dots) if dots else empty,
        (torch.stack(sqnorms) if sqnorms else empty) if need_norm else None,
        torch.stack(losses) if losses else empty,
        cat_rows(outputs),
    )
