"""Per-sample gradients by chunked ``vmap(grad)``: the general fallback and the verification oracle.

Why: it needs no structure (any op with a backward rule works) and gives both ⟨g_i, v⟩ and ‖g_i‖²
exactly, but it materialises chunk×P gradient entries, so the batch is walked in chunks sized to a
memory budget. Used for cos norms of parameters ghost norms cannot cover, when forced with
``path="vmap"``, and when an op lacks a forward-mode rule. Per-sample losses only (each sample is its
own batch of one here); a loss that couples the batch takes ``scoring.jacobian_path``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap
from torch.utils._pytree import tree_map

from mimic_explorer.scoring.checks import check_logits, check_target_range
from mimic_explorer.scoring.losses import CrossEntropyLoss, PerSampleLoss, loss_values
from mimic_explorer.scoring.parts import Parts
from mimic_explorer.scoring.trees import as_args, as_batch_of_one, batch_dims, cat_rows, input_batch_size, rows

# Per-sample gradient entries one chunk may hold (about 256 MB in float32).
GRADIENT_ELEMENTS = 1 << 26


def auto_chunk(num_params: int, batch: int) -> int:
    """Largest chunk whose per-sample gradients fit the budget (at least 1, at most 64)."""
    return max(1, min(batch, 64, GRADIENT_ELEMENTS // max(num_params, 1)))


def check_targets_with_probe(
    model: nn.Module, inputs: Any, targets: Tensor, state: dict[str, Tensor] | None, offset: int = 0
) -> None:
    """Find C with a one-sample forward and check every target against it (vmap cannot branch on data)."""
    batch = input_batch_size(inputs)
    if batch == 0:
        return
    first = as_args(rows(inputs, 0, 1, batch))
    with torch.no_grad():
        logits = functional_call(model, state, first) if state else model(*first)
    check_logits(logits, 1)
    check_target_range(targets, logits.shape[-1], offset)


def vmap_parts(
    model: nn.Module,
    v: dict[str, Tensor],
    inputs: Any,
    targets: Any,
    need_dot: bool,
    need_norm: bool,
    chunk_size: int | None = None,
    state: dict[str, Tensor] | None = None,
    loss: PerSampleLoss | None = None,
) -> Parts:
    """⟨g_i, v⟩ and/or ‖g_i‖² over the parameters named in ``v``, chunk by chunk, with each sample's
    loss and outputs. ``loss``: a per-sample loss (default cross-entropy)."""
    state = dict(state or {})
    params = dict(model.named_parameters())
    primals = {n: state.get(n, params[n]).detach() for n in v}
    rest = {n: t for n, t in state.items() if n not in primals}
    num_params = sum(t.numel() for t in primals.values())
    batch = input_batch_size(inputs)
    chunk = chunk_size or auto_chunk(num_params, batch)
    loss = loss or CrossEntropyLoss()
    y_dims = batch_dims(targets, batch)

    def loss_one(ps: dict[str, Tensor], x: Any, y: Any) -> tuple[Tensor, Any]:
        y = as_batch_of_one(y, y_dims)
        outputs = functional_call(model, {**rest, **ps}, as_args(tree_map(lambda t: t.unsqueeze(0), x)))
        value = loss_values(loss, outputs, y, 1, check=False)[0]
        return value, tree_map(lambda t: t[0] if isinstance(t, Tensor) else t, outputs)

    per_sample = vmap(grad_and_value(loss_one, has_aux=True), in_dims=(None, 0, y_dims))
    dots, sqnorms, losses, outputs = [], [], [], []
    # torch.func.grad differentiates inside its own transform even under no_grad; the outer no_grad
    # stops autograd from also recording a graph to the model's own trainable parameters (which
    # would keep every chunk's activations alive)
    with torch.no_grad():
        for start in range(0, batch, chunk):
            grads, (value, out) = per_sample(
                primals, rows(inputs, start, start + chunk, batch), rows(targets, start, start + chunk, batch)
            )
            losses.append(value.detach())
            outputs.append(out)
            if need_dot:
                dots.append(sum((grads[n].flatten(1) @ v[n].reshape(-1).to(grads[n].dtype)) for n in v))
            if need_norm:
                sqnorms.append(sum(grads[n].flatten(1).pow(2).sum(1) for n in v))
            del grads
    return Parts(
        torch.cat(dots) if need_dot else None,
        torch.cat(sqnorms) if need_norm else None,
        torch.cat(losses),
        cat_rows(outputs),
    )
