"""A small CNN for 28x28 digit images that returns logits (train it with criterion=cross_entropy)."""

from __future__ import annotations

import torch
from torch import nn


class DigitNet(nn.Module):
    """conv 16 -> pool -> conv 32 -> pool -> fc 64 -> fc num_classes; raw scores (logits), no softmax.

    Args:
        channels: image channels (1 for grayscale PNGs).
        num_classes: number of class folders.
        side: image side in pixels (after any data.size resize).
    """

    def __init__(self, channels: int = 1, num_classes: int = 10, side: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * (side // 4) ** 2, 64), nn.ReLU(),
                                  nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
