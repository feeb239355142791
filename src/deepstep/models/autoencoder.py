"""Autoencoders and the variational autoencoder (CURRICULUM row 13).

Registry convention for generative models: the factories keep the registry's signature
`(in_shape, num_classes, *, options)` so that config resolution, `deepstep list/options` and
run loading treat them like every other model, but `num_classes` is ignored — the output has the
input's shape. Each factory carries the registry tag "generative" (see `is_generative`), plus
"autoencoder" (`encode` -> latent, `decode`) and, for the VAE, "vae" and "sampler"; the classifier
tests take only models tagged "classifier", and tests/test_generative.py checks these shapes and
gradients instead. The tasks `autoencode` and `vae` (tasks/generative.py) accept only generative
models.

Models know nothing about losses: `encode`, `decode` and, for the VAE, `sample`. `encode` means
one thing in deepstep: an autoencoder's latent (the classifiers' features are `forward_features`).
Inputs are expected in [0, 1] (images as loaded, no standardization).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserError
from ..registry import MODELS
from .layers import activation as act


def is_generative(name: str) -> bool:
    """Whether registered model `name` reconstructs or generates inputs instead of classifying them
    (tag "generative"; an unknown name is a UserError)."""
    return "generative" in MODELS.tags(name)


AE_TAGS = ("generative", "autoencoder", "image")
VAE_TAGS = (*AE_TAGS, "vae", "sampler")


def _mlp(widths: list[int], activation: str) -> nn.Sequential:
    """Linear layers with `activation` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(act(activation))
    return nn.Sequential(*layers)


