"""Best weights and early stopping."""

from __future__ import annotations

import copy
import math
import sys

from ..engine.logs import monitor_mode
from ..engine.plugin import Plugin
from ..errors import UserError
from ..registry import PLUGINS


@PLUGINS.register("best-weights", tags=("default",))
class BestWeights(Plugin):
    """Tracks the best epoch of train.monitor, stops after train.early_stop epochs without improvement and restores the best weights at the end (train.restore_best).

    Args (default: the run's train.monitor, train.early_stop and train.restore_best):
        monitor: metric key, e.g. 'val/acc'.
        patience: epochs without improvement before stopping (0: never).
        restore: load the best weights at the end, even when training ran to the end.
    """

    name = "best-weights"
    order = -100  # restores the best epoch before anything reads the model at the end
    rank0_only = False  # every rank takes the same stop decision and restores the same weights

    def __init__(self, monitor: str | None = None, patience: int | None = None, restore: bool | None = None):
        self.monitor, self.patience, self.restore = monitor, patience, restore
        self.best: float | None = None
        self.best_epoch = 0
        self.wait = 0
        self.best_state: dict | None = None

    def applies_to(self, run) -> bool:
        return bool(getattr(run.task, "has_val", False))

    def on_start(self, run) -> None:
        t = run.cfg.train
        self.monitor = self.monitor or t.monitor
        self.patience = t.early_stop if self.patience is None else self.patience
        self.restore = t.restore_best if self.restore is None else self.restore
        self.mode = monitor_mode(self.monitor)
        if self.best is None:
            self.best = math.inf if self.mode == "min" else -math.inf
        self.modules = run.task.modules()

    def _better(self, value: float) -> bool:
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, run, logs: dict) -> bool:
        value = logs.get(self.monitor)
        if value is None and not getattr(self, "_warned", False):
            self._missing(logs)
        if value is None or not math.isfinite(value):
            return False
        if self._better(value):
            self.best, self.best_epoch, self.wait = value, logs["epoch"], 0
            if self.restore:
                self.best_state = {n: copy.deepcopy(m.state_dict()) for n, m in self.modules.items()}
        else:
            self.wait += 1
        return bool(self.patience) and self.wait >= self.patience

    def _missing(self, logs: dict) -> None:
        """The monitored metric is not in an epoch record: a typo (other metrics of its split are
        logged) is an error; a split that logs nothing this run (e.g. gen.eval_samples = 0) a warning."""
        self._warned = True
        split = self.monitor.split("/")[0] + "/"
        logged = sorted(k for k in logs if k.startswith(("val/", "train/")))
        msg = (f"train.monitor = '{self.monitor}' is not a metric this run logs, so best weights and early "
               f"stopping cannot follow it. Its epoch records hold: {', '.join(logged) or '(no metrics)'}.")
        if any(k.startswith(split) for k in logged):
            raise UserError(msg + " Set train.monitor to one of them.")
        print(f"warning: {msg} Best weights and early stopping are off.", file=sys.stderr)

    def on_train_end(self, run, logs: dict) -> None:
        if self.restore and self.best_state is not None:
            for name, module in self.modules.items():
                module.load_state_dict(self.best_state[name])
            logs["best_epoch"] = self.best_epoch
            logs[f"best/{self.monitor}"] = self.best

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "best_state": self.best_state or {}}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.best_state = state["best_state"] or None
