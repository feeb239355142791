"""Time series for forecasting: loaders that return a `Series` (time-ordered columns), the
selection of value/target/date columns, and sliding windows over a chronological split.

Why a separate form from `Arrays`: a forecasting data set is one long series, not a set of
independent examples; the task cuts it into windows only after choosing the split, so that no
window whose targets lie in the validation or test period can reach training.

The split (all in time steps of the series, T in all):

    [0 ........ val_start) [val_start .. test_start) [test_start .. T)
          training part          validation              test

- A training window's inputs *and* targets lie in the training part; a validation window's
  targets lie in the validation part and a test window's in the test part (their inputs may reach
  back into earlier parts: that is the history a forecaster is allowed to see). Windows whose
  targets straddle a boundary are dropped.
- The scaler (per-column mean and standard deviation) is fitted on the training part only.
- Training windows start every `stride` steps counted back from the last one; validation and
  test windows start at every step, so every test point is forecast.

Files: a CSV table (header optional; rows in time order; a date column is optional and used for
labels only) or a .npy array of shape (T,) or (T, C). Empty or non-numeric cells in a value
column are errors naming the line; nothing is interpolated silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..registry import DATASETS
from .arrays import Normalizer
from .io import load_npy, read_csv_rows

SERIES_EXPECTED = ("a CSV file with one column per series (header optional; rows in time order; "
                   "an optional date column) or a .npy array of shape (T,) or (T, C)")
DATE_NAMES = ("date", "time", "year", "month", "week", "day", "timestamp", "datetime", "ds", "period")


@dataclass
class Series:
    """Time-ordered columns as series loaders return them (T rows, one per time step).

    columns: name -> float64 values or raw CSV strings, all of length T.
    values / date: the built-in choice of value columns and date column ([] / '': decide by rule).
    """

    columns: dict[str, np.ndarray]
    source: str
    values: list[str] = field(default_factory=list)
    date: str = ""
    lines: list[int] = field(default_factory=list)  # CSV line of each row, for messages
    task = "forecast"  # the task these data sets are for (Supervised names it when misused)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))


@dataclass
class Selected:
    """The columns a forecasting run uses: values (T, C), target indices into them, time labels."""

    values: np.ndarray
    names: list[str]
    target: list[int]
    labels: list[str]
    date_column: str


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _is_numeric(col: np.ndarray) -> bool:
    """Numbers in every non-empty cell (an empty cell is reported later, with its line)."""
    if col.dtype.kind in "biuf":
        return True
    cells = [c for c in col if c.strip()]
    return bool(cells) and all(_number(c) for c in cells)


def select(series: Series, columns: list[str], target: list[str], date_column: str) -> Selected:
    """Choose the date column, the value columns (as float64) and the target columns.

    Empty `columns`: the series' built-in choice, else every numeric column but the date column.
    Empty `target`: every value column. Empty `date_column`: the built-in one, a column named
    like a date (date, time, year, ...), or a non-numeric first column; else none."""
    names = list(series.columns)
    listing = ", ".join(repr(n) for n in names)

    def need(name: str, field_name: str) -> None:
        if name not in series.columns:
            raise UserError(f"{series.source} has no column '{name}' (forecast.{field_name}). "
                            f"Its columns are: {listing}.")

    date = date_column or series.date
    if date:
        need(date, "date_column")
    else:
        date = next((n for n in names if n.strip().lower() in DATE_NAMES), "")
        if not date and not _is_numeric(series.columns[names[0]]):
            date = names[0]
    chosen = list(columns) or list(series.values) or [n for n in names if n != date and _is_numeric(series.columns[n])]
    if not chosen:
        raise UserError(f"{series.source} has no numeric column to forecast (columns: {listing}). "
                        f"Set forecast.columns to the value columns.")
    for n in chosen:
        need(n, "columns")
    for n in target:
        need(n, "target")
        if n not in chosen:
            raise UserError(f"forecast.target names '{n}', which is not among the input columns "
                            f"{chosen} (forecast.columns); add it there.")
    values = np.stack([_floats(series, n) for n in chosen], axis=1)
    labels = _labels(series.columns[date]) if date else [str(i) for i in range(len(series))]
    if date:
        _check_order(labels, series, date)
    return Selected(values, chosen, [chosen.index(n) for n in (target or chosen)], labels, date)


def _floats(series: Series, name: str) -> np.ndarray:
    col = series.columns[name]
    if col.dtype.kind in "biuf":
        out = col.astype(np.float64)
    else:
        out = np.array([float(c) if _number(c) else np.nan for c in col])
    bad = np.flatnonzero(~np.isfinite(out))
    if len(bad):
        i = bad[0]
        where = f"line {series.lines[i]}" if series.lines else f"row {i}"
        cell = str(col[i]).strip()
        what = "is empty" if not cell else f"holds '{cell}', which is not a finite number"
        raise UserError(f"{series.source} {where}, column '{name}' {what}. Value columns must hold a number "
                        f"at every time step ({len(bad)} bad cell(s) in this column); fill or drop those rows.")
    return out


def _labels(col: np.ndarray) -> list[str]:
    """Time labels as text; whole numbers written as floats (years: 1700.0) lose the '.0'."""
    if col.dtype.kind not in "biuf" and not all(_number(c) for c in col):
        return [str(v).strip() for v in col]
    t = col.astype(np.float64)
    if np.all(np.isfinite(t)) and np.all(t == np.round(t)):
        return [str(int(v)) for v in t]
    return [str(v).strip() for v in col]


def _check_order(labels: list[str], series: Series, date: str) -> None:
    """Rows must be in time order: numeric or ISO-date labels must increase."""
    try:
        t = np.array([float(v) for v in labels]) if all(_number(v) for v in labels) \
            else np.array(labels, dtype="datetime64[s]")
    except ValueError:
        return  # labels of another form are used as they are
    step = np.diff(t)
    back = np.flatnonzero(step <= (0.0 if t.dtype.kind == "f" else np.timedelta64(0, "s")))
    if len(back):
        i = back[0] + 1
        where = f"line {series.lines[i]}" if series.lines else f"row {i}"
        raise UserError(f"{series.source} {where}: column '{date}' goes from '{labels[i - 1]}' to '{labels[i]}'; "
                        f"rows must be in time order, each time step once.")


# --- windows over a chronological split -----------------------------------------------------

@dataclass
class Windows:
    """x (N, C, window) inputs, y (N, horizon, K) targets, both in original units; origins (N,):
    the index of each window's first forecast step."""

    x: np.ndarray
    y: np.ndarray
    origins: np.ndarray

    def __len__(self) -> int:
        return len(self.origins)


