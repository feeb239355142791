"""The tuning pruner: a trial of `deepstep tune` reports its validation metric to Optuna after every
epoch and stops when Optuna's pruner says the trial is hopeless (median pruning, tune.py).

It observes only: it reads the epoch record's validation metric (never a test metric) and asks for
a stop through `on_epoch_end`. Its state (the epoch it was pruned at) goes into the checkpoint, so a
trial killed after being pruned resumes as pruned, and into the summary as `tune/pruned_at`."""

from __future__ import annotations

import math

from ..engine.plugin import Plugin
from ..registry import PLUGINS


@PLUGINS.register("tune-pruner")
class TunePruner(Plugin):
    """Reports the validation metric to an Optuna trial each epoch and stops the run when the trial is pruned (used by `deepstep tune`; does nothing without a trial).

    Args:
        trial: an `optuna.trial.Trial` (anything with `report(value, step)` and `should_prune()`).
        monitor: the validation metric reported, e.g. 'val/acc' (default: the run's train.monitor).
    """

    name = "tune-pruner"

    def __init__(self, trial=None, monitor: str | None = None):
        self.trial, self.monitor = trial, monitor
        self.pruned_at = 0  # the epoch after which the trial was pruned (0: not pruned)
        self.reported: list[float] = []

    def applies_to(self, run) -> bool:
        return self.trial is not None

    def on_start(self, run) -> None:
        self.monitor = self.monitor or run.cfg.train.monitor

    def on_epoch_end(self, run, logs: dict) -> bool:
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(value):
            return False
        self.trial.report(float(value), logs["epoch"])
        self.reported.append(float(value))
        if self.trial.should_prune():
            self.pruned_at = logs["epoch"]
            return True
        return False

    def on_finish(self, run, summary: dict) -> None:
        summary["tune/pruned_at"] = self.pruned_at

    def state_dict(self) -> dict:
        return {"pruned_at": self.pruned_at, "reported": self.reported}

    def load_state_dict(self, state: dict) -> None:
        self.pruned_at = state["pruned_at"]
        self.reported = list(state.get("reported", []))
