"""A small residual network for 28x28 (or 32x32) images (He et al. 2016, "Deep Residual Learning").
Block and parameter names follow torchvision's ResNet (conv1/bn1/conv2/bn2/downsample)."""

from __future__ import annotations

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

    def forward(self, x):  # (B, C, H, W) -> (B, classes)
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@MODELS.register("resnet-small")
def resnet_small(in_shape, num_classes, *, widths: list[int] = (32, 64, 128), blocks: int = 2,
                 activation: str = "relu") -> SmallResNet:
    """Small ResNet for 28x28 images: `blocks` BasicBlocks per stage of the given widths."""
    return SmallResNet(in_shape[0], num_classes, list(widths), blocks, activation)
