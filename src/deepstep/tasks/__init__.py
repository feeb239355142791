"""Tasks: what one training step means, with its losses and metrics."""

from . import forecast, gan, generative, supervised  # noqa: F401  (modules register their tasks)
