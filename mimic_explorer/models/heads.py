"""Find the classifier head: the ``nn.Linear`` whose output is the model's logits.

Why: the default mimic layers are the final classifier. The last ``nn.Linear`` in ``modules()`` is not
always it (heads defined before the backbone, auxiliary heads), so we trace one forward pass and pick
the Linear whose output tensor *is* the returned logits; the last Linear is only the fallback.
"""

from __future__ import annotations

import torch
from torch import nn


def find_head(model: nn.Module, example_input: torch.Tensor | None = None) -> tuple[str, nn.Linear]:
    """Return (qualified name, module) of the linear layer producing the logits."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to use as the head")
    if example_input is None:
        return linears[-1]
    outputs: dict[int, tuple[str, nn.Linear]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: outputs.__setitem__(id(out), (name, mod)))
        for name, m in linears
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            logits = model(example_input[:1])
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return outputs.get(id(logits), linears[-1])
