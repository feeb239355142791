"""What a user watches while a run trains."""

from __future__ import annotations

import sys
import time

from ..engine.logs import format_logs
from ..engine.plugin import Plugin
from ..registry import PLUGINS


@PLUGINS.register("progress", tags=("default",))
class Progress(Plugin):
    """Shows a rich progress bar on a terminal, and plain lines (at most about 20 per run) when output goes to a file or pipe."""

    name = "progress"
    order = 50

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.bar = None

    def applies_to(self, run) -> bool:
        return run.verbose > 0

    def on_start(self, run) -> None:
        self.epochs, self.steps = run.cfg.train.epochs, run.task.steps_per_epoch
        params = [p for m in run.task.modules().values() for p in m.parameters()]
        total = sum(p.numel() for p in {id(p): p for p in params}.values())
        trainable = sum(p.numel() for p in {id(p): p for p in params if p.requires_grad}.values())
        frozen = f", {trainable:,} trainable" if trainable != total else ""
        print(f"{run.cfg.recipe or run.cfg.task}: model '{run.cfg.model['name']}' with {total:,} parameters{frozen}, "
              f"{self.epochs} epochs of {self.steps} steps on {run.runtime.describe()}", file=self.stream, flush=True)
        if self.stream.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                           TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False)
            self.bar.start()
            self.bar_task = self.bar.add_task("train", total=self.steps, epoch="", info="")

    def on_epoch_start(self, run, epoch: int) -> None:
        self.t0 = time.perf_counter()
        if self.bar is not None:
            self.bar.reset(self.bar_task, total=self.steps)
            self.bar.update(self.bar_task, epoch=f"{epoch + 1}/{self.epochs}")

    def on_batch_end(self, run, step: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.bar_task)

    def on_epoch_end(self, run, logs: dict) -> bool:
        epoch = logs["epoch"]
        line = f"epoch {epoch}/{self.epochs}  {format_logs(logs)}  ({time.perf_counter() - self.t0:.1f}s)"
        if self.bar is not None:
            self.bar.update(self.bar_task, info=format_logs(logs, [k for k in logs if k.startswith("val/")]))
            self.bar.console.print(line)
        elif epoch % max(1, self.epochs // 20) == 0 or epoch == 1:
            print(line, file=self.stream, flush=True)
        return False

    def on_train_end(self, run, logs: dict) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
