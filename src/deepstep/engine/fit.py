"""`fit`: the only place a training loop is built. The CLI's `train` and `resume`, the Python API
(`deepstep.fit`, `deepstep.train`), a transfer recipe's pretraining, the scratch baseline and
the Fréchet feature classifier all come through here, so every run gets the same plug-ins,
checkpoints and summary.

    run = fit(cfg, run_dir="runs/x", plugins=[MyPlugin()])    # -> engine.run.Run
    run.summary["test/acc"]

The task comes from the registry (`TASKS.get(cfg.task)`, after its `prepare` classmethod has
resolved the config) unless one is given; plug-ins are the registry's "default" ones that apply
to the run, those named in the config (`[plugins] use`, `--with NAME`) and those passed in.

`cached_run` trains a config once into a cache folder, one process at a time, and reuses it.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout

from ..config import RunConfig
from ..errors import UserError
from ..registry import PLUGINS, TASKS
from ..version import __version__
from .checkpoint import load_checkpoint, save_weights
from .logs import monitor_mode
from .loop import Loop
from .plugin import Plugin, as_plugin
from .run import Run, RunMeta
from .rundir import RunDir
from .runtime import Runtime, unwrap
from .task import Task


def fit(cfg: RunConfig, *, run_dir: Path | str | None = None, plugins: Sequence = (), resume: bool = False,
        task: Task | Callable[[Runtime], Task] | None = None, verbose: int = 1) -> Run:
    """Train `cfg`, evaluate on the validation and test splits, and return the finished `Run`.

    Args:
        cfg: the resolved configuration (`config.load_config`).
        run_dir: the run directory (config, metrics, checkpoints, weights, summary); None trains
            in memory and writes nothing.
        plugins: extra plug-ins (instances of `engine.plugin.Plugin`, or Keras-style callback
            objects) besides the default ones and those the config names.
        resume: continue the run in `run_dir` from its last checkpoint (the result equals an
            uninterrupted run); without a checkpoint it starts over.
        task: a task to train instead of building `cfg.task` from the registry (or a function
            runtime -> task), as the Python API does for a user's own module and arrays.
        verbose: 0 silent, 1 one line per epoch (a progress bar on a terminal).

    Returns:
        The `Run`, with `summary` holding the final metrics under prefixed keys.
    """
    t_start = time.perf_counter()
    named = [PLUGINS.get(n) for n in cfg.plugins.use]  # unknown names fail before anything is made
    found = None
    if cfg.optim.lr == "auto":  # the range test first; config.toml records the rate it found
        from .lr_find import with_found_rate

        cfg, found = with_found_rate(cfg, verbose)
    rd = RunDir(run_dir) if run_dir is not None else None
    # before the runtime seeds the generators, so that a first-use pretraining changes nothing here
    resuming = resume and rd is not None and rd.checkpoint.is_file()
    task_cfg = TASKS.get(cfg.task).prepare(cfg, resuming, verbose) if task is None else cfg
    runtime = Runtime.from_config(cfg.train)
    if rd is not None:
        # under torchrun all ranks use rank 0's folder, and only rank 0 writes to it
        path = runtime.broadcast(str(rd.path))
        if resume:
            rd = RunDir.open(path)
        else:
            rd = RunDir.create(path, cfg.to_dict()) if runtime.is_main else RunDir(path)
    if task is None:
        task = TASKS.get(cfg.task)(task_cfg, runtime)
    elif not isinstance(task, Task) and callable(task):
        task = task(runtime)
    runtime.seed_rank()  # the model is built alike on every rank; dropout and augmentation now differ
    run = Run(cfg, rd, task=task, runtime=runtime, meta=RunMeta.from_dict({**task.meta, "model": cfg.model}),
              verbose=verbose)
    chosen = [p for p in _choose(named, plugins) if p.applies_to(run) and (runtime.is_main or not p.rank0_only)]
    loop = Loop(task, runtime, cfg.train.epochs, run, chosen, cfg.train.checkpoint_every, cfg.train.log_every)
    run.loop, run.plugins = loop, loop.plugins
    if resuming:
        loop.load_state_dict(load_checkpoint(rd.checkpoint))
    if rd is not None and runtime.is_main:
        rd.write_json(rd.meta, run.meta.to_dict())
    final = loop.fit()
    task.train(False)
    for split in ("val", "test"):
        final.update(task.evaluate(split))
    st = loop.state
    summary = {
        **final,
        "recipe": cfg.recipe,
        "epochs": st.epoch,
        "train_seconds": round(st.train_seconds, 3),
        "samples_per_second": round(st.samples / st.step_seconds, 1) if st.step_seconds else 0.0,
        "device": runtime.describe(),
        "world_size": runtime.world_size,
        "seed": cfg.train.seed,
        "versions": versions(),
    }
    if found is not None:
        summary.update({"lr_find/steepest": found["steepest"], "lr_find/min_10": found["min_10"]})
    if rd is not None and runtime.is_main:
        save_weights({f"{n}.{k}": v for n, m in task.modules().items() for k, v in unwrap(m).state_dict().items()},
                     rd.weights, {"recipe": cfg.recipe})
    for p in loop.plugins:
        p.on_finish(run, summary)
    summary["expect"] = check_expectations(cfg.expect, summary)
    summary["wall_seconds_this_process"] = round(time.perf_counter() - t_start, 3)
    run.summary = summary
    if rd is not None and runtime.is_main:
        rd.write_json(rd.summary, summary)
    return run


def resume(run_dir: Path | str, *, plugins: Sequence = (), verbose: int = 1) -> Run:
    """Continue an interrupted run from its last checkpoint; the result equals an uninterrupted run."""
    rd = RunDir.open(run_dir)
    if rd.summary.exists():
        raise UserError(f"The run in '{rd.path}' already finished (summary.json exists); nothing to resume.")
    cfg = Run.open(rd.path).cfg
    return fit(cfg, run_dir=rd.path, plugins=plugins, resume=True, verbose=verbose)


def _choose(named: list[type[Plugin]], given: Sequence) -> list[Plugin]:
    """The run's plug-ins: fresh instances of the default ones (registry tag "default") and of
    those the config names, then the given objects; one per name, a given instance replacing a
    registered plug-in of the same name (e.g. `BestWeights(patience=3)`)."""
    given = [as_plugin(p) for p in given]
    registered = {cls.name: cls for cls in [PLUGINS.get(n) for n in PLUGINS.tagged("default")] + named}
    replaced = {p.name for p in given}
    return [cls() for name, cls in registered.items() if name not in replaced] + given


def versions() -> dict:
    import sklearn

    return {"deepstep": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "sklearn": sklearn.__version__, "python": platform.python_version()}


def check_expectations(expect: dict, metrics: dict) -> dict:
    """`[expect]` targets of a recipe ({"test/acc": 0.97}) -> {key: {target, value, met}}.
    Lower-is-better metrics (loss, rmse, ...) must be at most the target. A target may name
    another metric of the run ({"test/rmse": "baseline/persistence_rmse"}); its value is then
    reported as `target_value`."""
    out = {}
    for key, target in expect.items():
        value = metrics.get(key)
        bar = metrics.get(target) if isinstance(target, str) else target
        entry = {"target": target, "value": value}
        if isinstance(target, str):
            entry["target_value"] = bar
        if value is None or bar is None:
            out[key] = {**entry, "met": False}
            continue
        met = value <= bar if monitor_mode(key) == "min" else value >= bar
        out[key] = {**entry, "met": bool(met)}
    return out


def cached_run(cfg: RunConfig, path: Path, verbose: int = 1, what: str = "", announce: bool = True) -> Path:
    """The finished run of `cfg` in the cache folder `path`: trained here on first use (an
    interrupted one resumed), by one process at a time (a lock file `<path>.lock` makes a second
    process wait for the first one, then reuse its run). `announce`: say what is trained or reused."""
    what = what or f"'{cfg.recipe}'"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:  # another process is training this run: wait for it, then reuse it
        print(f"another process is training {what} into {path}; waiting for it", flush=True)
        lock.acquire()
    try:
        rd = RunDir(path)
        if rd.summary.is_file() and rd.weights.is_file():
            if announce:
                print(f"using the cached run of {what}: {path}", flush=True)
            return path
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError(f"The run of {what} is not cached yet ({path}); run once in a single process "
                            "first, then under torchrun.")
        if rd.checkpoint.is_file():
            if announce:
                print(f"resuming the interrupted training of {what} in {path}", flush=True)
            resume(path, verbose=verbose)
        else:
            if announce:
                print(f"training {what} once (first use) into {path}; later runs reuse it", flush=True)
            if path.exists():  # killed before its first checkpoint: start over
                shutil.rmtree(path)
            fit(cfg, run_dir=path, verbose=verbose)
        return path
    finally:
        lock.release()
