"""`Run`: one handle on a run, the same object live (returned by `engine.fit.fit`, passed to every
plug-in hook) and reopened from its directory (`Run.open(path)`).

It replaces the three loaders of earlier versions (`load_run`, `load_task`, `evaluate_run`):

    run = Run.open("runs/digits-mlp-...")
    run.cfg, run.meta, run.summary, run.metrics()      what the directory holds
    run.model()                                        the trained model, evaluation mode
    run.preprocess(raw) / run.predict(raw)             raw inputs -> model inputs / outputs
    run.rebuild()                                      the task (data and all) with the saved weights
    run.evaluate()                                     its validation and test metrics again

What a prediction needs besides the weights (normalization, tokenizer, a pretrained encoder's
config) is the task's knowledge: `run.inference()` asks the registered task class
(`TASKS.get(cfg.task).inference(run)`), which may ask the model (`models.layers.reload_options`).
Nothing here knows a data set or a model family, so the engine stays below tasks and models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RunConfig, read_toml
from ..errors import UserError
from ..registry import PLUGINS, TASKS
from .checkpoint import load_state, load_weights
from .rundir import RunDir, quoted
from .runtime import Runtime, evaluating, unwrap


@dataclass
class RunMeta:
    """What meta.json holds: what predictions need besides the weights. Task-specific entries
    (forecast windows, an environment's spaces) are in `extra`; `meta["key"]` reads either."""

    task: str
    kind: str = ""  # image, table, series, text, env
    in_shape: list[int] = field(default_factory=list)
    num_outputs: int = 0
    classes: list[str] = field(default_factory=list)
    loss: str = ""
    normalizer: dict = field(default_factory=dict)
    source: str = ""
    sizes: dict = field(default_factory=dict)
    vocab_size: int | None = None
    model: dict = field(default_factory=dict)
    precision: str = "fp32"  # as training resolved train.precision: evaluation and predict run the same way
    channels_last: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> RunMeta:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in known},
                   extra={k: v for k, v in d.items() if k not in known})

    @classmethod
    def read(cls, d: RunDir, task: str) -> RunMeta:
        """meta.json of a run directory, checked: a file whose keys or types are not what training
        wrote (damaged or edited) is a UserError naming the key, never a KeyError later."""
        raw = d.read_json(d.meta)
        where = f"'{d.meta}'"

        def need(key, ok, expected):
            if key not in raw:
                raise UserError(f"{where} lacks '{key}' ({expected}): the run directory was damaged or edited. "
                                "meta.json is written when training starts; train the run again.")
            if not ok(raw[key]):
                raise UserError(f"{where}: '{key}' = {str(raw[key])[:60]!r} is not {expected}: the run directory "
                                "was damaged or edited; train the run again.")

        def ints(v, lo):
            return isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= lo for i in v)

        need("task", lambda v: v == task, f"this run's task '{task}'")
        need("kind", lambda v: isinstance(v, str), "the kind of data, e.g. 'image'")
        if raw["kind"] == "env":
            need("obs_shape", lambda v: ints(v, 1) and v, "the observation shape, a list of positive integers")
            need("num_actions", lambda v: isinstance(v, int) and v >= 1, "the number of actions")
        else:
            need("in_shape", lambda v: ints(v, 1) and v, "the input shape, a list of positive integers")
            need("num_outputs", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                 "the number of outputs, a positive integer")
            need("classes", lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of class names")
            need("loss", lambda v: isinstance(v, str), "the loss name")
            if raw["kind"] != "text":
                need("normalizer", lambda v: isinstance(v, dict) and {"mean", "std", "kind"} <= set(v)
                     and all(isinstance(v[k], (list, int, float)) for k in ("mean", "std")),
                     "the normalization statistics (mean, std, kind)")
        return cls.from_dict(raw)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if self.vocab_size is None:
            del out["vocab_size"]
        return {**out, **self.extra}

    def __getitem__(self, key: str) -> Any:
        if key in self.extra:
            return self.extra[key]
        if key in {f.name for f in fields(self)} - {"extra"}:
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None


@dataclass
class Inference:
    """What predictions need: the model (evaluation mode), raw input -> model input, and model
    output -> the run's natural output (class probabilities, values, actions)."""

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    postprocess: Callable[[torch.Tensor], np.ndarray]
    normalizer: Any = None  # numeric inputs: the run's data.Normalizer
    tokenizer: Any = None  # text runs: the tokenizer saved with the run
    precision: str = "fp32"  # the run's: predictions take the path of its evaluation
    channels_last: bool = False
    tta: str = ""  # "flip": the mean output of the image and its mirror image (train.tta)

    def _forward(self, x: torch.Tensor, dev: torch.device) -> torch.Tensor:
        x = x.to(dev)
        if self.channels_last and x.ndim == 4 and x.is_floating_point():
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model(x).float()
            if self.tta == "flip":
                out = (out + self.model(x.flip(-1)).float()) / 2
            return out.cpu()

    def predict(self, raw: Any, batch_size: int = 1024) -> np.ndarray:
        x = self.preprocess(raw)
        dev = next(iter(self.model.parameters()), torch.zeros(())).device
        with torch.inference_mode(), evaluating(self.model):
            out = torch.cat([self._forward(x[i:i + batch_size], dev)
                             for i in range(0, len(x), batch_size)]) if len(x) else self._forward(x, dev)
        return self.postprocess(out)


class Run:
    """One run: its config, meta, summary and metrics, its model and how to predict with it.

    Live (inside `fit`): `task`, `runtime`, `loop` and `plugins` are set, `summary` is filled at
    the end. Reopened (`Run.open`): built from the directory alone; `task` is None until
    `rebuild()`.

    Example:
        >>> import tempfile
        >>> from deepstep.config import load_config
        >>> from deepstep.engine.fit import fit
        >>> import numpy as np
        >>> with tempfile.TemporaryDirectory() as d:
        ...     live = fit(load_config("digits-mlp", ["train.epochs=2"]), run_dir=f"{d}/run", verbose=0)
        ...     again = Run.open(f"{d}/run")
        ...     p = again.predict(np.zeros((3, *again.meta.in_shape), np.float32))
        >>> again.summary["test/acc"] == live.summary["test/acc"], p.shape
        (True, (3, 10))
    """

    def __init__(self, cfg: RunConfig, dir: RunDir | None = None, *, task=None, runtime: Runtime | None = None,
                 meta: RunMeta | None = None, summary: dict | None = None, verbose: int = 0):
        self.cfg, self.dir, self.task, self.runtime = cfg, dir, task, runtime
        self.meta = meta
        self.summary: dict = summary or {}
        self.verbose = verbose
        self.loop = None
        self.plugins: list = []
        self._inference: Inference | None = None

    # --- what the directory holds -------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str) -> Run:
        """A run directory, finished or not (meta.json and summary.json are read when present)."""
        d = RunDir.open(path)
        # not strict: a config.toml of an earlier version holds every task's sections
        cfg = RunConfig.from_dict(read_toml(d.config), where=str(d.config), strict=False)
        meta = RunMeta.read(d, cfg.task) if d.meta.is_file() else None
        summary = d.read_json(d.summary) if d.summary.is_file() else {}
        if summary and meta is None:
            raise UserError(f"'{d.meta}' is missing, though the run finished (summary.json exists): the run "
                            "directory is incomplete or was edited. meta.json is written when training starts; "
                            "train the run again.")
        return cls(cfg, d, meta=meta, summary=summary)

    @property
    def path(self) -> Path | None:
        return self.dir.path if self.dir is not None else None

    run_dir = path  # the name earlier versions' results used

    def __getitem__(self, key: str) -> Any:
        """`run["test/acc"]`: a summary value."""
        return self.summary[key]

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0 under torchrun)."""
        return self.runtime is None or self.runtime.is_main

    def metrics(self) -> list[dict]:
        """Every logged record (step and epoch records) in order."""
        if self.dir is not None and self.dir.metrics.exists():
            return self.dir.read_metrics()
        return list(self.loop.history) if self.loop is not None else []

    def _need_finished(self, what: str) -> None:
        if self.task is None and (self.dir is None or not self.dir.weights.is_file()):
            raise UserError(f"'{self.path}' has no trained weights (model.safetensors) yet: {what} needs a "
                            f"finished run (resume it with `deepstep resume {quoted(self.path)}`).")
        if self.meta is None:
            raise UserError(f"'{self.path}' has no meta.json: the run directory is incomplete or was edited "
                            "(meta.json is written when training starts).")

    # --- the model and predictions --------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        """The saved weights: '<module>.<parameter>' -> tensor (safetensors; nothing unpickled)."""
        self._need_finished("reading the weights")
        return load_weights(self.dir.weights)

    def module_weights(self, name: str) -> dict[str, torch.Tensor]:
        """The saved weights of one of the task's modules ('model', 'policy', 'q', ...)."""
        return {k[len(name) + 1:]: v for k, v in self.weights().items() if k.startswith(name + ".")}

    def inference(self) -> Inference:
        """What predictions need, from the task class that trained this run (cached)."""
        if self._inference is None:
            self._need_finished("predicting")
            with torch.random.fork_rng(devices=[]):  # building the model draws weights: not from the caller's generator
                inf = TASKS.get(self.cfg.task).inference(self)
            inf.precision, inf.channels_last = self.meta.precision, bool(self.meta.channels_last)
            self._inference = inf
        return self._inference

    def model(self) -> torch.nn.Module:
        """The trained model: the live task's (unwrapped), or rebuilt from the directory, in
        evaluation mode."""
        if self.task is not None:
            return unwrap(next(iter(self.task.modules().values())))
        return self.inference().model

    def preprocess(self, raw: Any) -> torch.Tensor:
        """Raw inputs (arrays as the data set loads them, strings for text runs) -> model inputs,
        with exactly the run's normalization or tokenizer."""
        return self.inference().preprocess(raw)

    def predict(self, raw: Any) -> np.ndarray:
        """Raw inputs -> outputs: class probabilities for classifiers, values for regression and
        forecasting, greedy actions for RL policies."""
        return self.inference().predict(raw)

    # --- the task again ---------------------------------------------------------------------------
    def rebuild(self, device: str = "cpu"):
        """The task rebuilt from the config (its data loaded again) with the saved weights in every
        module, in evaluation mode."""
        if self.task is not None:
            return self.task
        self._need_finished("rebuilding the task")
        cfg = self.cfg
        rt = Runtime(device=device, seed=cfg.train.seed, threads=cfg.train.threads, precision=self.meta.precision,
                     channels_last=bool(self.meta.channels_last))
        task = TASKS.get(cfg.task)(TASKS.get(cfg.task).prepare(cfg, True, 0), rt)
        tensors = self.weights()
        for name, module in task.modules().items():
            own = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            load_state(unwrap(module), own, str(self.dir.weights))
        task.train(False)
        return task

    def evaluate(self, episodes: int | None = None) -> dict:
        """The saved weights measured again on the validation and test splits; a task that plays
        an environment (tag "play") plays `episodes` greedy episodes (default env.eval_episodes)."""
        plays = TASKS.has(self.cfg.task, "play")
        if episodes is not None and not plays:
            raise UserError("--episodes applies to reinforcement-learning runs (tasks dqn and ppo) only.")
        if episodes is not None and episodes < 1:
            raise UserError(f"--episodes {episodes} must be at least 1.")
        task = self.rebuild()
        if plays:
            return task.evaluate("test", episodes=episodes)
        return {**task.evaluate("val"), **task.evaluate("test")}

    # --- how a run shows itself -------------------------------------------------------------------
    def result_lines(self) -> list[str]:
        """The final result as `deepstep train` prints it: the run directory, the test metrics
        (and baselines), each target met or not, epochs and time."""
        s = self.summary
        if not s:
            return [repr(self)]
        keys = [k for k in s if k.startswith(("test/", "baseline/", "samples/", "eval/"))
                and isinstance(s[k], (int, float)) and not isinstance(s[k], bool)]
        lines = [f"run directory: {self.path}" if self.path else "in memory (no run directory)",
                 "  " + "  ".join(f"{k} {s[k]:.4f}" for k in keys)]
        for key, e in (s.get("expect") or {}).items():
            bar = f" ({e['target_value']:.4g})" if e.get("target_value") is not None else ""
            lines.append(f"  target {key} {e['target']}{bar}: {'met' if e['met'] else 'NOT met'}")
        if "train_seconds" in s:
            lines.append(f"  {s['epochs']} epochs, {s['train_seconds']:.1f} s training, "
                         f"{s['samples_per_second']:.0f} samples/s on {s['device']}")
        return lines

    def _repr_html_(self) -> str:
        """Jupyter's view of a finished run: a compact summary with the report's key pictures.
        The registry's "report" plug-in draws it (the engine imports no plug-in); a run without a
        directory, or one the report cannot read, shows its result lines."""
        import html

        if self.path is not None and self.summary and PLUGINS.has("report", "default"):
            try:
                return PLUGINS.get("report").run_html(self)
            except Exception as e:  # noqa: BLE001 - a display must not raise in a notebook
                return (f"<pre>{html.escape(chr(10).join(self.result_lines()))}</pre>"
                        f"<p>(no summary picture: {html.escape(f'{type(e).__name__}: {e}')})</p>")
        return f"<pre>{html.escape(chr(10).join(self.result_lines()))}</pre>"

    def __repr__(self) -> str:
        state = "finished" if self.summary else "live" if self.task is not None else "unfinished"
        return f"Run({str(self.path) if self.path else 'in memory'!r}, {self.cfg.recipe or self.cfg.task}, {state})"
