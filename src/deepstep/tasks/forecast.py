"""Time-series forecasting: sliding windows over a chronological split (see `data/series.py`),
MSE on scaled targets, metrics in the series' original units, and two baselines on exactly the
same test points — persistence (the last observed value) and an ARIMA fitted on the training
part only — so a summary shows honestly whether the network helps.

The model is any registered regressor reading (B, C, window) and returning (B, horizon * K)
(K target columns, step-major: output h * K + k is step h + 1 of target k).

ARIMA baseline: one statsmodels ARIMA(p, d, q) per target column (order `forecast.arima_order`,
fixed rather than searched so that it costs well under a second; a constant term when d = 0),
fitted by maximum likelihood on the training part. Its parameters are then frozen, and from each
test origin it forecasts `horizon` steps with the Kalman filter run over the series *before* that
origin only (`apply` + dynamic prediction): the same information a test window has, plus the
older history that the window's fixed length leaves out.
"""

from __future__ import annotations

import csv
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..data.arrays import Normalizer, TensorData
from ..data.series import SERIES_SETS, Series, Windows, make_windows, read_series_file, select
from ..engine.logs import monitor_mode
from ..engine.optim import Optimization
from ..engine.runtime import Runtime, evaluating
from ..errors import UserError
from ..models.layers import check_fits, create_model
from ..registry import DATASETS, TASKS
from .supervised import Supervised


