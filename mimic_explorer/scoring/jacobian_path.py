"""Per-sample gradients of a loss that couples the batch: rows of the Jacobian of the (B,) loss vector.

Why: with a contrastive loss (InfoNCE) ℓ_i depends on every sample's outputs, so g_i = ∇θ ℓ_i(batch)
is not what a single-sample pass, ``vmap(grad)`` over samples or ghost norms give (they assume ℓ_i
sees sample i alone). The exact g_i are the rows of J = ∂(ℓ_1..ℓ_B)/∂θ over the mimic layers, from
one forward of the whole batch. We build J the way ``torch.func.jacrev`` does — one ``vjp`` of the
loss vector, pulled back along one-hot rows under ``vmap`` — but a chunk of rows at a time, reducing
each chunk to ⟨g_i, v⟩ and ‖g_i‖² at once, so memory holds chunk×P gradient entries, never B×P.
``vectorized=False`` pulls back one row at a time with plain autograd (for models whose ops torch.func
cannot transform, and as ``path="loop"``). proj alone never needs this: ``scoring.jvp_path`` is exact
for any coupling at the cost of one forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from mimic_explorer.scoring.losses import PerSampleLoss, loss_values
from mimic_explorer.scoring.parts import Parts
from mimic_explorer.scoring.trees import as_args, detached, input_batch_size


def _reduce(grads: dict[str, Tensor], v: dict[str, Tensor], need_norm: bool) -> tuple[Tensor, Tensor | None]:
    """(⟨g_i, v⟩, ‖g_i‖²) for a chunk of rows, each gradient shaped (rows, *param)."""
    flat = {n: g.flatten(1) for n, g in grads.items()}
    dot = sum(flat[n] @ v[n].reshape(-1).to(flat[n].dtype) for n in v)
    sqnorm = sum(f.pow(2).sum(1) for f in flat.values()) if need_norm else None
    return dot, sqnorm


def jacobian_parts(
    model: nn.Module,
    v: dict[str, Tensor],
    inputs: Any,
    targets: Any,
    need_norm: bool,
    chunk: int,
    state: dict[str, Tensor] | None,
    loss: PerSampleLoss,
    vectorized: bool = True,
) -> Parts:
    """⟨g_i, v⟩ (and ‖g_i‖²) over the parameters named in ``v`` for every sample of the whole batch,
    with the losses and outputs of its one forward pass."""
    state = dict(state or {})
    params = dict(model.named_parameters())
    primals = {n: state.get(n, params[n]).detach() for n in v}
    rest = {n: t for n, t in state.items() if n not in primals}
    batch = input_batch_size(inputs)
    args = as_args(inputs)

    def losses_of(ps: dict[str, Tensor]) -> tuple[Tensor, Any]:
        outputs = functional_call(model, {**rest, **ps}, args)
        return loss_values(loss, outputs, targets, batch), detached(outputs)

    dots, sqnorms = [], []
    if vectorized:
        with torch.no_grad():  # torch.func differentiates inside its transforms; record nothing else
            losses, pull_back, outputs = vjp(losses_of, primals, has_aux=True)
            rows = torch.eye(batch, dtype=losses.dtype, device=losses.device)
            for start in range(0, batch, chunk):
                (grads,) = vmap(pull_back)(rows[start : start + chunk])
                dot, sqnorm = _reduce(grads, v, need_norm)
                dots.append(dot)
                sqnorms.append(sqnorm)
                del grads
    else:
        with torch.enable_grad():
            leaves = {n: p.requires_grad_(True) for n, p in primals.items()}
            losses, outputs = losses_of(leaves)
            for i in range(batch):
                grads = torch.autograd.grad(losses[i], list(leaves.values()), retain_graph=True, allow_unused=True)
                per_row = {
                    n: (torch.zeros_like(p) if g is None else g).unsqueeze(0)
                    for (n, p), g in zip(leaves.items(), grads, strict=True)
                }
                dot, sqnorm = _reduce(per_row, v, need_norm)
                dots.append(dot)
                sqnorms.append(sqnorm)
    return Parts(
        torch.cat(dots) if dots else losses.new_zeros(0),
        (torch.cat(sqnorms) if sqnorms else losses.new_zeros(0)) if need_norm else None,
        losses.detach(),
        outputs,
    )
