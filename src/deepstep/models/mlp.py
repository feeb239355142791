"""Multi-layer perceptrons (CURRICULUM rows 4-5): flatten, then Linear -> [BatchNorm] -> act -> [Dropout]."""

from __future__ import annotations

import math
from itertools import islice

import torch
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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, last hidden width)
        for layer in islice(self.net, len(self.net) - 1):  # every layer but the last Linear
            x = layer(x)
        return x

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return feats if pre_logits else self.net[-1](feats)

    def target_layer(self) -> None:
        """None: flat features have no spatial or temporal axis for a class-activation map."""
        return None

    def forward(self, x):  # (B, ...) -> (B, out)
        return self.forward_head(self.forward_features(x))


_TAGS = ("classifier", "table", "image", "series")


@MODELS.register("mlp", tags=_TAGS, checks={"hidden": ">= 1", "dropout": "[0, 1)"})
def mlp(in_shape, num_classes, *, hidden: list[int] = (128, 64), activation: str = "relu",
        dropout: float = 0.0, batch_norm: bool = False) -> MLP:
    """A multi-layer perceptron on flattened inputs, for tables, small images and short series.

    Options: `hidden` widths, `activation` by name, `dropout`, `batch_norm`."""
    return MLP(math.prod(in_shape), list(hidden), num_classes, activation, dropout, batch_norm)


@MODELS.register("linear", tags=_TAGS)
def linear(in_shape, num_classes) -> MLP:
    """Logistic or linear regression: one linear layer on flattened inputs."""
    return MLP(math.prod(in_shape), [], num_classes)
