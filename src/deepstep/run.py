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
from .plugins.progress import in_notebook


def train(cfg: RunConfig, run_dir: Path | str | None = None, verbose: int = 1, resume: bool = False,
          plugins: Sequence = (), show: bool = False) -> Run:
    """Train `cfg` into a run directory, evaluate on the test split, write summary and weights;
    `show`: then show the final result (`show_result`), as `deepstep.train` does.

    Example:
        >>> import tempfile
        >>> from deepstep.config import load_config
        >>> cfg = load_config("digits-mlp", ["train.epochs=3"])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     r = train(cfg, run_dir=f"{d}/run", verbose=0)
        >>> r.summary["test/acc"] > 0.8, r.summary["epochs"]
        (True, 3)
    """
    run = fit(cfg, run_dir=run_dir or default_run_dir(cfg.recipe), plugins=plugins, resume=resume, verbose=verbose)
    if show:
        show_result(run)
    return run


def show_result(run: Run) -> None:
    """The final result of a run: in a notebook an HTML block (test metrics, each target met or
    not, the run directory; `run` itself, displayed, adds the pictures), elsewhere the lines
    `deepstep train` prints."""
    lines = run.result_lines()
    if not in_notebook():
        print("\n" + "\n".join(lines), flush=True)
        return
    import html

    from IPython.display import display

    s = run.summary
    keys = [k for k in s if k.startswith(("test/", "baseline/", "samples/", "eval/"))
            and isinstance(s[k], (int, float)) and not isinstance(s[k], bool)]
    cells = "".join(f"<td><b>{html.escape(k)}</b> {s[k]:.4g}</td>" for k in keys)
    targets = "".join(
        f"<li>{html.escape(k)} {html.escape(str(e['target']))}: "
        f"<b style=\"color:{'#0b6b2b' if e['met'] else '#b3261e'}\">{'met' if e['met'] else 'NOT met'}</b> "
        f"({e['value']:.4g})</li>" if isinstance(e.get("value"), (int, float)) else
        f"<li>{html.escape(k)}: <b style=\"color:#b3261e\">NOT met</b> (missing)</li>"
        for k, e in (s.get("expect") or {}).items())
    tail = (f"{s.get('epochs')} epochs, {s.get('train_seconds', 0):.1f} s training on {html.escape(str(s.get('device')))}"
            f" &middot; run directory <code>{html.escape(str(run.path))}</code>")
    block = (f'<div style="font:14px system-ui,sans-serif;border-left:4px solid #1f77b4;padding:4px 10px;'
             f'margin:4px 0"><div><b>Result</b> (test split)</div><table><tr>{cells}</tr></table>'
             f'{f"<ul style=margin:2px>{targets}</ul>" if targets else ""}<div>{tail}</div></div>')
    display({"text/plain": "\n".join(lines), "text/html": block}, raw=True)


def resume(run_dir: Path | str, verbose: int = 1, plugins: Sequence = ()) -> Run:
    """Continue an interrupted run from its last checkpoint; the result equals an uninterrupted run."""
    return _resume(run_dir, plugins=plugins, verbose=verbose)


def load_run(run_dir: Path | str) -> Run:
    """A run directory as a `Run` (`.model()`, `.predict(raw)`, `.summary`, `.metrics()`, ...)."""
    return Run.open(run_dir)
