"""What a notebook shows, without a kernel: quick mode's caps, the live progress block, the final
result and `Run._repr_html_` (tests/test_notebooks.py runs the notebooks themselves)."""

from __future__ import annotations

import sys
import types

import pytest

from deepstep import quick
from deepstep.config import load_config
from deepstep.data.download import cache_dir
from deepstep.engine.fit import fit
from deepstep.engine.run import Run
from deepstep.plugins import progress


def test_quick_mode_is_off_without_the_variable(monkeypatch):
    monkeypatch.delenv("DEEPSTEP_QUICK", raising=False)
    cfg = load_config("fashion-mlp")
    assert not quick.enabled() and quick.shorten(cfg) is cfg
    monkeypatch.setenv("DEEPSTEP_QUICK", "0")
    assert not quick.enabled()


def test_quick_mode_caps_only_downwards_and_only_sections_the_run_has(monkeypatch):
    monkeypatch.setenv("DEEPSTEP_QUICK", "1")
    cfg = load_config("fashion-mlp")
    short = quick.shorten(cfg)
    assert (short.train.epochs, short.data.limit) == (2, 200)
    assert (cfg.train.epochs, cfg.data.limit) == (20, 0)  # the given config is left alone
    small = load_config("digits-mlp", ["train.epochs=1", "data.limit=50"])
    assert quick.shorten(small).train.epochs == 1 and quick.shorten(small).data.limit == 50
    ppo = quick.shorten(load_config("cartpole-ppo"))
    assert (ppo.env.steps_per_epoch, ppo.env.eval_episodes, ppo.rl.learning_starts) == (2048, 3, 256)
    assert not hasattr(short, "env")


def test_quick_mode_caches_apart(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPSTEP_CACHE", str(tmp_path))
    monkeypatch.delenv("DEEPSTEP_QUICK", raising=False)
    assert cache_dir() == tmp_path
    monkeypatch.setenv("DEEPSTEP_QUICK", "1")
    assert cache_dir() == tmp_path / "quick"


def test_fit_applies_quick_mode(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPSTEP_QUICK", "1")
    run = fit(load_config("digits-mlp", ["train.epochs=5"]), run_dir=tmp_path / "run", verbose=0)
    assert run.summary["epochs"] == 2 and run.cfg.train.epochs == 2
    assert Run.open(tmp_path / "run").cfg.train.epochs == 2  # config.toml says what really ran


class FakeHandle:
    def __init__(self):
        self.bundles = []

    def update(self, bundle, raw=False):
        self.bundles.append(bundle)


@pytest.fixture
def fake_ipython(monkeypatch):
    """IPython.display.display replaced by a recorder; in_notebook() answers True."""
    shown, handle = [], FakeHandle()

    def display(obj, raw=False, display_id=False):
        shown.append(obj)
        return handle if display_id else None

    module = types.ModuleType("IPython.display")
    module.display = display
    monkeypatch.setitem(sys.modules, "IPython.display", module)
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    import deepstep.run as run_module

    monkeypatch.setattr(run_module, "in_notebook", lambda: True)
    return shown, handle


def test_progress_in_a_notebook_is_one_live_block(fake_ipython, tmp_path):
    shown, handle = fake_ipython
    run = fit(load_config("digits-mlp", ["train.epochs=3"]), run_dir=tmp_path / "run", verbose=1)
    assert len(shown) == 1 and {"text/plain", "text/html"} <= set(shown[0])  # displayed once, then updated
    last = handle.bundles[-1]
    assert "3 epochs in" in last["text/plain"] and "<svg" in last["text/html"] and "<progress" in last["text/html"]
    assert "epoch 3/3" in last["text/plain"] and "val/loss" in last["text/html"]
    assert run.summary["epochs"] == 3


def test_loss_chart_needs_two_points_and_skips_nan():
    assert progress.loss_svg([{"epoch": 1, "train/loss": 1.0}]) == ""
    svg = progress.loss_svg([{"epoch": 1, "train/loss": 1.0, "val/loss": float("nan")},
                             {"epoch": 2, "train/loss": 0.5, "val/loss": 0.7},
                             {"epoch": 3, "train/loss": 0.4, "val/loss": 0.6}])
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "nan" not in svg


def test_result_and_run_display(fake_ipython, tmp_path, capsys):
    shown, _ = fake_ipython
    from deepstep.run import show_result, train

    run = train(load_config("digits-mlp", ["train.epochs=2"]), tmp_path / "run", verbose=0, show=True)
    block = shown[-1]
    assert "test/acc" in block["text/html"] and "NOT met" in block["text/html"]  # 2 epochs miss 0.97
    assert block["text/plain"].splitlines()[0] == f"run directory: {run.path}"
    page = run._repr_html_()
    assert page.count("<img") >= 2 and "digits-mlp" in page and "report.html" in page  # curves + confusion
    assert "<img" in Run.open(run.path)._repr_html_()  # a reopened run shows the same
    # outside a notebook: the lines `deepstep train` prints
    import deepstep.run as run_module

    run_module.in_notebook = lambda: False
    show_result(run)
    assert "target test/acc 0.97: NOT met" in capsys.readouterr().out


def test_a_run_without_a_directory_shows_its_lines():
    import numpy as np
    import torch

    import deepstep

    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    h = deepstep.fit(torch.nn.Linear(4, 2), (x, (x[:, 0] > 0).astype(int)), epochs=1, verbose=0)
    assert h.run._repr_html_().startswith("<pre>in memory")
