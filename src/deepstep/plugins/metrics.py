"""The first logger: every record into RUN/metrics.jsonl."""

from __future__ import annotations

import json

from ..engine.plugin import Plugin
from ..engine.rundir import append_line
from ..registry import PLUGINS


@PLUGINS.register("metrics", tags=("default",))
class MetricsLog(Plugin):
    """Writes every step and epoch record to RUN/metrics.jsonl, one JSON object per line.

    Its state is the number of lines the last checkpoint covers: a resumed run first drops the
    lines written after it, so the file matches an uninterrupted run."""

    name = "metrics"
    order = -50

    def __init__(self):
        self.lines: int | None = None

    def applies_to(self, run) -> bool:
        return run.dir is not None

    def on_start(self, run) -> None:
        if self.lines is None:  # a new run, or one killed before its first checkpoint: start over
            self.lines = 0
        run.dir.truncate_metrics(self.lines)
        self.path = run.dir.metrics

    def on_log(self, run, record: dict) -> None:
        append_line(self.path, json.dumps(record))  # never through a symbolic link
        self.lines += 1

    def state_dict(self) -> dict:
        return {"lines": self.lines or 0}

    def load_state_dict(self, state: dict) -> None:
        self.lines = state["lines"]
