"""Convolutional networks for images (N, C, H, W) and series (N, C, T): a configurable conv stack,
and the two CNNs of the introductory guides (CURRICULUM rows 6 and 7) with correct shapes."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserError
from ..registry import MODELS
from .layers import activation as act


def _ops(in_shape):
    if len(in_shape) == 3:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d
    if len(in_shape) == 2:
        return nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d
    raise UserError(f"Conv nets need image (C, H, W) or series (C, T) inputs, got shape {tuple(in_shape)}.")


def _image_only(in_shape, model: str) -> None:
    if len(in_shape) != 3:
        raise UserError(f"Model '{model}' reads images (C, H, W), but the data has shape {tuple(in_shape)}. "
                        "Use 'convnet' (1-D for series) or 'mlp' instead.")


def flat_size(features: nn.Module, in_shape) -> int:
    """Number of features after `features` for one input of `in_shape` (computed, never guessed)."""
    with torch.no_grad():
        return math.prod(features(torch.zeros(1, *in_shape)).shape[1:])


_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)


class ConvNet(nn.Module):
    """Conv blocks -> flatten (or global average pool) -> MLP head."""

    def __init__(self, features: nn.Sequential, head: nn.Sequential):
        super().__init__()
        self.features, self.head = features, head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The conv stack's output map (B, C, H', W') or (B, C, T'), (.., 1, 1) with global pooling;
        the head flattens it."""
        return self.features(x)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head[:-1](feats) if pre_logits else self.head(feats)  # (B, hidden) or (B, classes)

    def target_layer(self) -> nn.Module:
        """The end of the last conv block (conv -> [BN] -> activation), before any pooling."""
        layers = list(self.features)
        i = max(k for k, m in enumerate(layers) if isinstance(m, (nn.Conv1d, nn.Conv2d)))
        while i + 1 < len(layers) and not isinstance(layers[i + 1], _POOLS):
            i += 1
        return layers[i]

    def forward(self, x):  # (B, C, H, W) or (B, C, T) -> (B, classes)
        return self.forward_head(self.forward_features(x))


