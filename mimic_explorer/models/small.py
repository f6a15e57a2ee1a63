"""Built-in small models: quick to train on a CPU, used by the demo, tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten → hidden ReLU layers → linear head. ``head`` is the classifier the mimic layers use."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (128,)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The head's logits for a batch of images (flattened first)."""
        return self.head(self.backbone(x))


class SmallCNN(nn.Module):
    """Three conv blocks with BatchNorm, global pooling and a linear head (for 32×32 RGB images)."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.backbone = nn.Sequential(
            block(in_channels, width),
            block(width, 2 * width),
            block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The head's logits for a batch of images."""
        return self.head(self.backbone(x))
