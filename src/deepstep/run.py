"""Training, resuming and loading runs: the glue between config, task, loop and run directory."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig, read_toml
from .data.arrays import Normalizer
from .data.tokenize import TOKENIZER_FILE, PretrainedTokenizer, Tokenizer
from .engine.callbacks import BestWeights, Progress
from .engine.checkpoint import load_checkpoint, load_state, load_weights, save_weights
from .engine.loop import Loop
from .engine.rundir import RunDir, default_run_dir
from .engine.runtime import Runtime
from .errors import UserError
from .models.layers import create_model
from .registry import TASKS


@dataclass
class Result:
    """What `train` returns: the run directory and the final summary."""

    run_dir: Path
    summary: dict

    def __getitem__(self, key):
        return self.summary[key]


def versions() -> dict:
    import sklearn

    from . import __version__

    return {"deepstep": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "sklearn": sklearn.__version__, "python": platform.python_version()}


def _callbacks(task, cfg: RunConfig, verbose: int, is_main: bool = True):
    cbs = []
    if getattr(task, "has_val", False):
        cbs.append(BestWeights(task.modules(), cfg.train.monitor, cfg.train.early_stop, cfg.train.restore_best))
    cbs.append(Progress(cfg.train.epochs, task.steps_per_epoch, verbose if is_main else 0))
    return cbs


def train(cfg: RunConfig, run_dir: Path | str | None = None, verbose: int = 1, resume: bool = False) -> Result:
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
    from .transfer import with_pretrained

    t_start = time.perf_counter()
    # before the runtime seeds the generators, so that a first-use pretraining changes nothing here
    resuming = resume and run_dir is not None and RunDir(run_dir).checkpoint.is_file()
    task_cfg = with_pretrained(cfg, resuming, verbose)
    runtime = Runtime.from_config(cfg.train)
    # under torchrun all ranks use rank 0's folder, and only rank 0 writes to it
    path = runtime.broadcast(str(run_dir or default_run_dir(cfg.recipe)))
    if resume:
        run = RunDir.open(path)
    else:
        run = RunDir.create(path, cfg.to_dict()) if runtime.is_main else RunDir(path)
    task = TASKS.get(cfg.task)(task_cfg, runtime)
    if runtime.is_main and hasattr(task, "set_run_dir"):  # tasks that write pictures during training
        task.set_run_dir(run.path)
    loop = Loop(task, runtime, cfg.train.epochs, run, _callbacks(task, cfg, verbose, runtime.is_main),
                cfg.train.checkpoint_every, cfg.train.log_every)
    if resume and run.checkpoint.exists():
        loop.load_state_dict(load_checkpoint(run.checkpoint))
    elif resume and runtime.is_main:
        run.truncate_metrics(0)  # killed before the first checkpoint: start over
    if runtime.is_main:
        run.write_json(run.meta, {**task.meta, "model": cfg.model})
    final = loop.fit()
    task.train(False)
    for split in ("val", "test"):
        final.update(task.evaluate(split))
    if hasattr(task, "extras"):  # optional: baselines on the same test split, plots into the run directory
        final.update(task.extras(run.path if runtime.is_main else None))
    st = loop.state
    summary = {
        **final,
        "recipe": cfg.recipe,
        "epochs": st.epoch,
        "train_seconds": round(st.train_seconds, 3),
        "samples_per_second": round(st.samples / st.step_seconds, 1) if st.step_seconds else 0.0,
        "wall_seconds_this_process": round(time.perf_counter() - t_start, 3),
        "device": runtime.describe(),
        "world_size": runtime.world_size,
        "seed": cfg.train.seed,
        "versions": versions(),
        "expect": check_expectations(cfg.expect, final),
    }
    if runtime.is_main:
        save_weights({f"{n}.{k}": v for n, m in task.modules().items() for k, v in m.state_dict().items()},
                     run.weights, {"recipe": cfg.recipe})
        run.write_json(run.summary, summary)
    return Result(run.path, summary)


def check_expectations(expect: dict, metrics: dict) -> dict:
    """`[expect]` targets of a recipe ({"test/acc": 0.97}) -> {key: {target, value, met}}.
    Lower-is-better metrics (loss, rmse, ...) must be at most the target. A target may name
    another metric of the run ({"test/rmse": "baseline/persistence_rmse"}); its value is then
    reported as `target_value`."""
    from .engine.callbacks import monitor_mode

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


def resume(run_dir: Path | str, verbose: int = 1) -> Result:
    """Continue an interrupted run from its last checkpoint; the result equals an uninterrupted run."""
    run = RunDir.open(run_dir)
    if run.summary.exists():
        raise UserError(f"The run in '{run.path}' already finished (summary.json exists); nothing to resume.")
    cfg = RunConfig.from_dict(read_toml(run.config), where=str(run.config))
    return train(cfg, run.path, verbose=verbose, resume=True)


@dataclass
class LoadedRun:
    """A finished run, ready for predictions: its config, meta, model (eval mode), normalizer and,
    for text runs, the tokenizer saved at training time."""

    path: Path
    cfg: RunConfig
    meta: dict
    model: torch.nn.Module
    normalizer: Normalizer
    tokenizer: Tokenizer | PretrainedTokenizer | None = None

    @torch.inference_mode()
    def predict_proba(self, x) -> np.ndarray:
        """Class probabilities (classification) or outputs (regression) for raw inputs (N, *in_shape),
        or for a list of strings when the run is a text run."""
        if self.tokenizer is not None:
            t = torch.as_tensor(self.tokenizer.encode(list(x)))
        else:
            t = self.normalizer(torch.as_tensor(x, dtype=torch.float32))
        out = self.model(t)
        return (out.softmax(-1) if self.meta["loss"] == "cross_entropy" else out).numpy()


def load_run(run_dir: Path | str) -> LoadedRun:
    """Load a finished run's model from its directory (safetensors; nothing is unpickled)."""
    run = RunDir.open(run_dir)
    cfg = RunConfig.from_dict(read_toml(run.config), where=str(run.config))
    meta = run.read_json(run.meta)
    if meta.get("kind") == "env":
        raise UserError(f"'{run.path}' is a reinforcement-learning run: use `deepstep eval` or `deepstep play`.")
    vocab = (meta["vocab_size"],) if "vocab_size" in meta else ()  # text: the factory's third data argument
    # the run's own weights replace any `pretrained` ones: the run directory alone is enough
    options = {k: v for k, v in cfg.model.items() if k not in ("name", "pretrained")}
    if "from_scratch" in options:  # a Hugging Face encoder: its architecture from RUN/encoder/config.json
        from .models.bert import ENCODER_DIR

        options.update(pretrained=str(run.path / ENCODER_DIR), from_scratch=True)
    model = create_model(cfg.model["name"], tuple(meta["in_shape"]), meta["num_outputs"], *vocab, **options)
    tensors = load_weights(run.weights)
    load_state(model, {k.removeprefix("model."): v for k, v in tensors.items()}, str(run.weights))
    model.eval()
    n = meta["normalizer"]
    tokenizer = None
    if meta.get("kind") == "text" and cfg.data.tokenizer == "pretrained":
        tokenizer = PretrainedTokenizer.load(run.path)
    elif meta.get("kind") == "text":
        f = run.path / TOKENIZER_FILE
        tokenizer = Tokenizer.from_dict(run.read_json(f), str(f))
    return LoadedRun(run.path, cfg, meta, model, Normalizer(n["mean"], n["std"], n["kind"]), tokenizer)


