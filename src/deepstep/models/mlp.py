"""Multi-layer perceptrons (CURRICULUM rows 4-5): flatten, then Linear -> [BatchNorm] -> act -> [Dropout]."""

from __future__ import annotations

import math

from torch import nn

from ..registry import MODELS
from .layers import activation as act


class MLP(nn.Module):
    """Fully connected classifier/regressor on flattened inputs."""

    def __init__(self, in_features: int, hidden: list[int], out_features: int, activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(act(activation))
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x):  # (B, ...) -> (B, out)
        return self.net(x)


@MODELS.register("mlp")
def mlp(in_shape, num_classes, *, hidden: list[int] = (128, 64), activation: str = "relu",
        dropout: float = 0.0, batch_norm: bool = False) -> MLP:
    """MLP: hidden widths, activation by name, dropout, batch norm."""
    return MLP(math.prod(in_shape), list(hidden), num_classes, activation, dropout, batch_norm)


@MODELS.register("linear")
def linear(in_shape, num_classes) -> MLP:
    """Logistic/linear regression: one linear layer on flattened inputs."""
    return MLP(math.prod(in_shape), [], num_classes)
