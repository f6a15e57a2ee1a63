"""Closed-form mimic scores for a linear head: one forward pass, no backward through the backbone.

Why: for the head z = W h + b the per-sample gradient is Σ_t δ_t h_tᵀ (t over token/spatial positions
or repeated calls), so ⟨g_i, v⟩ and ‖g_i‖ need only the head's input h and output gradient δ
(``scoring.linear_head``). We hook the head: the backbone runs without autograd; the head's output is
replaced by a fresh leaf so that, when the logits are not the head's output itself (pooling or
reshaping after the head), δ comes from a backward through the few operations *after* the head only.
When the logits are the head's output, δ is the loss's closed form (``output_grad``; softmax − onehot
for cross-entropy) with no autograd at all. Only per-sample losses qualify (``scoring.losses``): for a
loss that couples the batch, g_i is not an outer product of sample i's own h and δ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mimic_explorer.scoring.linear_head import linear_grad_geometry
from mimic_explorer.scoring.losses import PerSampleLoss, loss_values
from mimic_explorer.scoring.parts import Parts
from mimic_explorer.scoring.trees import as_args, cast, detached, input_batch_size


class HeadPathUnavailable(RuntimeError):
    """The closed form cannot be used for this model (the head is unused or run without autograd)."""


def _position_form(t: Tensor) -> Tensor:
    """(B, ..., F) → (B, T, F)."""
    return t.reshape(t.shape[0], -1, t.shape[-1])


def head_parts(
    model: nn.Module,
    head: nn.Linear,
    inputs: Any,
    targets: Any,
    v_weight: Tensor | None,
    v_bias: Tensor | None,
    need_norm: bool,
    compute_dtype: torch.dtype,
    offset: int,
    loss: PerSampleLoss,
) -> Parts:
    """⟨g_i, v⟩ (and ‖g_i‖² if ``need_norm``) over the head's weight and/or bias for every sample,
    from one forward pass of ``model``; the losses and logits of that pass come along."""
    calls: list[tuple[Tensor, Tensor, Tensor, int]] = []

    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        leaf = output.detach().requires_grad_(True)
        torch.set_grad_enabled(True)  # record only what follows the head; the outer no_grad restores
        passed_on = leaf.clone()
        calls.append((args[0].detach(), leaf, passed_on, passed_on._version))
        return passed_on

    handle = head.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(*as_args(inputs))
            handle.remove()
            if not calls:
                raise HeadPathUnavailable("the head layer was not called in the model's forward pass")
            batch = input_batch_size(inputs)
            # the logits are the head's output itself (and were not modified in place afterwards)
            if len(calls) == 1 and logits is calls[0][2] and logits._version == calls[0][3]:
                logits = logits.detach()
                computed = logits.to(compute_dtype)
                losses = loss_values(loss, computed, targets, batch, offset)
                delta = loss.output_grad(computed, targets)
                if delta is None:
                    raise HeadPathUnavailable("the loss has no closed-form output gradient (output_grad)")
                deltas = [delta]
            else:
                losses = loss_values(loss, cast(logits, compute_dtype), targets, batch, offset)
                logits = detached(logits)
                if not losses.requires_grad:
                    raise HeadPathUnavailable("the operations after the head ran without autograd")
                leaves = [leaf for _, leaf, _, _ in calls]
                grads = torch.autograd.grad(losses.sum(), leaves, allow_unused=True)
                deltas = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves, strict=True)]
                losses = losses.detach()
    finally:
        handle.remove()
    if len(calls) == 1 and calls[0][0].dim() == 2:
        features = calls[0][0].to(compute_dtype)
        delta = deltas[0].to(compute_dtype)
    else:
        features = torch.cat([_position_form(h) for h, _, _, _ in calls], dim=1).to(compute_dtype)
        delta = torch.cat([_position_form(d) for d in deltas], dim=1).to(compute_dtype)
    dot, sqnorm = linear_grad_geometry(features, delta, v_weight, v_bias, need_norm)
    return Parts(dot, sqnorm, losses, logits)
