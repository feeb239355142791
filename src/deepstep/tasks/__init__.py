"""Tasks: what one training step means, with its losses and metrics."""

# the modules register their tasks; the *_options modules, those tasks' config sections
from . import (  # noqa: F401
    forecast,
    forecast_options,
    gan,
    gen_options,
    generative,
    supervised,
    transfer_options,
)
