"""ResNet-18, -34 and -50 (He et al. 2016, "Deep Residual Learning for Image Recognition") with
exactly torchvision's parameter and buffer names and shapes, so a state dict saved from
`torchvision.models.resnet50()` loads here without renaming (`pretrained=PATH`).

Layout (torchvision, "v1.5": the Bottleneck's stride sits on its 3x3 conv):
    conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2 -> layer1..layer4 -> avgpool -> fc
    widths 64-128-256-512 (x4 for Bottleneck), stride 2 at the start of layer2..layer4.

Adapting a backbone (transfer learning), all done by the factory options:
- `pretrained`: a .pth/.pt (read with `torch.load(weights_only=True)`), a .safetensors file, or a
  deepstep run directory (its model.safetensors). A head for another class count is dropped and a
  fresh `fc` is kept; RGB weights on a one-channel input have conv1's filters summed over RGB
  (a gray image x gives the same features as the RGB image (x, x, x)).
- `freeze`: everything up to and including the named part stops training —
  "none" | "stem" (conv1/bn1) | "layer1" | "layer2" | "layer3" | "layer4" (== "backbone": only the
  head trains). "Unfreeze the last N stages" is `freeze="layer{4-N}"`. Frozen parts get
  `requires_grad=False` and their batch norms stay in eval mode, so their running statistics do
  not drift either: a frozen part is bit-identical after training.
- `new_head`: start with a fresh `fc` even when the pretrained head has the right class count
  (another task with as many classes, e.g. Fashion-MNIST -> digits).
- `pretrained_upto`: take the pretrained weights only up to and including the named part
  ("stem" | "layer1" .. "layer4" | "all", the default); every later part keeps its fresh
  initialization. Early stages learn general features (edges, strokes) and late stages features
  specific to the source task (Yosinski et al. 2014, "How transferable are features in deep neural
  networks?"); when the source and target differ, transferring only the general stages and
  training the rest anew can beat both full transfer and training from scratch.
- `resize`: images are resized (bilinear) to `resize` x `resize` inside the model before conv1,
  e.g. 28x28 digits to the 224x224 an ImageNet backbone was trained on (0: keep the input size).
  It adds no parameters, so the weight names stay torchvision's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..engine.checkpoint import load_state, load_weights
from ..errors import UserError
from ..registry import MODELS
from .cnn import _image_only
from .layers import activation as act
from .resnet_small import BasicBlock

STAGES = ("layer1", "layer2", "layer3", "layer4")
FREEZE = ("none", "stem", *STAGES, "backbone")
UPTO = ("stem", *STAGES, "all")
_TAGS = ("classifier", "image", "conv", "staged", "pretrained")


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4), with a residual connection."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, activation: str = "relu"):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = act(activation)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):  # (B, C, H, W) -> (B, 4*planes, H/stride, W/stride)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ImageNet ResNet: 7x7 stem, four stages of residual blocks, pooled linear head."""

    def __init__(self, block, layers: list[int], in_channels: int = 3, num_classes: int = 1000, resize: int = 0):
        super().__init__()
        self.resize = resize
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = 64
        for i, (name, n) in enumerate(zip(STAGES, layers)):
            planes = 64 * 2**i
            blocks = [block(c, planes, 1 if i == 0 else 2)]
            c = planes * block.expansion
            blocks += [block(c, planes) for _ in range(n - 1)]
            setattr(self, name, nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self.frozen: list[str] = []  # top-level children that do not train (see `freeze`)
        for m in self.modules():  # torchvision's initialization
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 512 * expansion, H', W')
        if self.resize and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avgpool(feats).flatten(1)  # (B, 512 * expansion)
        return x if pre_logits else self.fc(x)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 512 * expansion)
        """The pooled embedding that `fc` reads: forward_head(forward_features(x), pre_logits=True)."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def target_layer(self) -> nn.Module:
        """The last residual block, `layer4[-1]` (the usual Grad-CAM layer of torchvision's ResNets)."""
        return self.layer4[-1]

    def forward(self, x):  # (B, C, H, W) -> (B, classes)
        return self.forward_head(self.forward_features(x))

    def param_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        """Stages from the input to the head, for discriminative learning rates
        (optim.stage_lr_decay): stem (conv1, bn1), layer1 .. layer4, head (fc)."""
        stem = [*self.conv1.parameters(), *self.bn1.parameters()]
        return [("stem", stem), *[(n, list(getattr(self, n).parameters())) for n in STAGES],
                ("head", list(self.fc.parameters()))]

    def feature_head(self):
        """(embedding, head): the pooled-embedding function and the module that maps it to outputs,
        for training the head alone on cached features (train.cache_features)."""
        return self.embedding, self.fc

    def freeze(self, upto: str) -> None:
        """Stop training everything up to and including `upto` (see the module docstring)."""
        if upto not in FREEZE:
            raise UserError(f"model.freeze='{upto}' is not valid; expected one of {', '.join(FREEZE)} "
                            "(everything up to and including that part stops training).")
        upto = "layer4" if upto == "backbone" else upto
        order = ["conv1", "bn1", *STAGES]
        self.frozen = [] if upto == "none" else order[:2 if upto == "stem" else order.index(upto) + 1]
        for name, child in self.named_children():
            for p in child.parameters():
                p.requires_grad_(name not in self.frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen:  # frozen batch norms keep their running statistics
            getattr(self, name).eval()
        return self


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors from a .pth/.pt (weights only), a .safetensors file or a deepstep run directory."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise UserError(f"model.pretrained: no weights file at '{p}' (expected a .pth, .pt or .safetensors "
                        "file, or a deepstep run directory).")
    if p.suffix == ".safetensors":
        tensors = load_weights(p)
    else:
        try:
            tensors = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for corrupt or unsafe files
            raise UserError(f"model.pretrained: '{p}' cannot be read as weights "
                            f"({type(e).__name__}: {str(e).splitlines()[0]}).") from None
        if isinstance(tensors, dict) and isinstance(tensors.get("state_dict"), dict):
            tensors = tensors["state_dict"]
    if not isinstance(tensors, dict) or not all(torch.is_tensor(v) for v in tensors.values()):
        raise UserError(f"model.pretrained: '{p}' does not hold a state dict (name -> tensor).")
    if tensors and all(k.startswith("model.") for k in tensors):  # a deepstep run's weights
        tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
    return tensors


def _check_upto(upto: str) -> None:
    if upto not in UPTO:
        raise UserError(f"model.pretrained_upto='{upto}' is not valid; expected one of {', '.join(UPTO)} "
                        "(pretrained weights up to and including that part; later parts start fresh).")


def load_pretrained(model: ResNet, path: str, new_head: bool = False, upto: str = "all") -> None:
    """Load a backbone's weights: the head is kept fresh when the class count differs (or always,
    with `new_head`), parts after `upto` keep their fresh initialization, and RGB filters are
    summed for a one-channel input. Anything else that does not fit is a UserError."""
    _check_upto(upto)
    tensors = dict(read_state_dict(path))
    own = model.state_dict()
    if new_head or ("fc.weight" in tensors and tensors["fc.weight"].shape != own["fc.weight"].shape):
        for k in ("fc.weight", "fc.bias"):  # another task's head: keep the fresh one
            tensors[k] = own[k]
    if upto != "all":  # the source task's specific stages: keep the fresh ones
        fresh = [*STAGES[STAGES.index(upto) + 1 if upto in STAGES else 0:], "fc"]
        for k in own:
            if k.split(".")[0] in fresh:
                tensors[k] = own[k]
    w = tensors.get("conv1.weight")
    if w is not None and w.dim() == 4 and w.shape[1] == 3 and own["conv1.weight"].shape[1] == 1:
        tensors["conv1.weight"] = w.sum(1, keepdim=True)  # gray x acts like RGB (x, x, x)
    load_state(model, tensors, path)


def _build(block, layers, in_shape, num_classes, pretrained: str, freeze: str, resize: int, new_head: bool,
           upto: str, name: str) -> ResNet:
    _image_only(in_shape, name)
    if resize < 0:
        raise UserError(f"model.resize={resize} is not valid; expected an image size in pixels, or 0 to keep the input size.")
    _check_upto(upto)
    model = ResNet(block, layers, in_shape[0], num_classes, resize)
    if pretrained:
        load_pretrained(model, pretrained, new_head, upto)
    model.freeze(freeze)
    return model


@MODELS.register("resnet18", tags=_TAGS, checks={"resize": ">= 0"})
def resnet18(in_shape, num_classes, *, pretrained: str = "", freeze: str = "none",
             resize: int = 0, new_head: bool = False, pretrained_upto: str = "all") -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) with torchvision's parameter names, for transfer learning.

    Options (see the module docstring): pretrained, freeze, resize, new_head, pretrained_upto."""
    return _build(BasicBlock, [2, 2, 2, 2], in_shape, num_classes, pretrained, freeze, resize, new_head, pretrained_upto,
                  "resnet18")


@MODELS.register("resnet34", tags=_TAGS, checks={"resize": ">= 0"})
def resnet34(in_shape, num_classes, *, pretrained: str = "", freeze: str = "none",
             resize: int = 0, new_head: bool = False, pretrained_upto: str = "all") -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]) with torchvision's parameter names, for transfer learning.

    Options (see the module docstring): pretrained, freeze, resize, new_head, pretrained_upto."""
    return _build(BasicBlock, [3, 4, 6, 3], in_shape, num_classes, pretrained, freeze, resize, new_head, pretrained_upto,
                  "resnet34")


@MODELS.register("resnet50", tags=_TAGS, checks={"resize": ">= 0"})
def resnet50(in_shape, num_classes, *, pretrained: str = "", freeze: str = "none",
             resize: int = 0, new_head: bool = False, pretrained_upto: str = "all") -> ResNet:
    """ResNet-50 (Bottleneck x4, [3, 4, 6, 3]) with torchvision's parameter names, for transfer learning.

    Options (see the module docstring): pretrained, freeze, resize, new_head, pretrained_upto."""
    return _build(Bottleneck, [3, 4, 6, 3], in_shape, num_classes, pretrained, freeze, resize, new_head, pretrained_upto,
                  "resnet50")
