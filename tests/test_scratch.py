"""Oracle tests for the hand-written NumPy backprop: torch autograd, finite differences, and a
real training run on scikit-learn digits."""

from __future__ import annotations

import doctest
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepstep.scratch import TwoLayerNet, digits_demo, numpy_net


def _batch(n=13, d=7, k=5, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, k, size=n)


def _torch_loss_and_grads(net: TwoLayerNet, x: np.ndarray, y: np.ndarray):
    """The same network written with torch ops in float64, differentiated by autograd."""
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in net.params.items()}
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    act = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}[net.activation]
    z2 = act(xt @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
    if net.output == "softmax":
        loss = F.cross_entropy(z2, yt)
    else:
        onehot = F.one_hot(yt, z2.shape[1]).double()
        loss = 0.5 * ((torch.sigmoid(z2) - onehot) ** 2).sum(1).mean()
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in p.items()}


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_gradients_match_torch_autograd(activation, output):
    x, y = _batch()
    net = TwoLayerNet(7, 6, 5, activation=activation, output=output, seed=3)
    # biases start at zero; make them non-zero so their gradients are exercised through every term
    net.params["b1"] += np.linspace(-0.5, 0.5, 6)
    net.params["b2"] += np.linspace(0.3, -0.3, 5)
    loss, grads = net.loss_and_grads(x, y)
    t_loss, t_grads = _torch_loss_and_grads(net, x, y)
    assert abs(loss - t_loss) < 1e-10
    assert set(grads) == set(t_grads) == set(net.params)
    for k in net.params:
        assert grads[k].shape == net.params[k].shape
        assert np.abs(grads[k] - t_grads[k]).max() < 1e-6, k
        assert np.abs(grads[k]).max() > 1e-4, k  # a zero gradient would match trivially


def test_forward_matches_torch():
    x, _ = _batch()
    net = TwoLayerNet(7, 6, 5, seed=0)
    p = {k: torch.tensor(v) for k, v in net.params.items()}
    ref = torch.softmax(torch.sigmoid(torch.tensor(x) @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"], dim=1)
    assert np.abs(net.forward(x) - ref.numpy()).max() < 1e-12
    np.testing.assert_allclose(net.forward(x).sum(1), 1.0)


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_gradients_match_finite_differences(output):
    x, y = _batch(n=4, d=3, k=2, seed=7)
    net = TwoLayerNet(3, 4, 2, output=output, seed=5)
    _, grads = net.loss_and_grads(x, y)
    eps = 1e-6
    for k, w in net.params.items():
        numeric = np.zeros_like(w)
        for i in np.ndindex(w.shape):
            old = w[i]
            w[i] = old + eps
            up, _ = net.loss_and_grads(x, y)
            w[i] = old - eps
            down, _ = net.loss_and_grads(x, y)
            w[i] = old
            numeric[i] = (up - down) / (2 * eps)
        err = np.abs(grads[k] - numeric).max() / max(1e-8, np.abs(numeric).max())
        assert err < 1e-6, (k, err)


def test_step_is_plain_sgd():
    x, y = _batch()
    net = TwoLayerNet(7, 6, 5, seed=0)
    before = {k: v.copy() for k, v in net.params.items()}
    loss, grads = net.loss_and_grads(x, y)
    net.step(grads, lr=0.1)
    for k in before:
        np.testing.assert_allclose(net.params[k], before[k] - 0.1 * grads[k])
    assert net.loss_and_grads(x, y)[0] < loss  # a small step downhill lowers the loss


def test_digits_reaches_90_percent_quickly():
    t0 = time.perf_counter()
    r = digits_demo(seed=0)
    assert time.perf_counter() - t0 < 10
    assert r["train_size"] + r["test_size"] == 1797 and abs(r["train_size"] - r["test_size"]) <= 1
    assert r["test_acc"] >= 0.90, r


def test_same_seed_same_result_and_float64():
    a, b = TwoLayerNet(4, 3, 2, seed=11), TwoLayerNet(4, 3, 2, seed=11)
    assert all(a.params[k].dtype == np.float64 for k in a.params)
    x, y = _batch(n=20, d=4, k=2)
    assert a.fit(x, y, epochs=3, lr=0.1, batch_size=8) == b.fit(x, y, epochs=3, lr=0.1, batch_size=8)
    assert a.predict(x).shape == (20,)


def test_bad_activation_is_a_clear_error():
    with pytest.raises(ValueError, match="activation = 'gelu'.*sigmoid"):
        TwoLayerNet(2, 2, 2, activation="gelu")


def test_docstring_examples_run():
    result = doctest.testmod(numpy_net)
    assert result.attempted > 0 and result.failed == 0


def test_cli_scratch_prints_digits_result(capsys):
    from deepstep.cli import main

    assert main(["scratch", "--epochs", "5"]) == 0
    out = capsys.readouterr().out
    acc = float(out.split("test acc ")[1].split()[0])
    assert "898 train / 899 test" in out and 0.5 < acc <= 1.0
    assert main(["scratch", "--lr", "-1"]) == 2
    assert "--lr positive" in capsys.readouterr().err
