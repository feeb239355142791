"""An example of a plug-in in one file: the epoch records as a CSV table too."""

from __future__ import annotations

import csv

from ..engine.plugin import Plugin
from ..registry import PLUGINS


@PLUGINS.register("csv-log")
class CSVLog(Plugin):
    """Writes the epoch records to RUN/metrics.csv, one row per epoch, for a spreadsheet.

    Choose it with `deepstep train RECIPE --with csv-log` or `[plugins] use = ["csv-log"]`. The
    table is rewritten from the epoch records at every epoch, so a resumed run's file matches an
    uninterrupted one's."""

    name = "csv-log"

    def __init__(self):
        self.rows: list[dict] = []

    def applies_to(self, run) -> bool:
        return run.dir is not None

    def on_epoch_end(self, run, logs: dict) -> bool:
        self.rows.append({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        with open(run.dir.path / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, columns)
            w.writeheader()
            w.writerows(self.rows)
        return False

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])
