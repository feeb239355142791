"""Generative adversarial networks (CURRICULUM row 14; Goodfellow et al. 2014): the guide's MLP
GAN and a DCGAN for 28x28 images (Radford et al. 2016).

A GAN is one module holding two networks, `generator` (z -> image in [-1, 1], tanh) and
`discriminator` (image in [-1, 1] -> one logit), so that the run directory, `load_run` and
`deepstep list` treat it like any other model; the `gan` task (tasks/gan.py) gives each network
its own optimizer. `forward(x)` is the discriminator's logit (what `check_fits` probes);
`sample(n)` returns images in [0, 1], the range of the data.

Spectral normalization (Miyato et al. 2018) of the discriminator's layers is an option; with it
the DCGAN discriminator drops its batch norm, as in that paper.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrizations

from ..errors import UserError
from ..registry import MODELS

_TAGS = ("generative", "gan", "sampler", "image")


def _sn(layer: nn.Module, on: bool) -> nn.Module:
    return parametrizations.spectral_norm(layer) if on else layer


class GAN(nn.Module):
    """A generator (z -> image in [-1, 1]) and a discriminator (image -> one logit) in one module."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, in_shape, latent_dim: int):
        super().__init__()
        self.in_shape, self.latent_dim = tuple(in_shape), latent_dim
        self.generator, self.discriminator = generator, discriminator

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *in_shape) in [-1, 1] -> (B, 1) logits
        return self.discriminator(x)

    def generate(self, z: torch.Tensor) -> torch.Tensor:  # (B, latent) -> (B, *in_shape) in [-1, 1]
        return self.generator(z).reshape(-1, *self.in_shape)

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        p = next(self.parameters())
        return torch.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images in [0, 1] from z ~ N(0, I)."""
        return self.images(self.noise(n, generator))

    @torch.no_grad()
    def images(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] for latent codes z (the generator's tanh output rescaled)."""
        return (self.generate(z) + 1) / 2


def _check_image(name: str, in_shape) -> None:
    if len(in_shape) != 3:
        raise UserError(f"Model '{name}' generates images (C, H, W); this data has inputs of shape {tuple(in_shape)}. "
                        f"Use an image data set (e.g. fashion-mnist, mnist, digits, cifar10).")


@MODELS.register("gan-mlp", tags=_TAGS, checks={"latent_dim": ">= 1", "hidden": ">= 1"})
def gan_mlp(in_shape, num_classes=0, *, latent_dim: int = 100, hidden: int = 256, spectral_norm: bool = False) -> GAN:
    """The guide's MLP GAN: G 100-256-784 (ReLU, tanh out) and D 784-256-1 (LeakyReLU 0.2).

    Options: `latent_dim`, `hidden`, `spectral_norm` (of the discriminator's layers)."""
    _check_image("gan-mlp", in_shape)
    n = math.prod(in_shape)
    g = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, n), nn.Tanh())
    d = nn.Sequential(nn.Flatten(), _sn(nn.Linear(n, hidden), spectral_norm), nn.LeakyReLU(0.2),
                      _sn(nn.Linear(hidden, 1), spectral_norm))
    return GAN(g, d, in_shape, latent_dim)


@MODELS.register("dcgan", tags=_TAGS, checks={"latent_dim": ">= 1", "width": ">= 1"})
def dcgan(in_shape, num_classes=0, *, latent_dim: int = 100, width: int = 64, spectral_norm: bool = False) -> GAN:
    """A DCGAN for small images such as 28x28 (Radford et al. 2016).

    G projects z to (2w, H/4, W/4) and doubles twice with transposed convs (BN, ReLU, tanh out);
    D halves twice with stride-2 convs (LeakyReLU 0.2). Options: `latent_dim`, `width`,
    `spectral_norm`."""
    _check_image("dcgan", in_shape)
    c, h, w = in_shape
    if h % 4 or w % 4 or h < 8 or w < 8:
        raise UserError(f"Model 'dcgan' doubles a (H/4, W/4) map twice, so it can produce images whose sides are "
                        f"multiples of 4 and at least 8 (e.g. 28x28 or 32x32); this data has {h}x{w}. "
                        f"Set data.image_size to such a size, or use model gan-mlp.")
    small = (2 * width, h // 4, w // 4)
    g = nn.Sequential(
        nn.Linear(latent_dim, math.prod(small), bias=False), nn.Unflatten(1, small),
        nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),  # x2
        nn.ConvTranspose2d(width, c, 4, 2, 1), nn.Tanh(),  # x2
    )
    norm = [] if spectral_norm else [nn.BatchNorm2d(2 * width)]
    d = nn.Sequential(
        _sn(nn.Conv2d(c, width, 4, 2, 1), spectral_norm), nn.LeakyReLU(0.2),  # /2
        _sn(nn.Conv2d(width, 2 * width, 4, 2, 1, bias=spectral_norm), spectral_norm), *norm, nn.LeakyReLU(0.2),  # /2
        nn.Flatten(), _sn(nn.Linear(math.prod(small), 1), spectral_norm),
    )
    return GAN(g, d, in_shape, latent_dim)


def is_gan(name: str) -> bool:
    """Whether registered model `name` is a GAN (tag "gan": the `gan` task's models; an unknown
    name is a UserError)."""
    return "gan" in MODELS.tags(name)
