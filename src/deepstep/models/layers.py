"""Shared building blocks: activations by name, model creation, the model interface (capability
tags, the reload hook) and the pre-training shape check that names the layer whose input does not fit.

The model interface (after timm). A model registered with the tag "classifier" maps
(B, *in_shape) to (B, num_classes) scores (or regression values) and exposes

    forward_features(x)                   the backbone: everything before the head
    forward_head(feats, pre_logits=False) the head; with pre_logits=True, the input of its last Linear
    target_layer()                        the module Grad-CAM hooks, or None

with `forward(x) == forward_head(forward_features(x))`, the same operations in the same order.
What `forward_features` returns is what the head reads first: for conv nets (tag "conv") the last
feature map (B, C, H', W') (or (B, C, T') for series), unpooled and unflattened as in timm, because
their heads begin with the pooling or flattening (and, in cnn-fashion, a dropout before it) and
moving it would change the operation order; for the others the flat vector the head reads: the MLP's
last hidden activation, a sequence model's readout over time (B, D) (pooling over time needs the
padding mask, which only the encoder knows). `forward_head(..., pre_logits=True)` is always flat
(B, in_features of the last Linear): the embedding to cache, plot or compare (e.g. the Frechet
feature net's penultimate activations).

`target_layer()`: conv nets return their last conv block (its output is the map a class-activation
map weights); sequence models their last recurrent or encoder layer, whose output (its first
element, for layers returning a tuple) holds one vector per position; the MLP returns None (no
spatial or temporal axis to map).

Capabilities are tags in the registry (`MODELS.has(name, "text")`), not attributes probed with
`hasattr`; `TAGS` lists them with their meaning, and tests/test_model_interface.py checks them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..engine.runtime import evaluating
from ..errors import UserError, unknown
from ..registry import MODELS

TAGS = {
    "classifier": "maps (B, *in_shape) to (B, num_classes) scores or values; forward_features, "
                  "forward_head(feats, pre_logits), target_layer",
    "image": "reads images (C, H, W)",
    "series": "reads float series (C, T), channels first",
    "table": "reads feature vectors (F,) (it flattens any input), e.g. observations of an RL environment",
    "sequence": "reads sequences and pools over positions (series or token ids)",
    "text": "reads token ids (T,) right-padded with 0; the factory takes `vocab_size` from the data",
    "conv": "a conv net: target_layer() is its last conv block, whose output is a feature map",
    "attention": "attention(x) returns every layer's attention weights (B, heads, T', T')",
    "staged": "param_groups() (stages from input to head, for optim.stage_lr_decay), freeze(upto) and "
              "feature_head() (train.cache_features)",
    "pretrained": "option `pretrained`: starts from outside weights (dropped when a run is reloaded)",
    "pretrained-tokenizer": "reads the ids of its encoder's own tokenizer (data.tokenizer = 'pretrained'); "
                            "the model's `pad_id` must be the tokenizer's",
    "run-files": "save_run_files(path) writes into the run directory what reloading the run needs",
    "generative": "reconstructs or generates inputs instead of classifying them (num_classes is ignored)",
    "autoencoder": "encode(x) -> latent, decode(z) -> reconstruction",
    "vae": "variational: encode(x) -> (mu, logvar), decode(z) -> Bernoulli logits, forward -> (logits, mu, logvar)",
    "gan": "generator and discriminator in one module (the gan task); forward is the discriminator's logit",
    "sampler": "sample(n, generator) -> images in [0, 1]; noise(n), images(z), latent_dim",
}

ReloadHook = Callable[[Path, dict], dict]
_RELOAD_HOOKS: dict[str, ReloadHook] = {}

ACTIVATIONS = {
    "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "elu": nn.ELU, "gelu": nn.GELU,
    "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus,
    "mish": nn.Mish, "selu": nn.SELU, "identity": nn.Identity,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name: relu, leaky_relu (slope 0.2), elu, gelu, silu, tanh,
    sigmoid, softplus, mish, selu, identity."""
    if name not in ACTIVATIONS:
        raise unknown("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def create_model(name: str, *args, **kwargs) -> nn.Module:
    """Build a registered model, e.g. `create_model("mlp", (1, 28, 28), 10, hidden=[128, 64])`.
    The options' declared ranges are checked with the config; what torch still refuses while
    building the layers (a combination of options) is a UserError naming the options."""
    factory = MODELS.get(name)
    try:
        return factory(*args, **kwargs)
    except (ValueError, RuntimeError, TypeError, ZeroDivisionError, OverflowError, AssertionError) as e:
        options = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "its defaults"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"Model '{name}' cannot be built with {options} for data of shape {args[0] if args else '?'}: "
                        f"{first}. `deepstep options {name}` lists its options.") from None


def text_models() -> list[str]:
    """Models that read token ids (tag "text"): their factories take `vocab_size` from the data."""
    return MODELS.tagged("text")


def reload_hook(*names: str) -> Callable[[ReloadHook], ReloadHook]:
    """Decorator: `hook(run_path, options) -> options` adjusts how models `names` are rebuilt from
    a run directory (see `reload_options`); it lives next to the model's factory."""

    def deco(hook: ReloadHook) -> ReloadHook:
        for name in names:
            if name in _RELOAD_HOOKS:
                raise ValueError(f"model '{name}' has two reload hooks")
            _RELOAD_HOOKS[name] = hook
        return hook

    return deco


def reload_options(name: str, run_path, options: dict) -> dict:
    """The factory options that rebuild a finished run's model `name` from its run directory alone.

    `options` are the run's `[model]` options (a "name" key is kept as it is). The default drops
    "pretrained": the run's own weights replace any outside ones, so none are read. A model that
    needs more registers a `reload_hook` (bert: its architecture from RUN/encoder/config.json, with
    random weights that the run's weights then overwrite). The input is not modified.

    >>> reload_options("resnet18", "runs/r", {"pretrained": "imagenet.pth", "freeze": "layer4"})
    {'freeze': 'layer4'}
    """
    MODELS.get(name)  # an unknown name is a UserError with suggestions
    out = {k: v for k, v in options.items() if k != "pretrained"}
    hook = _RELOAD_HOOKS.get(name)
    return dict(hook(Path(run_path), out)) if hook else out


def _expects(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"an input whose last dimension is {module.in_features}"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return f"{module.in_channels} input channels"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return f"{module.num_features} features/channels"
    return "a different input shape"


def check_fits(model: nn.Module, sample: torch.Tensor, data_name: str) -> torch.Tensor:
    """Run one forward pass on `sample`; on a shape error raise UserError naming the layer, what it
    expects and the shape it received. Returns the output."""
    entered: list[tuple[str, nn.Module, tuple]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: entered.append(
        (n, mod, tuple(inp[0].shape) if inp and torch.is_tensor(inp[0]) else ())))
        for n, m in model.named_modules() if n and not list(m.children())]
    try:
        with torch.no_grad(), evaluating(model):  # no dropout draws, no batch-norm statistics from this probe
            return model(sample)
    except RuntimeError as e:
        if not entered:
            raise UserError(f"The model cannot read data '{data_name}' of shape {tuple(sample.shape[1:])}: {e}") from None
        name, mod, shape = entered[-1]
        raise UserError(
            f"The model does not fit data '{data_name}' (one example has shape {tuple(sample.shape[1:])}): "
            f"layer '{name}' ({type(mod).__name__}) expects {_expects(mod)} but received a tensor of shape "
            f"{shape}. ({str(e).splitlines()[0]})"
        ) from None
    finally:
        for h in hooks:
            h.remove()