def bounds(n: int, window: int, horizon: int, val_size: int, test_size: int, source: str) -> tuple[int, int]:
    """(val_start, test_start) for a series of `n` steps, or a UserError saying what is too short."""
    if test_size < horizon:
        raise UserError(f"The test part ({test_size} steps, forecast.test_size) is shorter than the horizon "
                        f"({horizon}, forecast.horizon): no test window would fit. Make it at least {horizon}.")
    if 0 < val_size < horizon:
        raise UserError(f"The validation part ({val_size} steps, forecast.val_size) is shorter than the horizon "
                        f"({horizon}); make it at least {horizon}, or set data.val_split = 0 for none.")
    test_start = n - test_size
    val_start = test_start - val_size
    need = window + horizon + val_size + test_size
    if n < need:
        raise UserError(
            f"{source} has {n} time steps, shorter than one window: forecast.window {window} + horizon {horizon} "
            f"before the validation ({val_size}) and test ({test_size}) parts need at least {need}. Use a "
            f"smaller forecast.window, test_size or val_size, or a longer series.")
    return val_start, test_start


def cut(values: np.ndarray, target: list[int], window: int, horizon: int, origins) -> Windows:
    """Windows at `origins`: inputs values[t-window:t] (as (C, window)), targets values[t:t+horizon, target]."""
    origins = np.asarray(origins, dtype=np.int64)
    steps = np.arange(-window, 0)
    x = values[origins[:, None] + steps].transpose(0, 2, 1)           # (N, C, window)
    y = values[origins[:, None] + np.arange(horizon)][:, :, target]   # (N, horizon, K)
    return Windows(x.astype(np.float32), y.astype(np.float32), origins)


def make_windows(values: np.ndarray, target: list[int], window: int, horizon: int, stride: int,
                 val_size: int, test_size: int, source: str = "the series") -> tuple[dict, Normalizer, tuple]:
    """Split chronologically and cut windows. Returns ({'train', 'val' (or None), 'test'}: Windows,
    the scaler fitted on the training part only, (val_start, test_start))."""
    n = len(values)
    val_start, test_start = bounds(n, window, horizon, val_size, test_size, source)
    last = val_start - horizon  # the last origin whose targets stay inside the training part
    parts = {
        "train": cut(values, target, window, horizon, np.arange(last, window - 1, -stride)[::-1]),
        "val": cut(values, target, window, horizon, np.arange(max(val_start, window), test_start - horizon + 1))
        if val_size else None,
        "test": cut(values, target, window, horizon, np.arange(max(test_start, window), n - horizon + 1)),
    }
    return parts, fit_scaler(values[:val_start]), (val_start, test_start)


