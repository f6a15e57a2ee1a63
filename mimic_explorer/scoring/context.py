"""The numerical setting every scoring path runs under, and the promise to leave the model as found.

Why: a mimic score is a property of the model's *function* at fixed weights, so it must not depend on
the batch it arrives in (BatchNorm uses running statistics, dropout is off), must be computable by
forward-mode AD (fused attention kernels and the MultiheadAttention fast path have no forward-mode
rule, the math SDPA backend does), and is computed in full precision even when the caller is under
autocast. The caller's model comes back with every submodule in the mode it had.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode; restore each submodule's own ``training`` flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, mode in modes:
            module.training = mode


@contextlib.contextmanager
def _mha_fastpath_disabled() -> Iterator[None]:
    """Route nn.MultiheadAttention through its composite (differentiable in both modes) code path."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    previous = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(previous)


def _has_mha(model: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) for m in model.modules())


@contextlib.contextmanager
def scoring_mode(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode, math attention, no MHA fast path, autocast off (on CPU and the model's device), and
    autograd available even when the caller is under ``torch.inference_mode()``."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(preserved_modes(model))
        if _has_mha(model):
            stack.enter_context(_mha_fastpath_disabled())
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        for device_type in {"cpu", device.type}:
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield
