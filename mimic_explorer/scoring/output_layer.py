"""Exact scores of a linear mimic layer whose output is one of the model's outputs, under any loss —
the batch-coupled InfoNCE of a dual encoder's projections included — from one forward of the model
and then the loss alone.

Why: for the layer z = h Wᵀ + b (a dual encoder's image or text projection, whose output is the
embedding the loss reads), sample i's gradient is g_i = (Σ_j D_i[j]ᵀ h_j, Σ_j D_i[j]) with
D_i = ∂ℓ_i/∂z the (B, …, C) row of the Jacobian of the loss vector with respect to the layer's
output. When the loss couples the batch each row is dense over j, so g_i is no outer product of pair
i's own h and δ (the classification head's closed form), but it is still cheap:

- ⟨g_i, v⟩ = Σ_j D_i[j]·(V h_j + v_b): the directional derivative of ℓ_i along the tangent
  T = H Vᵀ + v_b of z. A forward hook makes the layer's output a dual number with that tangent, so
  forward mode carries it through what follows the layer — for a dual encoder, the loss alone — and
  the model's one forward gives all B projections (``output_parts``).
- ‖g_i‖² from the loss's closed form when it offers one for a Linear's weight
  (``linear_output_sqnorm``: InfoNCE does, O(B²(C + D) + B³), see ``scoring.contrastive``); else
  ‖g_i‖² = ‖Hᵀ D_i‖² (+ ‖Σ_j D_i[j]‖² with a bias), in the Gram form Σ_{j,k} (h_j·h_k)(D_i[j]·D_i[k])
  (N²·C per row once K = H Hᵀ is made; N = B × positions) or the direct form that builds Hᵀ D_i
  (N·C·D per row), whichever is cheaper (``row_geometry``). D comes from pullbacks through the loss
  alone, the model's other outputs held fixed: ``vmap`` over one-hot rows, a chunk of rows at a time
  so memory holds chunk × N × C entries, never a tower's activations.

The Jacobian needs z itself among the model's outputs, unchanged, and read by no other output the
loss sees; the forward-mode tangent tells which outputs depend on z. Otherwise
``OutputLayerUnavailable`` (the scorer then takes its general Jacobian path). The training steps use
the same pieces on their own forward. See docs/ARCHITECTURE.md (how a score is computed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from mimic_explorer.scoring.losses import PerSampleLoss, loss_values
from mimic_explorer.scoring.parts import Parts
from mimic_explorer.scoring.trees import as_args, input_batch_size

# Jacobian entries plus scratch one chunk of rows may hold (about 64 MB in float32).
JACOBIAN_ELEMENTS = 1 << 24

PullBack = Callable[[Tensor], Tensor]  # cotangent of the (B,) loss vector → ∂(cᵀℓ)/∂z, shaped like z


class OutputLayerUnavailable(RuntimeError):
    """The layer's output is not one of the model's outputs as the Jacobian form needs (see the module)."""


def output_tangent(features: Tensor, v_weight: Tensor | None, v_bias: Tensor | None, out_features: int) -> Tensor:
    """T = H Vᵀ + v_b: the tangent of z = h Wᵀ + b when (W, b) move along (V, v_b); a ``None`` part is
    not among the mimic layers."""
    if v_weight is not None:
        tangent = features @ v_weight.T
        return tangent + v_bias if v_bias is not None else tangent
    tangent = features.new_zeros(*features.shape[:-1], out_features)
    return tangent + v_bias if v_bias is not None else tangent


def _uses_gram(positions: int, width: int) -> bool:
    """Gram costs N²·C per row (K = H Hᵀ made once), the direct form N·C·D: Gram when N ≤ D."""
    return positions <= width


def _row_chunk(batch: int, positions: int, out_features: int, width: int) -> int:
    """Jacobian rows per chunk so that rows × (N·C entries + the form's scratch) fits the budget."""
    scratch = positions * out_features if _uses_gram(positions, width) else out_features * width
    return max(1, min(batch, JACOBIAN_ELEMENTS // max(1, positions * out_features + scratch)))


def row_geometry(
    rows: Tensor,
    features: Tensor,
    gram: Tensor | None,
    tangent: Tensor | None,
    has_weight: bool,
    has_bias: bool,
) -> tuple[Tensor | None, Tensor]:
    """(⟨g_i, V⟩ when ``tangent`` is given, ‖g_i‖²) for a chunk of Jacobian rows.

    rows: (r, B, …, C) = D_i for r samples; features: H as (N, D); gram: K = H Hᵀ (N, N) when the Gram
    form is used, else None; tangent: T (B, …, C) or None.
    """
    flat = rows.reshape(rows.shape[0], -1, rows.shape[-1])  # (r, N, C)
    sqnorm = flat.new_zeros(flat.shape[0])
    if has_weight:
        if gram is not None:
            sqnorm = sqnorm + ((gram @ flat) * flat).sum((1, 2))
        else:
            sqnorm = sqnorm + (flat.transpose(1, 2) @ features).pow(2).sum((1, 2))
    if has_bias:
        sqnorm = sqnorm + flat.sum(1).pow(2).sum(1)
    dot = (flat * tangent.reshape(1, -1, tangent.shape[-1])).sum((1, 2)) if tangent is not None else None
    return dot, sqnorm


def linear_output_geometry(
    pull_back: PullBack,
    batch: int,
    features: Tensor,
    out_features: int,
    tangent: Tensor | None,
    has_weight: bool,
    has_bias: bool,
    chunk: int | None = None,
) -> tuple[Tensor | None, Tensor]:
    """(⟨g_i, V⟩ when ``tangent`` is given, ‖g_i‖²) for every sample, from the pullback of the loss
    vector to the layer's output (rows of D pulled back ``chunk`` at a time), the layer's input
    ``features`` (B, …, D) and its output width C."""
    h = features.reshape(-1, features.shape[-1])
    positions, width = h.shape
    eye = torch.eye(batch, dtype=h.dtype, device=h.device)
    gram = h @ h.T if has_weight and _uses_gram(positions, width) else None
    step = chunk or _row_chunk(batch, positions, out_features, width)
    dots, sqnorms = [], []
    for start in range(0, batch, step):
        rows = vmap(pull_back)(eye[start : start + step])
        dot, sqnorm = row_geometry(rows, h, gram, tangent, has_weight, has_bias)
        dots.append(dot)
        sqnorms.append(sqnorm)
        del rows
    return (torch.cat(dots) if tangent is not None else None), torch.cat(sqnorms)


def _output_position(leaves: list, layer_output: Tensor, version: int) -> int | None:
    """Where the layer's (dual) output sits among the model's output leaves, if it is there unchanged
    and no other output carries its tangent (depends on it)."""
    position = None
    for k, leaf in enumerate(leaves):
        if not isinstance(leaf, Tensor):
            continue
        if leaf is layer_output:
            position = k
        elif fwAD.unpack_dual(leaf).tangent is not None:
            return None  # another output depends on the layer's output
    if position is None or layer_output._version != version:
        return None
    return position


def output_parts(
    model: nn.Module,
    layer: nn.Linear,
    inputs: Any,
    targets: Any,
    v_weight: Tensor | None,
    v_bias: Tensor | None,
    need_norm: bool,
    loss: PerSampleLoss,
    state: dict[str, Tensor] | None = None,
    chunk: int | None = None,
) -> Parts:
    """⟨g_i, v⟩ (and ‖g_i‖² if ``need_norm``) over ``layer``'s weight and/or bias for every sample of the
    whole batch, with the losses and outputs of the model's one forward (see the module).

    ``state`` optionally replaces parameters and buffers (a float32 copy of a half-precision model).
    Raises ``OutputLayerUnavailable`` when the layer is not called, or (for ‖g_i‖²) when its output is
    not one of the model's outputs as the Jacobian form needs.
    """
    batch = input_batch_size(inputs)
    calls: list[tuple[Tensor, Tensor, int]] = []

    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        tangent = output_tangent(args[0].to(output.dtype), v_weight, v_bias, output.shape[-1])
        dual = fwAD.make_dual(output, tangent.to(output.dtype))
        calls.append((args[0], dual, dual._version))
        return dual

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad(), fwAD.dual_level():
            args = as_args(inputs)
            outputs = functional_call(model, state, args) if state else model(*args)
            handle.remove()
            if not calls:
                raise OutputLayerUnavailable("the mimic layer was not called in the model's forward pass")
            losses = loss_values(loss, outputs, targets, batch)
            primal, dot = fwAD.unpack_dual(losses)
            leaves, spec = tree_flatten(outputs)
            position = _output_position(leaves, calls[0][1], calls[0][2]) if len(calls) == 1 else None
            plain = [fwAD.unpack_dual(t).primal if isinstance(t, Tensor) else t for t in leaves]
    finally:
        handle.remove()
    primal = primal.detach()
    dot = torch.zeros_like(primal) if dot is None else dot  # the loss does not depend on the layer
    outputs = tree_unflatten([t.detach() if isinstance(t, Tensor) else t for t in plain], spec)
    if not need_norm:
        return Parts(dot, None, primal, outputs)
    if position is None:
        raise OutputLayerUnavailable(
            "the mimic layer's output is not one of the model's outputs (or is called more than once, "
            "changed in place, or read by another output)"
        )

    features = calls[0][0].detach().to(primal.dtype)
    closed = closed_form_sqnorm(
        loss, tree_unflatten(plain, spec), position, features, v_weight is not None and v_bias is None
    )
    if closed is not None:
        return Parts(dot, closed, primal, outputs)

    def losses_of(z: Tensor) -> Tensor:
        return loss_values(loss, tree_unflatten([*plain[:position], z, *plain[position + 1 :]], spec), targets, batch)

    with torch.no_grad():  # torch.func differentiates inside its transforms; record nothing else
        _, pull_back = vjp(losses_of, plain[position].detach())
        z = plain[position]
        _, sqnorm = linear_output_geometry(
            pull_back_of(pull_back), batch, features, z.shape[-1], None, v_weight is not None, v_bias is not None, chunk
        )
    return Parts(dot, sqnorm, primal, outputs)


def closed_form_sqnorm(
    loss: PerSampleLoss, outputs: Any, position: int, features: Tensor, weight_only: bool
) -> Tensor | None:
    """‖g_i‖² from the loss's own closed form for a Linear's weight (``linear_output_sqnorm``, e.g.
    InfoNCE on a dual encoder's projection), when it has one and the mimic layers are that weight
    alone; else None (the Jacobian rows serve)."""
    closed = getattr(loss, "linear_output_sqnorm", None)
    if closed is None or not weight_only:
        return None
    with torch.no_grad():
        return closed(outputs, position, features)


def pull_back_of(pull_back: Callable[[Tensor], tuple]) -> PullBack:
    """torch.func's pullback of a one-argument function (which returns a 1-tuple) as ``PullBack``."""
    return lambda cotangent: pull_back(cotangent)[0]