def load_task(run_dir: Path | str):
    """A finished run's task, rebuilt from its config, with the saved weights in every module
    (evaluation mode)."""
    run = RunDir.open(run_dir)
    cfg = RunConfig.from_dict(read_toml(run.config), where=str(run.config))
    task = TASKS.get(cfg.task)(cfg, Runtime(device="cpu", seed=cfg.train.seed, threads=cfg.train.threads))
    tensors = load_weights(run.weights)
    for name, module in task.modules().items():
        own = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        load_state(module, own, str(run.weights))
    task.train(False)
    return task


def evaluate_run(run_dir: Path | str, episodes: int | None = None) -> dict:
    """Re-evaluate a finished run's saved weights on its data's validation and test splits; a
    reinforcement-learning run plays `episodes` greedy episodes (default: its env.eval_episodes)."""
    run = RunDir.open(run_dir)
    if run.read_json(run.meta).get("kind") == "env":
        if episodes is not None and episodes < 1:
            raise UserError(f"--episodes {episodes} must be at least 1.")
        return load_task(run_dir).evaluate("test", episodes=episodes)
    if episodes is not None:
        raise UserError("--episodes applies to reinforcement-learning runs (tasks dqn and ppo) only.")
    loaded = load_run(run_dir)
    runtime = Runtime(device="cpu", seed=loaded.cfg.train.seed)
    task = TASKS.get(loaded.cfg.task)(loaded.cfg, runtime)
    load_state(task.modules()["model"], loaded.model.state_dict(), str(loaded.path))
    task.train(False)
    return {**task.evaluate("val"), **task.evaluate("test")}
