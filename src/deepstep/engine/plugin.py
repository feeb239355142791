"""Plug-ins: the optional concerns of a run (the evolution of `callbacks.Callback`).

A plug-in observes a run over a closed set of events and never changes batches or losses; it may
request a stop (`on_epoch_end` returns True), write files into the run directory and add keys to
the summary (`on_finish`). Plug-ins are registered like models (`registry.PLUGINS`, listed by
`deepstep list plugins`), chosen in a recipe (`[plugins] use = ["csv-log"]`) or with
`deepstep train ... --with NAME`, and a run's default ones are tagged "default".

Events, in order, each receiving the live `Run` (engine/run.py) first:

    on_start(run)                   the task is built; a resumed run has its state loaded
    on_epoch_start(run, epoch)      epoch is 0-based
    on_batch_end(run, step)         after every optimizer step (keep it cheap: no host sync)
    on_log(run, record)             every logged record: step records {"step", "train/loss", ...}
                                    every train.log_every steps, and the epoch record
    on_epoch_end(run, logs) -> bool the epoch record (validation included); True requests a stop
    on_train_end(run, logs)         training is over, before the final evaluation: best weights
                                    restores the best epoch here and adds best_epoch to `logs`
    on_finish(run, summary)         after the final evaluation and the weights file: write
                                    files, add summary keys (baselines); `[expect]` is checked
                                    after every plug-in's on_finish, so targets may name their keys

`state_dict()` / `load_state_dict()` go into every checkpoint, so resume stays exact. `order`
sorts plug-ins (lower first) at every event: best weights (order -100) restores the best epoch
before anything that reads the model at the end (plots, reports, exports). Plug-ins that write
files run on rank 0 only: `rank0_only = True` (the default) keeps them off the other ranks of a
torchrun job; plug-ins that take part in a decision every rank must share (best weights, early
stopping) set it to False.

A plug-in in one new file, with no edit anywhere else (e.g. `plugins/csv_log.py`):

    @PLUGINS.register("csv-log")
    class CSVLog(Plugin):
        '''Writes every epoch record to RUN/metrics.csv as well.'''
        def on_epoch_end(self, run, logs):
            ...
            return False
"""

from __future__ import annotations

from typing import Any, ClassVar


class Plugin:
    """One optional concern of a run. No hook may change batches or losses."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 0
    rank0_only: ClassVar[bool] = True

    def applies_to(self, run: Any) -> bool:
        """Whether this plug-in has anything to do for `run` (its task, data, config)."""
        return True

    def on_start(self, run: Any) -> None: ...
    def on_epoch_start(self, run: Any, epoch: int) -> None: ...
    def on_batch_end(self, run: Any, step: int) -> None: ...
    def on_log(self, run: Any, record: dict) -> None: ...

    def on_epoch_end(self, run: Any, logs: dict) -> bool:
        return False

    def on_train_end(self, run: Any, logs: dict) -> None: ...
    def on_finish(self, run: Any, summary: dict) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class KerasCallback(Plugin):
    """Adapts a plain Keras-style object (any of `on_train_begin(logs)`, `on_epoch_begin(epoch)`,
    `on_epoch_end(epoch, logs)`, `on_train_end(logs)`) to a plug-in. Its `on_epoch_end` may return
    True, or set `.stop_training = True` (Keras's switch), to stop the run."""

    rank0_only = False

    def __init__(self, obj: Any):
        self.obj = obj
        self.name = type(obj).__name__

    def _call(self, hook: str, *args) -> Any:
        fn = getattr(self.obj, hook, None)
        return fn(*args) if callable(fn) else None

    def on_start(self, run: Any) -> None:
        self._call("on_train_begin", {})

    def on_epoch_start(self, run: Any, epoch: int) -> None:
        self._call("on_epoch_begin", epoch)

    def on_epoch_end(self, run: Any, logs: dict) -> bool:
        stop = self._call("on_epoch_end", logs["epoch"] - 1, dict(logs))
        return bool(stop) or bool(getattr(self.obj, "stop_training", False))

    def on_finish(self, run: Any, summary: dict) -> None:
        self._call("on_train_end", dict(summary))


def as_plugin(obj: Any) -> Plugin:
    """A Plugin as it is; a Keras-style callback object wrapped in `KerasCallback`."""
    if isinstance(obj, Plugin):
        return obj
    hooks = ("on_train_begin", "on_epoch_begin", "on_epoch_end", "on_train_end")
    if any(callable(getattr(obj, h, None)) for h in hooks):
        return KerasCallback(obj)
    raise TypeError(f"{obj!r} is neither a deepstep Plugin nor a Keras-style callback "
                    f"(an object with any of {', '.join(hooks)}).")
