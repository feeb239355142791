"""Data sets. Each loader is registered under a name and turns a `DataConfig` into `Arrays`."""

from . import builtin, cifar, files, idx, series, text  # noqa: F401  (modules register their loaders)
from .arrays import Arrays, Normalizer, TensorData, split

__all__ = ["Arrays", "Normalizer", "TensorData", "split"]
