"""`train`, `resume` and `load_run`: the Python API's names for `engine.fit.fit` and `Run.open`.

`train` differs from `fit` only in giving every run a directory (default `runs/<recipe>-<time>`,
or `$DEEPSTEP_RUNS/...`), as `deepstep train` does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .config import RunConfig
from .engine.fit import fit
from .engine.fit import resume as _resume
from .engine.run import Run
from .engine.rundir import default_run_dir


def train(cfg: RunConfig, run_dir: Path | str | None = None, verbose: int = 1, resume: bool = False,
          plugins: Sequence = ()) -> Run:
    """Train `cfg` into a run directory, evaluate on the test split, write summary and weights.

    Example:
        >>> import tempfile
        >>> from deepstep.config import load_config
        >>> cfg = load_config("digits-mlp", ["train.epochs=3"])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     r = train(cfg, run_dir=f"{d}/run", verbose=0)
        >>> r.summary["test/acc"] > 0.8, r.summary["epochs"]
        (True, 3)
    """
    return fit(cfg, run_dir=run_dir or default_run_dir(cfg.recipe), plugins=plugins, resume=resume, verbose=verbose)


def resume(run_dir: Path | str, verbose: int = 1, plugins: Sequence = ()) -> Run:
    """Continue an interrupted run from its last checkpoint; the result equals an uninterrupted run."""
    return _resume(run_dir, plugins=plugins, verbose=verbose)


def load_run(run_dir: Path | str) -> Run:
    """A run directory as a `Run` (`.model()`, `.predict(raw)`, `.summary`, `.metrics()`, ...)."""
    return Run.open(run_dir)
