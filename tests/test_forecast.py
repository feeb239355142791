"""Forecasting: chronological windows that never leak validation/test points into training or the
scaler (oracle tests on synthetic series), baselines on hand-made numbers, the task end to end,
the sunspots recipes from the CLI, predict, and user errors (exit 2, clear message)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepstep.cli import main
from deepstep.config import load_config
from deepstep.data.series import Series, make_windows, read_series_file, select
from deepstep.engine.runtime import Runtime
from deepstep.plugins.forecast import forecast_baselines
from deepstep.run import train
from deepstep.tasks.forecast import Forecast, arima_forecasts, errors, next_labels, persistence

SRC = str(Path(__file__).resolve().parents[1] / "src")
RECIPES = ["sunspots-rnn", "sunspots-lstm", "sunspots-gru", "sunspots-transformer"]


def wave(n: int = 120, channels: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    return 10 + 5 * np.sin(2 * np.pi * t / (11 + 3 * np.arange(channels))) + rng.normal(0, 0.5, (n, channels))


def task_for(values: np.ndarray, *overrides: str, names=None) -> Forecast:
    names = names or [f"c{i}" for i in range(values.shape[1])]
    series = Series({n: values[:, i] for i, n in enumerate(names)}, "synthetic")
    cfg = load_config("sunspots-rnn", ["train.epochs=1", "model.hidden_size=8", "train.threads=1", *overrides])
    return Forecast(cfg, Runtime(device="cpu", seed=0, threads=1), series=series)


# --- windows and the split: oracle tests ----------------------------------------------------

def test_windows_never_leak_validation_or_test_points():
    v = wave()
    w, h, stride, val, test = 10, 3, 2, 15, 20
    parts, scaler, (vs, ts) = make_windows(v, [1], w, h, stride, val, test)
    assert (vs, ts) == (len(v) - 35, len(v) - 20)
    tr = parts["train"]
    # every training input and target index lies before the validation part
    assert tr.origins.min() - w >= 0 and tr.origins.max() + h - 1 < vs
    assert tr.origins.max() == vs - h and np.all(np.diff(tr.origins) == stride)
    for i, t in enumerate(tr.origins):  # the windows hold exactly those points
        np.testing.assert_array_equal(tr.x[i], v[t - w:t].T.astype(np.float32))
        np.testing.assert_array_equal(tr.y[i, :, 0], v[t:t + h, 1].astype(np.float32))
    va, te = parts["val"], parts["test"]
    assert va.origins.min() >= vs and va.origins.max() + h - 1 < ts
    assert te.origins.min() == ts and te.origins.max() == len(v) - h
    covered = {int(t) + k for t in te.origins for k in range(h)}
    assert covered == set(range(ts, len(v)))  # every test point is forecast
    # the scaler is the training part's, and perturbing the later parts changes neither it nor training
    np.testing.assert_allclose(scaler.mean, v[:vs].mean(0))
    np.testing.assert_allclose(scaler.std, v[:vs].std(0))
    v2 = v.copy()
    v2[vs:] = 1e6
    parts2, scaler2, _ = make_windows(v2, [1], w, h, stride, val, test)
    assert scaler2 == scaler
    np.testing.assert_array_equal(parts2["train"].x, tr.x)
    np.testing.assert_array_equal(parts2["train"].y, tr.y)


def test_task_split_is_chronological_and_training_tensors_ignore_the_future():
    v = wave(150)
    a = task_for(v, "forecast.window=12", "forecast.horizon=2", "forecast.test_size=30", "forecast.val_size=20")
    o = {k: a.windows[k].origins for k in ("train", "val", "test")}
    assert o["train"].max() + 2 <= o["val"].min() and o["val"].max() + 2 <= o["test"].min()
    np.testing.assert_array_equal(o["test"], np.arange(120, 149))  # the final 30 steps
    assert a.meta["forecast"]["test_from"] == "120" and a.meta["sizes"]["test"] == 29
    v2 = v.copy()
    v2[a.val_start:] *= -50  # a different future
    b = task_for(v2, "forecast.window=12", "forecast.horizon=2", "forecast.test_size=30", "forecast.val_size=20")
    assert b.norm == a.norm
    for t in ("x", "y"):
        assert getattr(b.data["train"], t).equal(getattr(a.data["train"], t))
    assert not b.data["test"].y.equal(a.data["test"].y)


def test_multivariate_inputs_with_one_target_and_metrics_in_original_units():
    v = wave(140, 3)
    v[:, 2] *= 1000  # a column in other units: errors must come back in them
    a = task_for(v, "forecast.window=8", "forecast.horizon=3", "forecast.test_size=24", "forecast.val_size=12",
                 "forecast.target=['c2']")
    assert a.meta["in_shape"] == [3, 8] and a.meta["num_outputs"] == 3
    a.train(False)
    m = a.evaluate("test")
    pred = a.forecasts("test")
    assert pred.shape == (22, 3, 1)
    err = pred[:, :, 0] - v[a.windows["test"].origins[:, None] + np.arange(3), 2]
    assert m["test/rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-5)
    assert m["test/mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-5)


# --- baselines ------------------------------------------------------------------------------

def test_persistence_and_errors_on_hand_made_numbers():
    x = np.array([[[1.0, 2.0, 3.0]], [[4.0, 5.0, 9.0]]])  # (N=2, C=1, window=3)
    p = persistence(x, [0], 2)
    np.testing.assert_array_equal(p[:, :, 0], [[3, 3], [9, 9]])
    actual = np.array([[4.0, 6.0], [8.0, 9.0]])[:, :, None]
    e = errors(p, actual, "baseline", "persistence_")  # errors -1, -3, 1, 0
    assert e["baseline/persistence_rmse"] == pytest.approx(np.sqrt((1 + 9 + 1 + 0) / 4))
    assert e["baseline/persistence_mae"] == pytest.approx(5 / 4)


def test_task_baselines_use_exactly_the_test_points():
    v = np.arange(40, dtype=float)[:, None] ** 2  # 0, 1, 4, 9, ...
    a = task_for(v, "forecast.window=3", "forecast.horizon=1", "forecast.test_size=4", "forecast.val_size=4",
                 "forecast.arima_order=[1, 1, 0]")
    m = forecast_baselines(a)  # plugins/forecast.py
    # persistence misses t^2 by t^2 - (t-1)^2 = 2t - 1 at t = 36..39
    miss = np.array([71.0, 73, 75, 77])
    assert m["baseline/persistence_rmse"] == pytest.approx(np.sqrt(np.mean(miss ** 2)))
    assert m["baseline/persistence_mae"] == pytest.approx(74.0)
    assert np.isfinite(m["baseline/arima_rmse"]) and m["baseline/arima_rmse"] < m["baseline/persistence_rmse"]


def test_arima_forecast_from_an_origin_uses_only_earlier_points():
    v = wave(90, 1)
    origins = np.array([70, 80])
    f = arima_forecasts(v, [0], 60, origins, 3, [2, 0, 1])
    v2 = v.copy()
    v2[80:] += 100  # changes the future of origin 80 (and nothing before it)
    g = arima_forecasts(v2, [0], 60, origins, 3, [2, 0, 1])
    np.testing.assert_allclose(g, f)
    v2[75] += 100  # now the history of origin 80 changes, and its forecast with it
    assert not np.allclose(arima_forecasts(v2, [0], 60, origins, 3, [2, 0, 1])[1], f[1])


# --- data -----------------------------------------------------------------------------------

def test_builtin_series_and_csv_columns(tmp_path):
    from deepstep.registry import DATASETS

    s = select(DATASETS.get("sunspots")(None), [], [], "")
    assert s.values.shape == (309, 1) and s.names == ["SUNACTIVITY"] and (s.labels[0], s.labels[-1]) == ("1700", "2008")
    assert select(DATASETS.get("nile")(None), [], [], "").values.shape == (100, 1)
    co2 = select(DATASETS.get("co2")(None), [], [], "")
    assert co2.values.shape == (526, 1) and co2.labels[0] == "1958-03" and np.isfinite(co2.values).all()
    p = tmp_path / "s.csv"
    p.write_text("Date,shop,sales,temp\n2020-01-01,a,1.5,3\n2020-01-02,a,2.5,4\n")
    s = select(read_series_file(p), [], [], "")
    assert s.date_column == "Date" and s.names == ["sales", "temp"] and s.labels == ["2020-01-01", "2020-01-02"]
    np.save(tmp_path / "v.npy", np.arange(6.0).reshape(3, 2))
    assert select(read_series_file(tmp_path / "v.npy"), [], [], "").names == ["column 1", "column 2"]


def test_next_labels():
    assert next_labels(["1998", "1999", "2000"], 2) == ["2001", "2002"]
    assert next_labels(["2020-01", "2020-02"], 2) == ["+1", "+2"]


# --- the recipes from the CLI ---------------------------------------------------------------

def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "deepstep", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_from_the_cli_with_baselines_and_plot(recipe, tmp_path):
    r = cli("train", recipe, "--set", "train.epochs=2", "--quiet", "--run-dir", "R", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "R"
    s = json.loads((run / "summary.json").read_text())
    for key in ("test/rmse", "test/mae", "baseline/persistence_rmse", "baseline/arima_rmse"):
        assert np.isfinite(s[key]) and s[key] > 0, key
    assert s["expect"]["test/rmse"]["target_value"] == s["baseline/persistence_rmse"]
    assert "baseline/persistence_rmse" in r.stdout
    assert (run / "forecast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (run / "forecast.csv").read_text().splitlines()
    assert rows[1].startswith("1969,1,SUNACTIVITY") and len(rows) == 41  # header + 40 test years


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A short sunspots-gru run (in-process) for predict and error tests."""
    d = tmp_path_factory.mktemp("fc")
    cfg = load_config("sunspots-gru", ["train.epochs=1", "model.hidden_size=8", "forecast.horizon=2"])
    return d, train(cfg, d / "run", verbose=0)


