"""Python API: deepstep.fit / evaluate / predict on any nn.Module, Keras-like history, the
guide's one-SGD-step example checked against a manual torch step, early stopping, doctests."""

from __future__ import annotations

import copy
import doctest

import numpy as np
import pytest
import torch
from torch import nn

import deepstep
import deepstep.api
from deepstep.errors import UserError


def _blobs(n=240, seed=0):
    """Three well separated Gaussian blobs in 2-D: (x float32 (n, 2), y int64 (n,))."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centers = torch.tensor([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    return centers[y] + 0.5 * torch.randn(n, 2, generator=g), y


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("module", ["api", "run"])
def test_doctests_pass(module):
    import importlib

    result = doctest.testmod(importlib.import_module(f"deepstep.{module}"), verbose=False)
    assert result.attempted > 0, f"deepstep.{module} should carry runnable examples"
    assert result.failed == 0


def test_public_names():
    for name in ("fit", "evaluate", "predict", "train", "load_run", "create_model", "list_recipes"):
        assert callable(getattr(deepstep, name)), name
    assert "digits-mlp" in deepstep.list_recipes()
    with pytest.raises(AttributeError):
        deepstep.no_such_thing  # noqa: B018


def test_history_has_keras_keys_one_entry_per_epoch():
    x, y = _blobs()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    h = deepstep.fit(net, (x, y), epochs=3, batch_size=32, lr=1e-2, validation_split=0.25, verbose=0)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert key in h.history, key
        assert len(h.history[key]) == 3
        assert all(np.isfinite(h.history[key]))
    assert h.epochs == [1, 2, 3]
    assert not {"train/loss", "train/acc", "val/loss", "val/acc"} & set(h.history), "renamed, not duplicated"
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert h.history["val_accuracy"][-1] > 0.9  # the blobs are separable
    # without validation there are no val_ keys
    h2 = deepstep.fit(copy.deepcopy(net), (x, y), epochs=2, verbose=0)
    assert set(h2.history) >= {"loss", "accuracy"} and not any(k.startswith("val_") for k in h2.history)
    assert len(h2.history["loss"]) == 2
    # metrics=() skips training accuracy
    h3 = deepstep.fit(copy.deepcopy(net), (x, y), epochs=1, metrics=(), verbose=0)
    assert "accuracy" not in h3.history and len(h3.history["loss"]) == 1


def test_fit_trains_in_place_and_evaluate_matches_predict():
    x, y = _blobs()
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3))
    before = _params(net)
    first = deepstep.evaluate(net, (x, y))
    deepstep.fit(net, (x.numpy(), y.numpy()), epochs=5, batch_size=16, lr=1e-2, verbose=0)  # NumPy works too
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    m = deepstep.evaluate(net, (x, y))
    assert set(m) >= {"loss", "accuracy"}
    assert m["loss"] < first["loss"]
    out = deepstep.predict(net, x)
    assert isinstance(out, np.ndarray) and out.shape == (len(x), 3)
    assert m["accuracy"] == pytest.approx(float((out.argmax(1) == y.numpy()).mean()))
    ce = nn.functional.cross_entropy(torch.from_numpy(out), y).item()
    assert m["loss"] == pytest.approx(ce, rel=1e-5)
    # predict in small batches gives the same outputs
    assert np.allclose(deepstep.predict(net, x, batch_size=7), out, atol=1e-6)


def test_one_sgd_step_matches_manual_torch_step():
    """The guide's example: a 2->1 linear model, MSE, one SGD step on random data."""
    torch.manual_seed(0)
    n, lr = 32, 0.1
    x, y = torch.randn(n, 2), torch.randn(n, 1)
    model = nn.Linear(2, 1)
    manual, start = copy.deepcopy(model), copy.deepcopy(model)

    loss = nn.functional.mse_loss(manual(x), y)
    loss.backward()
    with torch.no_grad():
        for p in manual.parameters():
            p -= lr * p.grad

    h = deepstep.fit(model, (x, y), epochs=1, batch_size=n, optimizer="sgd", lr=lr, momentum=0.0,
                     loss="mse", verbose=0)
    assert h.history["loss"] == [pytest.approx(loss.item(), rel=1e-6)]  # loss before the step
    for got, want in zip(model.parameters(), manual.parameters()):
        assert torch.allclose(got, want, atol=1e-6), (got, want)
    assert (model.weight - start.weight).abs().max() > 1e-3  # the step really moved the weights


