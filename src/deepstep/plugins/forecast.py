"""Forecasting baselines on exactly the model's test windows, and the forecast picture."""

from __future__ import annotations

from pathlib import Path

from ..engine.plugin import Plugin
from ..registry import PLUGINS
from ..tasks.forecast import (
    Forecast,
    arima_forecasts,
    errors,
    persistence,
    plot_forecasts,
    write_forecasts,
)


def forecast_baselines(task: Forecast, run_path: Path | None = None) -> dict:
    """baseline/persistence_* and baseline/arima_* on the test windows of `task`; with a run
    directory, also RUN/forecast.csv and RUN/forecast.png."""
    test, fc = task.windows["test"], task.cfg.forecast
    pred = task.forecasts("test")
    pers = persistence(test.x, task.sel.target, fc.horizon)
    out = errors(pers, test.y, "baseline", "persistence_")
    arima = arima_forecasts(task.sel.values, task.sel.target, task.val_start, test.origins, fc.horizon,
                            fc.arima_order)
    if arima is not None:
        out.update(errors(arima, test.y, "baseline", "arima_"))
    if run_path is not None:
        write_forecasts(Path(run_path) / "forecast.csv", task, pred, pers, arima)
        plot_forecasts(Path(run_path) / "forecast.png", task, pred, pers, arima, out)
    return out


@PLUGINS.register("forecast-baselines", tags=("default",))
class ForecastBaselines(Plugin):
    """Scores the persistence and ARIMA baselines on the model's test windows and draws forecast.png and forecast.csv."""

    name = "forecast-baselines"
    rank0_only = False  # the summary of every rank gets the baseline keys; only rank 0 writes files

    def applies_to(self, run) -> bool:
        return isinstance(run.task, Forecast)

    def on_finish(self, run, summary: dict) -> None:
        summary.update(forecast_baselines(run.task, run.path if run.is_main else None))
