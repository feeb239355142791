"""deepstep: learn and practise deep learning with one PyTorch engine.

Public API: `fit`, `evaluate`, `predict`, `summary` (any nn.Module on arrays), `train` (a recipe
by name), `resume`, `load_run` (a run directory as a `Run`), `create_model`, `list_recipes`.
"""

from __future__ import annotations

from .version import __version__  # noqa: F401  (deepstep.__version__)


def train(recipe: str, overrides: list[str] = (), run_dir=None, verbose: int = 1):
    """Train a recipe by name (see `list_recipes()`) with `key=value` overrides; returns the
    finished `Run` (`.summary`, `.path`, `.predict(raw)`, `.model()`). With `verbose`, progress
    is shown while it trains (a live block in a notebook) and the test result at the end;
    displaying the returned run in a notebook shows its summary with the report's pictures."""
    from .config import load_config
    from .run import train as _train

    return _train(load_config(recipe, overrides), run_dir, verbose, show=bool(verbose))


def list_recipes() -> list[str]:
    from .registry import recipe_paths

    return sorted(recipe_paths())


def __getattr__(name):  # lazy: `import deepstep` stays fast for the CLI
    if name in ("fit", "evaluate", "predict", "summary"):
        from . import api

        return getattr(api, name)
    if name in ("resume", "load_run"):
        from . import run

        return getattr(run, name)
    if name == "create_model":
        from .models import create_model

        return create_model
    raise AttributeError(f"module 'deepstep' has no attribute {name!r}")


__all__ = ["fit", "evaluate", "predict", "summary", "train", "resume", "load_run", "create_model", "list_recipes"]
