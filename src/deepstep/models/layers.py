"""Shared building blocks: activations by name, model creation, and the pre-training shape check
that names the layer whose input does not fit."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError, unknown
from ..registry import MODELS

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
    """Build a registered model, e.g. `create_model("mlp", (1, 28, 28), 10, hidden=[128, 64])`."""
    return MODELS.get(name)(*args, **kwargs)


def text_models() -> list[str]:
    """Models that read token ids: their factories take `vocab_size` from the data (models/rnn.py)."""
    import inspect

    return [n for n in MODELS.names() if "vocab_size" in inspect.signature(MODELS.get(n)).parameters]


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
    was_training = model.training
    model.eval()  # no dropout draws, no batch-norm statistics from this probe
    try:
        with torch.no_grad():
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
        model.train(was_training)
        for h in hooks:
            h.remove()