def fit_scaler(train_part: np.ndarray) -> Normalizer:
    """Per-column mean and standard deviation of the training part (T, C), as a series Normalizer."""
    std = train_part.std(axis=0)
    std = np.where(std < 1e-9, 1.0, std)
    return Normalizer(train_part.mean(axis=0).tolist(), std.tolist(), "series")


# --- reading files --------------------------------------------------------------------------

def read_series_file(path: Path | str) -> Series:
    """A CSV table or .npy array -> Series, with clear errors for every malformed input."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"Series file '{path}' is a folder; expected {SERIES_EXPECTED}.")
    if not path.is_file():
        raise UserError(f"Series file '{path}' does not exist; expected {SERIES_EXPECTED}.")
    if path.suffix.lower() == ".npy":
        try:
            a = load_npy(path, word="valid")
        except UserError as e:
            raise UserError(f"{e} Expected {SERIES_EXPECTED}.") from None
        if a.dtype.kind not in "biuf" or a.ndim not in (1, 2) or len(a) == 0:
            raise UserError(f"'{path}' holds a {a.dtype} array of shape {a.shape}; expected {SERIES_EXPECTED}.")
        a = a.reshape(len(a), -1).astype(np.float64)
        names = ["value"] if a.shape[1] == 1 else [f"column {i + 1}" for i in range(a.shape[1])]
        return Series({n: a[:, i] for i, n in enumerate(names)}, f"'{path}'")
    return _read_csv(path)


def _read_csv(path: Path) -> Series:
    rows, lines = read_csv_rows(path, SERIES_EXPECTED)
    rows = [[c.strip() for c in row] for row in rows]
    if not rows:
        raise UserError(f"'{path}' is empty; expected {SERIES_EXPECTED}.")
    has_header = not all(_number(c) for c in rows[0])
    header = rows[0] if has_header else [f"column {i + 1}" for i in range(len(rows[0]))]
    rows, lines = (rows[1:], lines[1:]) if has_header else (rows, lines)
    if not rows:
        raise UserError(f"'{path}' has a header but no data rows; expected {SERIES_EXPECTED}.")
    for row, line in zip(rows, lines):
        if len(row) != len(header):
            raise UserError(f"'{path}' line {line}: {len(row)} fields, but the header names {len(header)} columns.")
    cols = {name: np.array([r[i] for r in rows], dtype=str) for i, name in enumerate(header)}
    return Series(cols, f"'{path}'", lines=lines)


# --- registered data sets -------------------------------------------------------------------

@DATASETS.register("series")
def series_file(cfg) -> Series:
    """Your time series: a CSV (value columns, optional date column) or .npy file in data.path."""
    if not cfg.path:
        raise UserError(f"data.name = 'series' reads your file: set data.path to {SERIES_EXPECTED} "
                        f"(e.g. --set data.path=sales.csv).")
    return read_series_file(Path(cfg.path).expanduser())


@DATASETS.register("sunspots")
def sunspots(cfg) -> Series:
    """Yearly mean sunspot numbers 1700-2008 (309 steps), bundled with statsmodels."""
    from statsmodels.datasets import sunspots as data

    d = data.load_pandas().data
    return Series({"YEAR": d["YEAR"].to_numpy(), "SUNACTIVITY": d["SUNACTIVITY"].to_numpy(np.float64)},
                  "sunspots (statsmodels)", ["SUNACTIVITY"], "YEAR")


@DATASETS.register("nile")
def nile(cfg) -> Series:
    """Yearly Nile flow volume at Aswan 1871-1970 (100 steps), bundled with statsmodels."""
    from statsmodels.datasets import nile as data

    d = data.load_pandas().data
    return Series({"year": d["year"].to_numpy(), "volume": d["volume"].to_numpy(np.float64)},
                  "nile (statsmodels)", ["volume"], "year")


@DATASETS.register("co2")
def co2(cfg) -> Series:
    """Mauna Loa CO2 (ppm), 1958-2001: statsmodels' weekly data as monthly means (526 steps; the
    5 months without any weekly value are linearly interpolated)."""
    from statsmodels.datasets import co2 as data

    m = data.load_pandas().data["co2"].resample("MS").mean().interpolate()
    return Series({"month": np.array(m.index.strftime("%Y-%m"), dtype=str), "co2": m.to_numpy(np.float64)},
                  "co2 (statsmodels, monthly)", ["co2"], "month")


SERIES_SETS = ("series", "sunspots", "nile", "co2")
