"""Find the classifier head: the ``nn.Linear`` whose output is the model's logits.

What the head is, is a property of the model, so it lives here; it is found once, when a run builds
its models (``tasks.classifier_models``), and the name is passed down to training, feature extraction and
scoring. This module imports torch only and nothing from the package, so ``scoring`` (the lowest
layer) may import it: it is the one leaf of ``models`` below scoring (see docs/ARCHITECTURE.md).

Why tracing: the default mimic layers are the final classifier. The last ``nn.Linear`` in ``modules()`` is not
always it (heads defined before the backbone, auxiliary heads, attention projections registered after
the head), so with an example input we trace one forward pass and pick the Linear whose output tensor
*is* the returned logits. When no Linear returns the logits unchanged (the model reshapes or pools
after its head), the last Linear *called* with as many outputs as there are logits is the head; the
last Linear in ``modules()`` is only the fallback when nothing can be traced (and what ``find_head``
returns without an example input, for code that has no input at hand, such as checkpoint loading).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to use as the head")
    return linears


def trace_head(model: nn.Module, run_forward) -> tuple[tuple[str, nn.Linear], torch.Tensor]:
    """Run ``run_forward()`` (which calls ``model``) with every Linear hooked; return the head and
    the logits it produced.

    Outputs are held by weak reference, so tracing keeps no activations alive and an id reused by a
    freed tensor can never be mistaken for the logits.
    """
    linears = _linears(model)
    calls: list[tuple[str, nn.Linear, weakref.ref]] = []

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(output, torch.Tensor):
                calls.append((name, module, weakref.ref(output)))

        return hook

    hooks = [m.register_forward_hook(make_hook(name)) for name, m in linears]
    try:
        logits = run_forward()
    finally:
        for hook in hooks:
            hook.remove()
    for name, module, ref in reversed(calls):
        if ref() is logits:
            return (name, module), logits
    n_out = logits.shape[-1] if isinstance(logits, torch.Tensor) and logits.dim() > 0 else None
    for name, module, _ in reversed(calls):
        if module.out_features == n_out:
            return (name, module), logits
    if calls:
        return (calls[-1][0], calls[-1][1]), logits
    return linears[-1], logits


def find_head(model: nn.Module, example_input: torch.Tensor | None = None) -> tuple[str, nn.Linear]:
    """Return (qualified name, module) of the linear layer producing the logits.

    With ``example_input`` the head is traced on one sample in eval mode (the model's modes are
    restored); without it, the last ``nn.Linear`` in ``modules()``.
    """
    if example_input is None:
        return _linears(model)[-1]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            head, _ = trace_head(model, lambda: model(example_input[:1]))
    finally:
        for m, mode in modes:
            m.training = mode
    return head
