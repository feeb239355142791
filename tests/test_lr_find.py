"""The learning-rate range test: the suggestion rule on a curve with a known steepest point, a real
test on a small digits run (exponential rates, stop on divergence, the plot), `optim.lr=auto`
(the training after it equals a run given the same rate by hand) and the errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from deepstep import cli
from deepstep.config import load_config
from deepstep.engine.fit import fit
from deepstep.engine.lr_find import lr_find, plot_lr_find, suggest
from deepstep.errors import UserError

TINY = ["data.limit=300", "model.hidden=[16]", "train.threads=1", "train.batch_size=16"]


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = list(np.geomspace(1e-6, 1.0, 200))
    x = np.log10(lrs)
    # a smooth drop centred at 1e-3 (steepest there), a minimum at 1e-1.5, then a rise
    loss = 2.0 - 1.5 / (1 + np.exp(-(x + 3) * 3)) + 0.5 * np.clip(x + 1.5, 0, None) ** 2
    r = suggest(lrs, list(loss))
    assert math.log10(r["steepest"]) == pytest.approx(-3, abs=0.05)
    assert r["minimum"] == pytest.approx(lrs[int(np.argmin(loss))]) and r["min_10"] == pytest.approx(r["minimum"] / 10)


def test_suggestion_refuses_curves_it_cannot_read():
    lrs = list(np.geomspace(1e-3, 1.0, 50))
    with pytest.raises(UserError, match="too high"):
        suggest(lrs, list(np.linspace(1, 3, 50)))  # rising from the start
    with pytest.raises(UserError, match="diverged after 5 steps"):
        suggest(lrs[:5], [1.0] * 5)


def test_range_test_on_digits_and_its_plot(tmp_path):
    r = lr_find(load_config("digits-mlp", TINY), steps=120, diverge=1.5, verbose=0)
    lrs = np.asarray(r["lrs"])
    assert lrs[0] == pytest.approx(1e-7)
    ratios = lrs[1:] / lrs[:-1]
    assert np.allclose(ratios, (10 / 1e-7) ** (1 / 119))  # exponential growth toward 10
    assert r["stopped"] and len(lrs) < 120  # Adam at rates near 1 diverges: stopped early
    sm = r["smoothed"]
    assert sm[-1] > 1.5 * min(sm)  # it stopped at the first point past 1.5 times the minimum so far
    assert all(sm[i] <= 1.5 * min(sm[:i + 1]) for i in range(11, len(sm) - 1))
    assert 1e-5 < r["steepest"] < r["minimum"] and r["min_10"] == pytest.approx(r["minimum"] / 10)
    png = plot_lr_find(r, tmp_path / "lf")
    assert png.stat().st_size > 10_000
    assert json.loads((tmp_path / "lf" / "lr_find.json").read_text())["steepest"] == r["steepest"]


def test_lr_auto_runs_the_finder_then_trains_as_with_that_rate(tmp_path):
    auto = fit(load_config("digits-mlp", [*TINY, "train.epochs=2", "optim.lr=auto"]), run_dir=tmp_path / "a", verbose=0)
    found = auto.cfg.optim.lr
    assert isinstance(found, float) and found == float(f"{auto.summary['lr_find/steepest']:.3g}")
    assert f"lr = {found}" in (tmp_path / "a" / "config.toml").read_text()  # resume and reports read the rate
    by_hand = fit(load_config("digits-mlp", [*TINY, "train.epochs=2", f"optim.lr={found}"]), run_dir=tmp_path / "b",
                  verbose=0)
    assert auto.summary["val/loss"] == by_hand.summary["val/loss"]
    assert auto.summary["test/acc"] == by_hand.summary["test/acc"]


def test_bad_rates_and_options_exit_2(tmp_path, capsys):
    assert cli.main(["train", "digits-mlp", "--set", "optim.lr=fast", "--dry-run"]) == 2
    assert "'auto'" in capsys.readouterr().err
    assert cli.main(["lr-find", "digits-mlp", "--steps", "5", "--out", str(tmp_path)]) == 2
    assert "at least 20" in capsys.readouterr().err
    assert cli.main(["lr-find", "digits-mlp", "--start-lr", "1", "--end-lr", "0.1", "--out", str(tmp_path)]) == 2
    assert "start rate < end rate" in capsys.readouterr().err