class AutoEncoder(nn.Module):
    """Deterministic autoencoder: x -> code -> reconstruction in [0, 1] (sigmoid output)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, in_shape: tuple[int, ...]):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.encoder, self.decoder = encoder, decoder

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, *in_shape) -> (B, latent)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B, latent) -> (B, *in_shape), in [0, 1]
        return torch.sigmoid(self.decoder(z)).reshape(-1, *self.in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class VAE(nn.Module):
    """Variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes"):
    a diagonal Gaussian posterior q(z|x) = N(mu, exp(logvar)), a standard normal prior and a
    Bernoulli decoder p(x|z) whose logits `decode` returns."""

    def __init__(self, body: nn.Module, width: int, decoder: nn.Module, in_shape: tuple[int, ...],
                 latent_dim: int):
        super().__init__()
        self.in_shape, self.latent_dim = tuple(in_shape), latent_dim
        self.body = body  # (B, *in_shape) -> (B, width)
        self.mu = nn.Linear(width, latent_dim)
        self.logvar = nn.Linear(width, latent_dim)
        self.decoder = decoder  # (B, latent_dim) -> (B, *in_shape) or (B, prod(in_shape)) logits

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # -> (B, latent) twice
        h = self.body(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B, latent) -> Bernoulli logits (B, *in_shape)
        return self.decoder(z).reshape(-1, *self.in_shape)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        """(logits, mu, logvar) with z = mu + sigma * eps (reparameterization; eps ~ N(0, I) if not given)."""
        mu, logvar = self.encode(x)
        eps = torch.randn_like(mu) if eps is None else eps
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n codes from the prior N(0, I)."""
        p = next(self.parameters())
        return torch.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype)

    @torch.no_grad()
    def images(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli means sigmoid(decode(z)): images in [0, 1] for codes z."""
        return torch.sigmoid(self.decode(z))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images from the prior: Bernoulli means sigmoid(decode(z)), z ~ N(0, I)."""
        return self.images(self.noise(n, generator))


@MODELS.register("ae-mlp", tags=AE_TAGS, checks={"hidden": ">= 1", "latent_dim": ">= 1"})
def ae_mlp(in_shape, num_classes=0, *, hidden: list[int] = (256,), latent_dim: int = 64,
           activation: str = "relu") -> AutoEncoder:
    """An MLP autoencoder, as in the guide: 784-256-64, a mirrored decoder and a sigmoid output.

    Options: `hidden` widths, `latent_dim`, `activation`; num_classes is ignored."""
    n, hidden = math.prod(in_shape), list(hidden)
    encoder = nn.Sequential(nn.Flatten(), *_mlp([n, *hidden, latent_dim], activation))
    decoder = _mlp([latent_dim, *reversed(hidden), n], activation)
    # the guide's encoder ends in an activation too: the code is non-negative
    encoder.append(act(activation))
    return AutoEncoder(encoder, decoder, in_shape)


def _conv_parts(name: str, in_shape, channels: list[int], activation: str):
    """Stride-2 conv encoder to a flat feature vector, and a transposed-conv decoder back from it:
    (encoder, flat width, decoder from that width)."""
    if len(in_shape) != 3:
        raise UserError(f"Model '{name}' reads images (C, H, W), got inputs of shape {tuple(in_shape)}.")
    c, h, w = in_shape
    f = 2 ** len(channels)
    if h % f or w % f:
        raise UserError(f"Model '{name}' with {len(channels)} stride-2 layers needs image sides divisible by {f}, "
                        f"got {h}x{w}.")
    widths, down, up = [c, *channels], [], []
    for a, b in zip(widths[:-1], widths[1:]):
        down += [nn.Conv2d(a, b, 3, stride=2, padding=1), act(activation)]  # halves H and W
    for i, (a, b) in enumerate(zip(widths[:0:-1], widths[-2::-1])):
        up.append(nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1))  # doubles H and W
        if i < len(channels) - 1:
            up.append(act(activation))
    small = (channels[-1], h // f, w // f)
    return nn.Sequential(*down, nn.Flatten()), math.prod(small), nn.Sequential(nn.Unflatten(1, small), *up)


@MODELS.register("ae-conv", tags=AE_TAGS, checks={"channels": ">= 1", "latent_dim": ">= 1"})
def ae_conv(in_shape, num_classes=0, *, channels: list[int] = (16, 32), latent_dim: int = 32,
            activation: str = "relu") -> AutoEncoder:
    """A convolutional autoencoder: stride-2 convs down, transposed convs up.

    Image sides must be divisible by 2^len(channels). Options: `channels`, `latent_dim`, `activation`."""
    down, width, up = _conv_parts("ae-conv", in_shape, list(channels), activation)
    encoder = nn.Sequential(down, nn.Linear(width, latent_dim))
    decoder = nn.Sequential(nn.Linear(latent_dim, width), act(activation), up)
    return AutoEncoder(encoder, decoder, in_shape)


@MODELS.register("vae-mlp", tags=VAE_TAGS, checks={"hidden": ">= 1", "latent_dim": ">= 1"})
def vae_mlp(in_shape, num_classes=0, *, hidden: list[int] = (256,), latent_dim: int = 16,
            activation: str = "relu") -> VAE:
    """An MLP variational autoencoder with a Gaussian latent and a Bernoulli decoder (logits).

    Options: `hidden` widths, `latent_dim`, `activation`; num_classes is ignored."""
    n, hidden = math.prod(in_shape), list(hidden)
    body = nn.Sequential(nn.Flatten(), *_mlp([n, *hidden], activation), act(activation)) if hidden else nn.Flatten()
    decoder = _mlp([latent_dim, *reversed(hidden), n], activation)
    return VAE(body, hidden[-1] if hidden else n, decoder, in_shape, latent_dim)


@MODELS.register("vae-conv", tags=VAE_TAGS, checks={"channels": ">= 1", "latent_dim": ">= 1"})
def vae_conv(in_shape, num_classes=0, *, channels: list[int] = (32, 64), latent_dim: int = 16,
             activation: str = "relu") -> VAE:
    """A convolutional variational autoencoder with a Gaussian latent and a Bernoulli decoder.

    Stride-2 convs to (mu, logvar), transposed convs to Bernoulli logits. Image sides must be divisible by 2^len(channels). Options: `channels`, `latent_dim`, `activation`."""
    down, width, up = _conv_parts("vae-conv", in_shape, list(channels), activation)
    decoder = nn.Sequential(nn.Linear(latent_dim, width), act(activation), up)
    return VAE(down, width, decoder, in_shape, latent_dim)