def test_predict_next_horizon_from_csv_and_npy(finished, capsys):
    d, result = finished
    years = np.arange(1950, 1980)
    values = 50 + 40 * np.sin(years / 1.7)
    (d / "mine.csv").write_text("YEAR,SUNACTIVITY\n" + "".join(f"{y},{v}\n" for y, v in zip(years, values)))
    np.save(d / "mine.npy", values[-24:])
    assert main(["predict", str(result.run_dir), str(d / "mine.csv"), str(d / "mine.npy"), "--json"]) == 0
    a, b = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert a["steps"] == ["1980", "1981"] and b["steps"] == ["+1", "+2"]
    assert a["forecast"]["SUNACTIVITY"] == pytest.approx(b["forecast"]["SUNACTIVITY"])  # the same last 24 values
    # the forecast is the model's output for the last window, scaled back to sunspot units
    from deepstep.run import load_run

    run = load_run(result.run_dir)
    out = run.predict(values[-24:][None, None].astype(np.float32))[0]
    n = run.meta["normalizer"]
    assert a["forecast"]["SUNACTIVITY"] == pytest.approx(list(out * n["std"][0] + n["mean"][0]), rel=1e-5)


def user_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_errors_exit_2_with_a_clear_message(finished, capsys, tmp_path):
    d, result = finished
    np.save(tmp_path / "short.npy", np.arange(10.0))
    err = user_error(["predict", str(result.run_dir), str(tmp_path / "short.npy")], capsys)
    assert "10 time step(s)" in err and "forecast.window" in err and "24" in err
    err = user_error(["train", "sunspots-lstm", "--set", "forecast.window=300", "--run-dir", str(tmp_path / "a")], capsys)
    assert "309 time steps" in err and "forecast.window 300" in err
    csv = tmp_path / "shop.csv"
    csv.write_text("date,units\n" + "".join(f"2020-01-{i + 1:02d},{i}\n" for i in range(28)))
    err = user_error(["train", "sunspots-lstm", "--set", "data.name=series", "--set", f"data.path={csv}",
                      "--set", "forecast.columns=['sales']", "--run-dir", str(tmp_path / "b")], capsys)
    assert "no column 'sales'" in err and "'units'" in err and str(csv) in err
    err = user_error(["predict", str(result.run_dir), str(csv)], capsys)
    assert "no column 'SUNACTIVITY'" in err
    csv.write_text("date,units\n2020-01-01,1\n2020-01-02,\n")
    err = user_error(["train", "sunspots-lstm", "--set", "data.name=series", "--set", f"data.path={csv}",
                      "--run-dir", str(tmp_path / "c")], capsys)
    assert "line 3" in err and "'units' is empty" in err
    csv.write_text("year,units\n2001,1\n2000,2\n")
    err = user_error(["train", "sunspots-lstm", "--set", "data.name=series", "--set", f"data.path={csv}",
                      "--run-dir", str(tmp_path / "e")], capsys)
    assert "time order" in err and "line 3" in err
    err = user_error(["train", "digits-mlp", "--set", "data.name=sunspots", "--run-dir", str(tmp_path / "f")], capsys)
    assert "task 'forecast'" in err


def test_own_csv_trains_through_a_recipe(tmp_path, capsys):
    csv = tmp_path / "sales.csv"
    t = np.arange(120)
    csv.write_text("month,sales\n" + "".join(f"{2000 + i // 12}-{i % 12 + 1:02d},{100 + 10 * np.sin(i / 2):.3f}\n"
                                             for i in t))
    assert main(["train", "sunspots-gru", "--set", "data.name=series", "--set", f"data.path={csv}",
                 "--set", "forecast.window=12", "--set", "forecast.test_size=12", "--set", "forecast.val_size=12",
                 "--set", "train.epochs=1", "--quiet", "--run-dir", str(tmp_path / "R")]) == 0
    s = json.loads((tmp_path / "R" / "summary.json").read_text())
    assert s["baseline/persistence_rmse"] > 0 and (tmp_path / "R" / "forecast.png").is_file()
    assert json.loads((tmp_path / "R" / "meta.json").read_text())["forecast"]["date_column"] == "month"
