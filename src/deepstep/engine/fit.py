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

import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout

from ..config import RunConfig, read_toml
from ..errors import UserError
from ..quick import shorten
from ..registry import PLUGINS, TASKS
from ..version import __version__
from .checkpoint import load_checkpoint, save_weights
from .logs import monitor_mode
from .loop import Loop, signature
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
    cfg = shorten(cfg)  # DEEPSTEP_QUICK=1 caps epochs and data sizes (deepstep/quick.py); off: cfg as given
    named = [PLUGINS.get(n) for n in cfg.plugins.use]  # unknown names fail before anything is made
    for n in cfg.plugins.skip:
        PLUGINS.get(n)
    rd = RunDir(run_dir) if run_dir is not None else None
    main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 owns the folder
    if rd is not None and main:
        if resume:  # the lock first: no other process may write this run while it is resumed
            rd = RunDir.open(rd.path)
            rd.lock()
            rd.clean_temporaries()
        else:  # nothing is created before the configuration and the data have been checked
            RunDir.check_new(rd.path)
    try:
        found = None
        if cfg.optim.lr == "auto":  # the range test first; config.toml records the rate it found
            from .lr_find import with_found_rate

            cfg, found = with_found_rate(cfg, verbose)
        return _fit(cfg, rd, named, plugins, resume, task, verbose, t_start, found)
    finally:
        if rd is not None:
            rd.unlock()


def _fit(cfg, rd, named, plugins, resume, task, verbose, t_start, found=None) -> Run:
    # before the runtime seeds the generators, so that a first-use pretraining changes nothing here
    resuming = resume and rd is not None and rd.checkpoint.is_file()
    task_cfg = TASKS.get(cfg.task).prepare(cfg, resuming, verbose) if task is None else cfg
    runtime = Runtime.from_config(cfg.train)
    if rd is not None:
        # under torchrun all ranks use rank 0's folder, and only rank 0 writes to it
        path = runtime.broadcast(str(rd.path))
        if resume and not runtime.is_main:  # rank 0's was opened and locked by `fit`
            rd = RunDir.open(path)
    if task is None:
        task = TASKS.get(cfg.task)(task_cfg, runtime)
    elif not isinstance(task, Task) and callable(task):
        task = task(runtime)
    check_monitor(cfg, task)
    runtime.seed_rank()  # the model is built alike on every rank; dropout and augmentation now differ
    state = None
    if resuming:
        state = load_checkpoint(rd.checkpoint)
        check_resumable(state, task, rd)
    elif rd is not None and not resume:  # the data and the model are checked: now the folder is made
        if runtime.is_main:
            made = RunDir.create(path, cfg.to_dict(), hold=True)
            rd._lock_fd, made._lock_fd = made._lock_fd, None  # held by `fit`'s handle, released there
        else:
            rd = RunDir(path)
    # the task's modules are built: the runtime has resolved "auto" precision and memory format
    resolved = {"precision": runtime.precision, "channels_last": bool(runtime.channels_last is True)}
    run = Run(cfg, rd, task=task, runtime=runtime, meta=RunMeta.from_dict({**task.meta, "model": cfg.model, **resolved}),
              verbose=verbose)
    skip = {PLUGINS.get(n).name for n in cfg.plugins.skip}
    chosen = [p for p in _choose(named, plugins, skip) if p.applies_to(run) and (runtime.is_main or not p.rank0_only)]
    loop = Loop(task, runtime, cfg.train.epochs, run, chosen, cfg.train.checkpoint_every, cfg.train.log_every)
    # kept in checkpoints to refuse a resume on other data; a run without a directory writes none
    loop.fingerprint = data_fingerprint(task) if rd is not None else None
    run.loop, run.plugins = loop, loop.plugins
    if state is not None:
        try:
            loop.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
            raise UserError(f"Checkpoint '{rd.checkpoint}' does not fit this run ({type(e).__name__}: "
                            f"{(str(e).strip().splitlines() or [''])[0][:200]}). It was written by another version or "
                            f"another configuration; remove it to start the run over.") from None
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
        **resolved,
        "threads": torch.get_num_threads() if runtime.device.type == "cpu" else 0,
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
    # a key the run does not report: a typo when other metrics of its kind are reported (test/accuracy
    # beside test/acc) is an error; a kind this run does not measure (samples/... with
    # gen.test_samples = 0) stays "not measured"
    reported = sorted(k for k, v in summary.items() if "/" in k and isinstance(v, (int, float)))
    unknown_keys = [name for e in summary["expect"].values() for name in e.get("unknown", [])
                    if any(r.split("/")[0] == name.split("/")[0] for r in reported)]
    if unknown_keys:
        where = f" The run itself finished: {rd.summary}." if rd is not None else ""
        raise UserError(f"[expect] names {', '.join(repr(k) for k in unknown_keys)}, which this run does not report, "
                        f"so the target cannot be checked. The run reports: {', '.join(reported)}. Fix the key in "
                        f"the recipe's [expect] section.{where}")
    return run


