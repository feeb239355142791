"""Tasks: what one training step means, with its losses and metrics."""

from . import forecast, generative, supervised  # noqa: F401  (modules register their tasks)
