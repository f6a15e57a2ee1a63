"""Closed-form mimic scores for a linear head: one forward pass, no backward through the backbone.

Why: for the head z = W h + b the per-sample gradient is Σ_t δ_t h_tᵀ (t over token/spatial positions
or repeated calls), so ⟨g_i, v⟩ and ‖g_i‖ need only the head's input h and output gradient δ
(``scoring.linear_head``). We hook the head: the backbone runs without autograd; the head's output is
replaced by a fresh leaf so that, when the logits are not the head's output itself (pooling or
reshaping after the head), δ comes from a backward through the few operations *after* the head only.
When the logits are the head's output, δ = softmax − onehot with no autograd at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimic_explorer.scoring.checks import check_logits, check_target_range
from mimic_explorer.scoring.linear_head import (
    cross_entropy_output_grad,
    linear_grad_dot,
    linear_grad_sqnorm,
)
from mimic_explorer.scoring.parts import Parts


class HeadPathUnavailable(RuntimeError):
    """The closed form cannot be used for this model (the head is unused or run without autograd)."""


def _position_form(t: Tensor) -> Tensor:
    """(B, ..., F) → (B, T, F)."""
    return t.reshape(t.shape[0], -1, t.shape[-1])


def head_parts(
    model: nn.Module,
    head: nn.Linear,
    inputs: Tensor,
    targets: Tensor,
    v_weight: Tensor | None,
    v_bias: Tensor | None,
    need_norm: bool,
    compute_dtype: torch.dtype,
    offset: int = 0,
) -> Parts:
    """⟨g_i, v⟩ (and ‖g_i‖² if ``need_norm``) over the head's weight and/or bias for every sample."""
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
            logits = model(inputs)
            handle.remove()
            if not calls:
                raise HeadPathUnavailable("the head layer was not called in the model's forward pass")
            logits = check_logits(logits, targets.shape[0])
            check_target_range(targets, logits.shape[-1], offset)
            # the logits are the head's output itself (and were not modified in place afterwards)
            if len(calls) == 1 and logits is calls[0][2] and logits._version == calls[0][3]:
                logits = logits.detach().to(compute_dtype)
                losses = F.cross_entropy(logits, targets, reduction="none")
                deltas = [cross_entropy_output_grad(logits, targets)]
            else:
                losses = F.cross_entropy(logits.to(compute_dtype), targets, reduction="none")
                if not losses.requires_grad:
                    raise HeadPathUnavailable("the operations after the head ran without autograd")
                leaves = [leaf for _, leaf, _, _ in calls]
                grads = torch.autograd.grad(losses.sum(), leaves, allow_unused=True)
                deltas = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves)]
                losses = losses.detach()
    finally:
        handle.remove()
    if len(calls) == 1 and calls[0][0].dim() == 2:
        features = calls[0][0].to(compute_dtype)
        delta = deltas[0].to(compute_dtype)
    else:
        features = torch.cat([_position_form(h) for h, _, _, _ in calls], dim=1).to(compute_dtype)
        delta = torch.cat([_position_form(d) for d in deltas], dim=1).to(compute_dtype)
    dot = linear_grad_dot(features, delta, v_weight, v_bias)
    sqnorm = None
    if need_norm:
        sqnorm = linear_grad_sqnorm(features, delta, has_bias=v_bias is not None, has_weight=v_weight is not None)
    return Parts(dot, sqnorm, losses)