def check_monitor(cfg: RunConfig, task) -> None:
    """train.monitor must be a metric the task logs every epoch, when the task declares them
    (`metric_names()`); others are checked at the end of the first epoch (plugins/best.py)."""
    names = getattr(task, "metric_names", None)
    known = names() if names is not None else None
    if known is None or not getattr(task, "has_val", False) and not cfg.train.monitor.startswith("train/"):
        return
    known = sorted(known)
    if cfg.train.monitor not in known:
        raise UserError(f"train.monitor = '{cfg.train.monitor}' is not a metric this run logs, so best weights, "
                        f"early stopping and the plateau schedule could not follow it. Valid: "
                        f"{', '.join(k for k in known if k.startswith(('val/', 'train/')))}.")


def data_fingerprint(task) -> str:
    """A digest of the data the task trains on: its own `data_fingerprint()` when it has one (the
    arrays themselves), else its meta (shapes, classes, sizes and normalization statistics)."""
    h = hashlib.sha256(json.dumps(task.meta, sort_keys=True, default=str).encode())
    own = getattr(task, "data_fingerprint", None)
    if own is not None:
        h.update(own().encode())
    return h.hexdigest()


def check_resumable(state: dict, task, rd: RunDir) -> None:
    """A checkpoint resumes only the run it was written by: the same model (names and shapes of
    every weight) and the same data (fingerprint). Checkpoints of earlier versions lack both."""
    if not {"task", "loop", "rng"} <= set(state) or not isinstance(state["loop"], dict):
        raise UserError(f"Checkpoint '{rd.checkpoint}' is not a deepstep checkpoint (it lacks the task, loop and "
                        "random states). Remove it to start the run over.")
    saved_fp = state.get("data")
    if saved_fp is not None and saved_fp != data_fingerprint(task):
        try:
            before = RunMeta.from_dict(rd.read_json(rd.meta)).to_dict() if rd.meta.is_file() else {}
        except UserError:  # damaged: the fingerprint alone tells
            before = {}
        changes = [f"{k} {before[k]} -> {task.meta[k]}" for k in ("in_shape", "classes", "sizes", "num_outputs")
                   if k in before and k in task.meta and before[k] != task.meta[k]]
        what = f" ({'; '.join(changes)})" if changes else " (same shapes, other values)"
        raise UserError(f"The data of the run in '{rd.path}' changed since its checkpoint was written{what}: a "
                        f"resumed run must see the data it started with (data.name = '{task_data_name(rd)}'). "
                        "Restore the data, or start a new run with `deepstep train`.")
    saved = state.get("signature")
    if saved is not None:
        now = signature(task)
        diffs = []
        for name in sorted(set(saved) | set(now)):
            a, b = saved.get(name, {}), now.get(name, {})
            diffs += [f"{name}.{k} missing from the checkpoint" for k in b if k not in a][:3]
            diffs += [f"{name}.{k} not in the model" for k in a if k not in b][:3]
            diffs += [f"{name}.{k}: checkpoint {tuple(a[k])} vs model {tuple(b[k])}" for k in a
                      if k in b and a[k] != b[k]][:3]
        if diffs:
            raise UserError(f"Checkpoint '{rd.checkpoint}' was written by another model than this run builds "
                            f"({'; '.join(diffs[:6])}). The configuration or the data changed since (e.g. a CSV "
                            "gained a column); restore them, or start a new run with `deepstep train`.")


def task_data_name(rd: RunDir) -> str:
    try:
        return str(read_toml(rd.config).get("data", {}).get("name", "?"))
    except UserError:
        return "?"


def resume(run_dir: Path | str, *, plugins: Sequence = (), verbose: int = 1) -> Run:
    """Continue an interrupted run from its last checkpoint; the result equals an uninterrupted run."""
    rd = RunDir.open(run_dir)
    if rd.summary.exists():
        raise UserError(f"The run in '{rd.path}' already finished (summary.json exists); nothing to resume.")
    # the config only: meta.json is written again by the resumed run (and compared, when readable)
    cfg = RunConfig.from_dict(read_toml(rd.config), where=str(rd.config), strict=False)
    return fit(cfg, run_dir=rd.path, plugins=plugins, resume=True, verbose=verbose)


def _choose(named: list[type[Plugin]], given: Sequence, skip: set[str] = frozenset()) -> list[Plugin]:
    """The run's plug-ins: fresh instances of the default ones (registry tag "default") except those
    in `skip` (plugins.skip), and of those the config names, then the given objects; one per name, a
    given instance replacing a registered plug-in of the same name (e.g. `BestWeights(patience=3)`)."""
    given = [as_plugin(p) for p in given]
    defaults = [PLUGINS.get(n) for n in PLUGINS.tagged("default")]
    registered = {cls.name: cls for cls in [c for c in defaults if c.name not in skip] + named}
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
        if value is None or bar is None:  # a key the run does not report: fit raises after the summary
            missing = [key] * (value is None) + [target] * (isinstance(target, str) and bar is None)
            out[key] = {**entry, "met": False, "unknown": missing}
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