def test_regression_with_1d_targets_learns_a_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=g)
    y = 3 * x[:, 0] - 2 * x[:, 1] + 0.5  # (N,) targets
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    h = deepstep.fit(model, (x, y), epochs=60, batch_size=32, optimizer="sgd", lr=0.05, loss="mse", verbose=0)
    assert h.history["loss"][-1] < 1e-3 < h.history["loss"][0]
    assert "accuracy" not in h.history
    assert torch.allclose(model.weight.detach(), torch.tensor([[3.0, -2.0]]), atol=0.02)
    assert torch.allclose(model.bias.detach(), torch.tensor([0.5]), atol=0.02)
    m = deepstep.evaluate(model, (x, y), loss="mse")
    assert set(m) == {"loss", "rmse", "mae"}
    assert m["rmse"] == pytest.approx(m["loss"] ** 0.5, rel=1e-4)
    assert m["rmse"] < 0.03


class TwoHeads(nn.Module):
    """A hand-written module with a raw Parameter and an image input: not a Sequential."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1))
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):  # (B, 1, 8, 8) -> (B, 10)
        return self.fc(torch.relu(self.conv(x)).flatten(1)) * self.scale


def test_any_module_on_images():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:600] / 16.0).astype(np.float32)[:, None]
    y = d.target[:600]
    torch.manual_seed(0)
    net = TwoHeads()
    before = _params(net)
    h = deepstep.fit(net, (x, y), epochs=2, batch_size=32, lr=3e-3, validation_split=0.2, verbose=0)
    assert len(h.history["val_accuracy"]) == 2 and h.history["val_accuracy"][-1] > 0.7
    for b, p in zip(before, net.parameters()):
        assert not torch.equal(b, p), "every parameter (the raw one too) is trained"
    assert deepstep.evaluate(net, (x, y))["accuracy"] > 0.7


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_every_optimizer_lowers_the_loss(optimizer):
    x, y = _blobs(120)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
    h = deepstep.fit(net, (x, y), epochs=4, batch_size=16, optimizer=optimizer, lr=1e-2, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]


def test_early_stopping_stops_and_restores_the_best_weights():
    """Full-batch SGD with a rate far above 2/curvature: the validation loss grows every epoch,
    so epoch 1 stays best; with patience 2 training stops after epoch 3 and ends with epoch 1's
    weights, which equal those of a 1-epoch fit from the same start."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g)
    y = x[:, :1] * 2.0 - x[:, 1:]
    torch.manual_seed(0)
    start = nn.Linear(2, 1)
    kw = dict(batch_size=64, optimizer="sgd", lr=3.0, momentum=0.0, loss="mse", validation_split=0.25, verbose=0)

    stopped = copy.deepcopy(start)
    h = deepstep.fit(stopped, (x, y), epochs=20, early_stopping=2, **kw)
    assert h.epochs == [1, 2, 3]
    vl = h.history["val_loss"]
    assert vl[0] < vl[1] < vl[2]

    one = copy.deepcopy(start)
    deepstep.fit(one, (x, y), epochs=1, **kw)
    for a, b in zip(stopped.parameters(), one.parameters()):
        assert torch.equal(a, b)

    # without early stopping it runs all epochs and keeps the last weights
    full = copy.deepcopy(start)
    h_full = deepstep.fit(full, (x, y), epochs=4, **kw)
    assert h_full.epochs == [1, 2, 3, 4]
    assert not torch.equal(full.weight, one.weight)


def test_fit_is_reproducible_with_a_seed():
    x, y = _blobs()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    ha = deepstep.fit(a, (x, y), epochs=2, batch_size=16, validation_split=0.2, seed=3, verbose=0)
    hb = deepstep.fit(b, (x, y), epochs=2, batch_size=16, validation_split=0.2, seed=3, verbose=0)
    assert ha.history == hb.history
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_fit_user_errors():
    x, y = _blobs(30)
    net = nn.Linear(2, 3)
    with pytest.raises(UserError, match="loss"):
        deepstep.fit(net, (x, y), epochs=1, loss="hinge", verbose=0)
    with pytest.raises(UserError, match="optimizer"):
        deepstep.fit(net, (x, y), epochs=1, optimizer="adagrad", verbose=0)
    with pytest.raises(UserError, match="integer class labels"):
        deepstep.fit(net, (x, y.float() + 0.5), epochs=1, verbose=0)
    with pytest.raises(UserError, match="validation_split"):
        deepstep.fit(net, (x, y), epochs=1, early_stopping=2, verbose=0)
    with pytest.raises(UserError, match=r"\(2,\)"):
        deepstep.fit(nn.Linear(5, 3), (x, y), epochs=1, verbose=0)  # shape error names the example shape
