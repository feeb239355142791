"""A small residual network for 28x28 (or 32x32) images (He et al. 2016, "Deep Residual Learning").
Block and parameter names follow torchvision's ResNet (conv1/bn1/conv2/bn2/downsample)."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import MODELS
from .layers import activation as act


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; a 1x1 projection when shape changes."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, activation: str = "relu"):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = act(activation)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):  # (B, C, H, W) -> (B, planes, H/stride, W/stride)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SmallResNet(nn.Module):
    """3x3 stem, stages of BasicBlocks (stride 2 from the second stage), global pool, linear head."""

    def __init__(self, in_channels: int, num_classes: int, widths: list[int], blocks: int, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = act(activation)
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            stage = [BasicBlock(c, w, 1 if i == 0 else 2, activation)]
            stage += [BasicBlock(w, w, 1, activation) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            c = w
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, widths[-1], H', W')
        return self.layers(self.relu(self.bn1(self.conv1(x))))

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avgpool(feats).flatten(1)  # (B, widths[-1])
        return x if pre_logits else self.fc(x)

    def target_layer(self) -> nn.Module:
        """The last BasicBlock of the last stage (torchvision's `layer4[-1]` for Grad-CAM)."""
        return self.layers[-1][-1]

    def forward(self, x):  # (B, C, H, W) -> (B, classes)
        return self.forward_head(self.forward_features(x))


@MODELS.register("resnet-small", tags=("classifier", "image", "conv"), checks={"widths": ">= 1", "blocks": ">= 1"})
def resnet_small(in_shape, num_classes, *, widths: list[int] = (32, 64, 128), blocks: int = 2,
                 activation: str = "relu") -> SmallResNet:
    """A small ResNet for 28x28 or 32x32 images, with torchvision's block and parameter names.

    A 3x3 stem, then `blocks` BasicBlocks per stage of the given `widths` (stride 2 from the second
    stage), global average pooling and a linear head."""
    return SmallResNet(in_shape[0], num_classes, list(widths), blocks, activation)
