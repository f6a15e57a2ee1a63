"""The model a linear probe trains: the classifier head alone, fed cached backbone features."""

from __future__ import annotations

import torch
from torch import nn


class LinearProbe(nn.Module):
    """The head alone, under the same name (``head``) so ``find_head`` and references line up.

    Why a class of its own: the training loop recognises it and takes its no-autograd path (the
    head's gradient is closed form), which is what makes an E-epoch probe cost about one backbone pass.
    """

    HEAD = "head"  # the head's qualified name in every LinearProbe

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The head's logits for cached backbone features."""
        return self.head(features)
