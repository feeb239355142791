"""Optional concerns over a closed set of events. A callback reads `logs` and may request a
stop; it never rewrites batches or losses (core behaviour lives in the task and the loop).

Events: on_train_begin(loop), on_epoch_begin(epoch), on_batch_end(step), on_epoch_end(epoch, logs)
-> bool (True requests a stop), on_train_end(logs).
"""

from __future__ import annotations

import copy
import math
import sys
import time

import torch


class Callback:
    def on_train_begin(self, loop) -> None: ...
    def on_epoch_begin(self, epoch: int) -> None: ...
    def on_batch_end(self, step: int) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict) -> bool:
        return False
    def on_train_end(self, logs: dict) -> None: ...
    def state_dict(self) -> dict:
        return {}
    def load_state_dict(self, state: dict) -> None: ...


def monitor_mode(metric: str) -> str:
    """'min' for losses and errors, 'max' for scores."""
    name = metric.split("/")[-1]
    return "min" if any(w in name for w in ("loss", "rmse", "mae", "mse", "error", "nll", "elbo", "frechet")) else "max"


class BestWeights(Callback):
    """Track the best monitored epoch; stop after `patience` epochs without improvement
    (0: never stop) and, if `restore`, end with the best weights even when training ran to the end.

    Args:
        modules: name -> module whose weights are kept.
        monitor: metric key, e.g. 'val/acc'.
        patience: epochs without improvement before stopping (0: never).
        restore: load the best weights at the end.
    """

    def __init__(self, modules: dict[str, torch.nn.Module], monitor: str, patience: int = 0, restore: bool = True):
        self.modules, self.monitor, self.patience, self.restore = modules, monitor, patience, restore
        self.mode = monitor_mode(monitor)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.best_state: dict | None = None

    def _better(self, value: float) -> bool:
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch: int, logs: dict) -> bool:
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(value):
            return False
        if self._better(value):
            self.best, self.best_epoch, self.wait = value, epoch + 1, 0
            if self.restore:
                self.best_state = {n: copy.deepcopy(m.state_dict()) for n, m in self.modules.items()}
        else:
            self.wait += 1
        return bool(self.patience) and self.wait >= self.patience

    def on_train_end(self, logs: dict) -> None:
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


def format_logs(logs: dict, keys=None) -> str:
    parts = []
    for k, v in logs.items():
        if keys is not None and k not in keys:
            continue
        if isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
    return "  ".join(parts)


class Progress(Callback):
    """A rich progress bar on a terminal; plain lines (one per epoch) when output is a file or pipe."""

    def __init__(self, epochs: int, steps_per_epoch: int, verbose: int = 1, stream=None):
        self.epochs, self.steps, self.verbose = epochs, steps_per_epoch, verbose
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() and verbose > 0
        self.bar = None

    def on_train_begin(self, loop) -> None:
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                           TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.steps, epoch="", info="")

    def on_epoch_begin(self, epoch: int) -> None:
        self.t0 = time.perf_counter()
        if self.bar is not None:
            self.bar.reset(self.task, total=self.steps)
            self.bar.update(self.task, epoch=f"{epoch + 1}/{self.epochs}")

    def on_batch_end(self, step: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def on_epoch_end(self, epoch: int, logs: dict) -> bool:
        line = f"epoch {epoch + 1}/{self.epochs}  {format_logs(logs)}  ({time.perf_counter() - self.t0:.1f}s)"
        if self.bar is not None:
            self.bar.update(self.task, info=format_logs(logs, [k for k in logs if k.startswith("val/")]))
            self.bar.console.print(line)
        elif self.verbose and ((epoch + 1) % max(1, self.epochs // 20) == 0 or epoch == 0 or logs.get("final")):
            print(line, file=self.stream, flush=True)  # at most ~20 plain lines per run
        return False

    def on_train_end(self, logs: dict) -> None:
        if self.bar is not None:
            self.bar.stop()
