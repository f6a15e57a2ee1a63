"""Input checks and the per-sample loss, with errors that name the cause.

Why: a mimic score that is silently wrong is worse than none. Wrong-length targets, out-of-range
labels, one-hot targets or a NaN loss all produce *numbers* in plain PyTorch (or an opaque C++ error);
here each becomes a ValueError saying what is wrong and where.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mimic_explorer.scoring.trees import input_batch_size

MAX_LISTED = 10


def _positions_text(mask: Tensor, offset: int = 0) -> str:
    """'3, 17, 40' (at most MAX_LISTED positions, then a count) for the True entries of ``mask``."""
    where = (torch.nonzero(mask.reshape(-1)).reshape(-1) + offset).tolist()
    text = ", ".join(str(i) for i in where[:MAX_LISTED])
    if len(where) > MAX_LISTED:
        text += f", … ({len(where)} in all)"
    return text


def check_batch(inputs: Any, targets: Tensor) -> int:
    """Validate the batch's types and shapes (inputs: a tensor, or a tuple of batched tensors passed
    as the model's arguments); return its size B."""
    if not isinstance(inputs, (Tensor, tuple, list)):
        raise TypeError(f"inputs must be a torch.Tensor or a tuple of batched tensors, got {type(inputs).__name__}")
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor of class indices, got {type(targets).__name__}")
    batch = input_batch_size(inputs)
    if targets.dim() != 1:
        raise ValueError(
            f"targets must be a 1-D tensor of class indices, shape (B,); got shape {tuple(targets.shape)}"
            + (" (one-hot or soft targets are not supported)" if targets.dim() == 2 else "")
        )
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must hold integer class indices, got dtype {targets.dtype}")
    if batch != targets.shape[0]:
        raise ValueError(f"inputs and targets have different lengths: {batch} inputs, {targets.shape[0]} targets")
    return int(targets.shape[0])


def check_target_range(targets: Tensor, num_classes: int, offset: int = 0) -> None:
    """Every target must be a class index in [0, num_classes)."""
    bad = (targets < 0) | (targets >= num_classes)
    if bool(bad.any()):
        values = sorted(set(targets[bad].tolist()))[:MAX_LISTED]
        raise ValueError(
            f"targets out of range for {num_classes} classes (valid: 0..{num_classes - 1}): "
            f"values {values} at positions {_positions_text(bad, offset)}"
        )


def check_logits(logits: object, batch: int) -> Tensor:
    """The model must return (B, C) logits."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"the model must return a logits tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[0] != batch:
        raise ValueError(f"the model must return logits of shape (B, C) = ({batch}, C), got {tuple(logits.shape)}")
    return logits


def per_sample_losses(logits: Tensor, targets: Tensor, offset: int = 0, check: bool = True) -> Tensor:
    """Unreduced cross-entropy ℓ_i with the given labels. ``check=False`` inside vmap (no data-dependent
    control flow there; the caller has checked the range already)."""
    if check:
        check_logits(logits, targets.shape[0])
        check_target_range(targets, logits.shape[-1], offset)
    return F.cross_entropy(logits, targets, reduction="none")


def check_finite(values: Tensor, what: str, offset: int = 0) -> None:
    """Raise naming the sample positions where ``values`` is NaN or infinite."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        raise ValueError(f"non-finite {what} at sample positions {_positions_text(bad, offset)}")