def _head(in_features: int, hidden, num_classes, activation, dropout) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    for h in hidden:
        layers += [nn.Linear(in_features, h), act(activation)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_features = h
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("convnet", tags=("classifier", "image", "series", "conv"),
                 checks={"channels": ">= 1", "kernel_size": ">= 1", "stride": ">= 1", "pool_every": ">= 0",
                         "hidden": ">= 1", "dropout": "[0, 1)"})
def convnet(in_shape, num_classes, *, channels: list[int] = (32, 64), kernel_size: int = 3, stride: int = 1,
            pool_every: int = 1, batch_norm: bool = True, activation: str = "relu", hidden: list[int] = (128,),
            dropout: float = 0.0, global_pool: bool = False) -> ConvNet:
    """A configurable conv net with an MLP head, 2-D for images and 1-D for series.

    One block per `channels` width: conv -> [BN] -> act, a max-pool every `pool_every` blocks
    (0: never); then flatten (or global average pool, `global_pool`), then the `hidden` widths."""
    conv, bn, pool, gap = _ops(in_shape)
    layers: list[nn.Module] = []
    c = in_shape[0]
    for i, width in enumerate(channels):
        layers.append(conv(c, width, kernel_size, stride=stride, padding=kernel_size // 2, bias=not batch_norm))
        if batch_norm:
            layers.append(bn(width))
        layers.append(act(activation))
        if pool_every and (i + 1) % pool_every == 0 and min(_spatial(layers, in_shape)) >= 2:
            layers.append(pool(2))
        c = width
    if global_pool:
        layers.append(gap(1))
    features = nn.Sequential(*layers)
    return ConvNet(features, _head(flat_size(features, in_shape), hidden, num_classes, activation, dropout))


def _spatial(layers, in_shape):
    with torch.no_grad():
        return nn.Sequential(*layers)(torch.zeros(1, *in_shape)).shape[2:]


@MODELS.register("cnn-guide", tags=("classifier", "image", "conv"), checks={"flat_features": ">= 0"})
def cnn_guide(in_shape, num_classes, *, flat_features: int = 0) -> ConvNet:
    """The introductory guide's first CNN (row 6): one conv, a max-pool and a linear layer.

    conv 1->32 3x3 -> ReLU -> max-pool 2 -> linear -> classes. For 28x28 input the linear layer
    reads 32*13*13 = 5408 features (the guide's 32*6*6 is wrong). `flat_features` = 0 computes it;
    set 1152 to see the guide's mistake caught before training."""
    _image_only(in_shape, "cnn-guide")
    features = nn.Sequential(nn.Conv2d(in_shape[0], 32, 3), nn.ReLU(), nn.MaxPool2d(2))
    n = flat_features or flat_size(features, in_shape)
    return ConvNet(features, nn.Sequential(nn.Flatten(), nn.Linear(n, num_classes)))


@MODELS.register("cnn-fashion", tags=("classifier", "image", "conv"),
                 checks={"dropout": "[0, 1)", "hidden": ">= 1", "flat_features": ">= 0"})
def cnn_fashion(in_shape, num_classes, *, dropout: float = 0.25, hidden: int = 128, flat_features: int = 0,
                flatten: str = "nchw") -> ConvNet:
    """The introductory guide's bigger CNN (row 7), with dropout as in PyTorch's MNIST example.

    conv 1->32 3x3 -> ReLU -> conv 32->64 3x3 -> ReLU -> max-pool 2 -> fc 9216->128 -> fc 10
    (9216 = 64*12*12 for 28x28 input). `flatten` as in speedcnn: "nhwc" reads the map pixel by
    pixel, the same network up to the order of fc 9216's inputs, and no copy of a channels-last map."""
    _image_only(in_shape, "cnn-fashion")
    flat = _flatten(flatten)
    features = nn.Sequential(nn.Conv2d(in_shape[0], 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
                             nn.MaxPool2d(2))
    n = flat_features or flat_size(features, in_shape)
    head = nn.Sequential(nn.Dropout(dropout), flat, nn.Linear(n, hidden), nn.ReLU(), nn.Dropout(2 * dropout),
                         nn.Linear(hidden, num_classes))
    return ConvNet(features, head)


@MODELS.register("speedcnn", tags=("classifier", "image", "conv"))
def speedcnn(in_shape, num_classes, *, widths: list[int] = (32, 64, 128), hidden: int = 128,
             dropout: float = 0.3, pool_last: bool = False, activation: str = "gelu", stem: str = "pool",
             flatten: str = "nchw") -> ConvNet:
    """A batch-norm CNN sized for time-to-accuracy on a CPU (recipe fashion-speedrun).

    Every block is conv 3x3 -> max-pool 2 -> BN -> act (pooling before BN and the activation
    costs a quarter of the work, as in airbench); the first block reads the image at full size, the
    last one keeps its resolution unless `pool_last`; then flatten -> linear `hidden` (no bias) ->
    BN -> act -> dropout -> linear. 28x28 input, widths 32-64-128: 7x7x128 features, 8.2M
    multiply-adds per image.

    `stem` is how the first block halves the image: "pool" (conv 3x3, then max-pool), "stride"
    (a 3x3 conv with stride 2: no full-size feature map) or "patch" (a 2x2 conv with stride 2 on
    non-overlapping patches).

    `flatten` is the order in which the head reads the last map: "nchw" (channel by channel, as
    nn.Flatten) or "nhwc" (pixel by pixel). The two are the same network up to a permutation of
    the first linear layer's inputs; "nhwc" is a free view of a channels-last map, where "nchw"
    copies it and makes the last activation's backward mix memory layouts (speedcnn ran 9-10 %
    more bf16 + channels_last steps per second with "nhwc" on this project's CPU, docs/speed.md)."""
    _image_only(in_shape, "speedcnn")
    if stem not in ("pool", "stride", "patch"):
        raise UserError(f"model.stem = '{stem}' is not one of 'pool', 'stride', 'patch'.")
    flat = _flatten(flatten)
    if not widths or any(w < 1 for w in widths) or hidden < 1:
        raise UserError(f"model.widths = {list(widths)} and model.hidden = {hidden} must be positive.")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"model.dropout = {dropout} must be in [0, 1).")
    layers: list[nn.Module] = []
    c = in_shape[0]
    for i, w in enumerate(widths):
        last = i == len(widths) - 1
        # the size this block reads (a padded 3x3 conv keeps it), halved unless it is too small
        halve = (not last or pool_last) and min(_spatial(layers, in_shape) if layers else in_shape[1:]) >= 2
        if i == 0 and halve and stem == "stride":
            layers.append(nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False))
        elif i == 0 and halve and stem == "patch":
            layers.append(nn.Conv2d(c, w, 2, stride=2, bias=False))
        else:
            layers.append(nn.Conv2d(c, w, 3, padding=1, bias=False))
            if halve:
                layers.append(nn.MaxPool2d(2))
        layers += [nn.BatchNorm2d(w), act(activation)]
        c = w
    features = nn.Sequential(*layers)
    head = nn.Sequential(flat, nn.Linear(flat_size(features, in_shape), hidden, bias=False),
                         nn.BatchNorm1d(hidden), act(activation), nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    return ConvNet(features, head)


def _flatten(order: str) -> nn.Module:
    if order not in ("nchw", "nhwc"):
        raise UserError(f"model.flatten = '{order}' is not one of 'nchw', 'nhwc'.")
    return nn.Flatten() if order == "nchw" else FlattenNHWC()


class FlattenNHWC(nn.Module):
    """(B, C, H, W) -> (B, H*W*C), pixel by pixel: a view, without a copy, of a channels-last map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)
