"""A small MLP for tabular regression: returns one value per row, shape (N, 1) like the targets."""

from __future__ import annotations

import torch
from torch import nn


class DiabetesMLP(nn.Module):
    """in_features -> hidden -> hidden -> 1 with ReLU; pair it with criterion=mse.

    Args:
        in_features: columns of x.
        hidden: width of the hidden layers.
    """

    def __init__(self, in_features: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
