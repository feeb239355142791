"""The `[forecast]` section of the forecast task, registered with it (config.register_section)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import opt, register_section
from ..errors import UserError


@dataclass
class ForecastConfig:
    window: int = opt(24, "forecast: past time steps the model reads")
    horizon: int = opt(1, "forecast: future time steps predicted from each window")
    stride: int = opt(1, "forecast: step between training windows (validation/test windows use every step)")
    test_size: int = opt(0, "forecast: final time steps held out for testing (0: data.test_split of the series)")
    val_size: int = opt(0, "forecast: time steps before the test part for validation (0: data.val_split of the series)")
    columns: list[str] = opt([], "forecast: input columns of a series table (empty: every numeric column but the date)")
    target: list[str] = opt([], "forecast: columns to predict (empty: all input columns)")
    date_column: str = opt("", "forecast: time column of a series table, for labels (empty: found by name)")
    arima_order: list[int] = opt([2, 0, 1], "forecast: (p, d, q) of the ARIMA baseline fitted on the training part")

    def __post_init__(self):
        for name in ("window", "horizon", "stride"):
            if getattr(self, name) < 1:
                raise UserError(f"forecast.{name} = {getattr(self, name)} must be at least 1.")
        for name in ("test_size", "val_size"):
            if getattr(self, name) < 0:
                raise UserError(f"forecast.{name} = {getattr(self, name)} must be 0 (use the data.*_split fraction) or more.")
        if len(self.arima_order) != 3 or min(self.arima_order) < 0:
            raise UserError(f"forecast.arima_order = {self.arima_order} must be three non-negative integers (p, d, q), "
                            f"e.g. [2, 0, 1].")


register_section("forecast", ForecastConfig, tasks=("forecast",))