@TASKS.register("forecast", tags=("forecast",))
class Forecast(Supervised):
    """Time-series forecasting over sliding windows, with RMSE/MAE beside persistence and ARIMA baselines.

    Forecast `horizon` steps of the target columns from `window` past steps of all columns.

    Reuses Supervised's step, batching, optimizer handling and checkpoint state; builds its own
    chronological windows instead of a shuffled split, and reports errors in original units.

    Args:
        cfg: the resolved RunConfig (sections `data`, `forecast`, `model`, ...).
        runtime: device/precision/distribution.
        series: a Series to use instead of loading `cfg.data.name`.
        model: an nn.Module to use instead of building `cfg.model`.
    """

    def __init__(self, cfg: RunConfig, runtime: Runtime, series: Series | None = None, model: torch.nn.Module | None = None):
        self.cfg, self.rt, self.loss_name = cfg, runtime, "mse"
        self.classify = self.train_acc = False
        self.augment, self.tokenizer, self.texts = "", None, {}
        fc = cfg.forecast
        series = series if series is not None else DATASETS.get(cfg.data.name)(cfg.data)
        if not isinstance(series, Series):
            raise UserError(f"Task 'forecast' reads a time series, but data set '{cfg.data.name}' is not one. "
                            f"Time series: {', '.join(SERIES_SETS)}.")
        sel = select(series, fc.columns, fc.target, fc.date_column)
        self.sel, self.source = sel, series.source
        n = len(sel.values)
        test_size = fc.test_size or round(cfg.data.test_split * n)
        val_size = fc.val_size or round(cfg.data.val_split * n)
        parts, scaler, (self.val_start, self.test_start) = make_windows(
            sel.values, sel.target, fc.window, fc.horizon, fc.stride, val_size, test_size, series.source)
        c = sel.values.shape[1]
        self.norm = scaler if cfg.data.normalize else Normalizer([0.0] * c, [1.0] * c, "series")
        self.y_mean = np.asarray(self.norm.mean, dtype=np.float32)[sel.target]  # (K,)
        self.y_std = np.asarray(self.norm.std, dtype=np.float32)[sel.target]
        self.windows: dict[str, Windows] = {k: w for k, w in parts.items() if w is not None}
        self.data = {k: TensorData(self.norm(w.x), self._scaled(w.y), runtime.device) for k, w in self.windows.items()}
        in_shape, n_out = (c, fc.window), fc.horizon * len(sel.target)
        if model is None:
            model = create_model(cfg.model["name"], in_shape, n_out, **{k: v for k, v in cfg.model.items() if k != "name"})
        out = check_fits(model, self.data["train"].x[:2].cpu(), series.source)
        if tuple(out.shape) != (min(2, len(self.data["train"])), n_out):
            raise UserError(f"Model '{cfg.model['name']}' returns outputs of shape {tuple(out.shape[1:])} per window; "
                            f"forecasting needs {n_out} numbers (horizon {fc.horizon} x {len(sel.target)} target(s)).")
        self.model = runtime.module(model)
        self.steps_per_epoch = -(-(len(self.data["train"]) // runtime.world_size) // cfg.train.batch_size)
        self.opt = Optimization(self.model.parameters(), cfg.optim, cfg.sched, self.steps_per_epoch, cfg.train.epochs,
                                cfg.train.grad_clip, cfg.train.grad_accum, monitor_mode(cfg.train.monitor))
        self.meta = {"task": cfg.task, "loss": "mse", "classes": [], "in_shape": list(in_shape), "num_outputs": n_out,
                     "kind": "series", "normalizer": self.norm.to_dict(), "source": series.source,
                     "sizes": {k: len(v) for k, v in self.data.items()},
                     "forecast": {"window": fc.window, "horizon": fc.horizon, "columns": sel.names,
                                  "target": [sel.names[i] for i in sel.target], "date_column": sel.date_column,
                                  "test_from": sel.labels[self.test_start], "val_from": sel.labels[self.val_start]}}
        self.has_val = "val" in self.data

    def _scaled(self, y: np.ndarray) -> np.ndarray:
        """(N, horizon, K) targets in original units -> (N, horizon * K) scaled."""
        return ((y - self.y_mean) / self.y_std).reshape(len(y), -1).astype(np.float32)

    def forecasts(self, split: str, out: torch.Tensor | None = None) -> np.ndarray:
        """The model's forecasts for a split's windows, (N, horizon, K) in original units, computed
        in evaluation mode unless the normalized outputs `out` are given."""
        if out is None:
            with evaluating(self.model):
                out = self.outputs(self.data[split].x)
        out = out.cpu().numpy()
        return out.reshape(len(out), self.cfg.forecast.horizon, -1) * self.y_std + self.y_mean

    def evaluate(self, split: str) -> dict:
        if split not in self.data:
            return {}
        d = self.data[split]
        with evaluating(self.model):
            out = self.outputs(d.x)
        loss = F.mse_loss(out, d.y.float()).item()
        return {f"{split}/loss": loss, **errors(self.forecasts(split, out), self.windows[split].y, split)}


def errors(pred: np.ndarray, actual: np.ndarray, prefix: str, name: str = "") -> dict:
    """RMSE and MAE over every (window, step, target) in original units (several target columns
    are pooled, each in its own units: compare runs on the same targets only)."""
    err = pred.astype(np.float64) - actual
    return {f"{prefix}/{name}rmse": float(np.sqrt(np.mean(err ** 2))), f"{prefix}/{name}mae": float(np.mean(np.abs(err)))}


def persistence(x: np.ndarray, target: list[int], horizon: int) -> np.ndarray:
    """The naive forecast: every future step equals the last observed value. x (N, C, window) ->
    (N, horizon, K)."""
    last = x[:, target, -1]  # (N, K)
    return np.repeat(last[:, None, :], horizon, axis=1).astype(np.float64)


def arima_forecasts(values: np.ndarray, target: list[int], train_end: int, origins: np.ndarray, horizon: int,
                    order: list[int]) -> np.ndarray | None:
    """ARIMA(order) per target column fitted on values[:train_end]; for each origin t, the forecast of
    steps t .. t+horizon-1 from values[:t] only. Returns (N, horizon, K), or None (with a warning on
    stderr) when statsmodels cannot fit the model."""
    from statsmodels.tsa.arima.model import ARIMA
    from threadpoolctl import threadpool_limits

    out = np.empty((len(origins), horizon, len(target)))
    trend = "c" if order[1] == 0 else "n"  # statsmodels allows no constant once the series is differenced
    # one BLAS thread: these matrices are tiny, and many threads on a shared CPU are ~20x slower
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter; a failed fit is reported below
        for j, k in enumerate(target):
            try:
                fitted = ARIMA(values[:train_end, k], order=tuple(order), trend=trend).fit()
                full = fitted.apply(values[:, k])  # same parameters; the filter sees the whole series
                for i, t in enumerate(origins):
                    # dynamic from t: steps t.. are forecast from data before t only
                    out[i, :, j] = full.get_prediction(start=int(t), end=int(t) + horizon - 1,
                                                       dynamic=True).predicted_mean
            except (ValueError, np.linalg.LinAlgError) as e:
                print(f"warning: the ARIMA{tuple(order)} baseline could not be fitted ({e}); "
                      f"no baseline/arima_* metrics.", file=sys.stderr)
                return None
    return out


# --- artifacts ------------------------------------------------------------------------------

def _rows(task: Forecast, pred, pers, arima):
    test, names, labels = task.windows["test"], task.sel.names, task.sel.labels
    for i, t in enumerate(test.origins):
        for h in range(pred.shape[1]):
            for j, k in enumerate(task.sel.target):
                yield (labels[t + h], h + 1, names[k], test.y[i, h, j], pred[i, h, j], pers[i, h, j],
                       None if arima is None else arima[i, h, j])


def write_forecasts(path: Path, task: Forecast, pred, pers, arima) -> None:
    """forecast.csv: one row per test (time, step ahead, column) with the actual value and forecasts."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "steps_ahead", "column", "actual", "model", "persistence", "arima"])
        for row in _rows(task, pred, pers, arima):
            w.writerow([*row[:3], *("" if v is None else f"{v:.6g}" for v in row[3:])])


def plot_forecasts(path: Path, task: Forecast, pred, pers, arima, metrics: dict) -> None:
    """forecast.png: actual series from the first validation input on, the validation and test
    parts shaded, and the one-step-ahead forecasts of the model and both baselines (plus the
    model's last step when horizon > 1), one panel per target column (at most four)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    sel, test, fc = task.sel, task.windows["test"], task.cfg.forecast
    labels, n = sel.labels, len(sel.values)
    numeric = all(_is_float(v) for v in labels)
    xs = np.array([float(v) for v in labels]) if numeric else np.arange(n, dtype=float)
    start = max(0, task.val_start - fc.window)
    shown = sel.target[:4]
    fig = Figure(figsize=(10, 3.2 * len(shown)), layout="constrained")
    axes = fig.subplots(len(shown), 1, squeeze=False)[:, 0]
    model_rmse = errors(pred, test.y, "test")["test/rmse"]
    for j, (ax, k) in enumerate(zip(axes, shown)):
        ax.plot(xs[start:], sel.values[start:, k], color="black", lw=1.5, label="actual")
        ax.axvspan(xs[task.val_start], xs[task.test_start], color="tab:blue", alpha=0.06, label="validation")
        ax.axvspan(xs[task.test_start], xs[-1], color="tab:orange", alpha=0.08, label="test")
        at = xs[test.origins]
        ax.plot(at, pred[:, 0, j], color="tab:red", marker=".", lw=1.2, label="model, 1 step ahead")
        if fc.horizon > 1:
            ax.plot(xs[test.origins + fc.horizon - 1], pred[:, -1, j], color="tab:purple", lw=1, ls="-.",
                    label=f"model, {fc.horizon} steps ahead")
        if arima is not None:
            ax.plot(at, arima[:, 0, j], color="tab:green", lw=1, ls="--", label=f"ARIMA{tuple(fc.arima_order)}, 1 step")
        ax.plot(at, pers[:, 0, j], color="gray", lw=1, ls=":", label="persistence, 1 step")
        ax.set_ylabel(sel.names[k])
        if not numeric:
            ticks = np.linspace(start, n - 1, 6).astype(int)
            ax.set_xticks(xs[ticks], [labels[i] for i in ticks])
        if j == 0:
            parts = [f"model {model_rmse:.3g}"]
            if "baseline/arima_rmse" in metrics:
                parts.append(f"ARIMA {metrics['baseline/arima_rmse']:.3g}")
            parts.append(f"persistence {metrics['baseline/persistence_rmse']:.3g}")
            ax.set_title(f"{task.cfg.recipe or task.source}: test RMSE over {fc.horizon} step(s): " + ", ".join(parts))
            ax.legend(fontsize="small", ncols=2)
    axes[-1].set_xlabel(sel.date_column or "time step")
    fig.savefig(path, dpi=110)


def _is_float(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


# --- predict --------------------------------------------------------------------------------

def predict_file(run, path: str) -> dict:
    """Forecast the next `horizon` steps after the end of the series in `path` with a loaded
    forecasting run. Returns {'input', 'after', 'steps': [labels], 'forecast': {column: [values]}}."""
    fm = run.meta["forecast"]
    columns, window = fm["columns"], fm["window"]
    series = read_series_file(path)
    generated = all(n == "value" or n.startswith("column ") for n in series.columns)
    if generated and not set(columns) & set(series.columns):  # .npy or a CSV without header: by position
        if len(series.columns) != len(columns):
            raise UserError(f"'{path}' holds {len(series.columns)} unnamed column(s), but this run reads "
                            f"{len(columns)}: {columns}. Give a CSV whose header names them.")
        series.columns = dict(zip(columns, series.columns.values()))
    date = fm["date_column"] if fm["date_column"] in series.columns else ""
    sel = select(series, columns, fm["target"], date)
    if len(sel.values) < window:
        raise UserError(f"'{path}' holds {len(sel.values)} time step(s), but this run's model reads windows of "
                        f"{window} (forecast.window): give at least the last {window} values of the series.")
    x = sel.values[-window:].T[None].astype(np.float32)  # (1, C, window)
    out = run.predict(x).reshape(fm["horizon"], len(sel.target))
    norm = run.meta["normalizer"]
    mean, std = np.asarray(norm["mean"])[sel.target], np.asarray(norm["std"])[sel.target]
    values = out * std + mean
    after, steps = sel.labels[-1], next_labels(sel.labels, fm["horizon"])
    if not date:  # no time labels: count steps after the last value
        after, steps = f"value {len(sel.values)}", [f"+{i + 1}" for i in range(fm["horizon"])]
    return {"input": str(path), "after": after, "steps": steps,
            "forecast": {sel.names[k]: [round(float(v), 6) for v in values[:, j]] for j, k in enumerate(sel.target)}}


def next_labels(labels: list[str], horizon: int) -> list[str]:
    """Labels of the next steps: continued when the last labels are evenly spaced numbers (years),
    else '+1', '+2', ..."""
    tail = labels[-3:]
    if len(tail) >= 2 and all(_is_float(v) for v in tail):
        t = [float(v) for v in tail]
        step = t[-1] - t[-2]
        if step > 0 and np.allclose(np.diff(t), step):
            fmt = (lambda v: str(int(v))) if all(v == int(v) for v in t + [step]) else (lambda v: f"{v:g}")
            return [fmt(t[-1] + step * (i + 1)) for i in range(horizon)]
    return [f"+{i + 1}" for i in range(horizon)]

