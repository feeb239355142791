"""Model families, one file each; variants are short registered factories.

A factory takes the input shape and class count from the data (positional) and its options as
keyword-only arguments — that signature is the model's typed config (`[model]` in a recipe)."""

from . import autoencoder, bert, cnn, gan, mlp, resnet, resnet_small, rnn, transformer  # noqa: F401  (modules register their factories)
from .layers import activation, create_model

__all__ = ["activation", "create_model"]
