"""deepstep.fit at Keras's level, over the engine's one `fit()`: validation_data, callbacks
(Plugins and Keras-style objects, stopping), Dataset/DataLoader input, torch loss and optimizer
objects, checked metric names, run_dir and History.run, label and NaN checks, deepstep.summary."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import deepstep
from deepstep.engine.plugin import Plugin
from deepstep.errors import UserError


def _blobs(n=120, seed=0):
    """Three separated Gaussian blobs in 2-D: x float32 (n, 2), y int64 (n,) in 0..2."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centers = torch.tensor([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    return centers[y] + 0.5 * torch.randn(n, 2, generator=g), y


def _net(seed=0, n_out=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, n_out))


def _linear_data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return x, x[:, :1] * 2.0 - x[:, 1:] + 0.3


def _same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _manual_steps(model, opt, loss_fn, x, y, steps):
    """Full-batch steps of a plain torch loop."""
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()


# --- 1. validation_data ---------------------------------------------------------------------

def test_validation_data_is_the_validation_split():
    x, y = _blobs(150)
    xv, yv = _blobs(60, seed=1)
    net = _net()
    h = deepstep.fit(net, (x, y), epochs=3, batch_size=32, lr=1e-2, validation_data=(xv, yv), verbose=0)
    assert h.epochs == [1, 2, 3]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1"):
        assert len(h.history[key]) == 3, key
    # all of data trains, all of validation_data is evaluated (nothing held out of either)
    assert h.run.meta.sizes == {"train": 150, "val": 60}
    m = deepstep.evaluate(net, (xv, yv))
    assert h.history["val_loss"][-1] == pytest.approx(m["loss"], rel=1e-5)
    assert h.history["val_accuracy"][-1] == pytest.approx(m["accuracy"])
    assert h.run.summary["val/loss"] == pytest.approx(m["loss"], rel=1e-5)


def test_validation_data_drives_early_stopping():
    """SGD far above 2/curvature: the validation loss grows every epoch, so patience 2 stops at epoch 3."""
    x, y = _linear_data(64)
    xv, yv = _linear_data(16, seed=1)
    h = deepstep.fit(nn.Linear(2, 1), (x, y), epochs=20, batch_size=64, optimizer="sgd", lr=3.0, momentum=0.0,
                     loss="mse", validation_data=(xv, yv), early_stopping=2, verbose=0)
    assert h.epochs == [1, 2, 3]
    assert h.run.summary["best_epoch"] == 1


def test_validation_data_errors():
    x, y = _blobs(30)
    with pytest.raises(UserError, match="either validation_split=0.2 .* or validation_data"):
        deepstep.fit(_net(), (x, y), epochs=1, validation_split=0.2, validation_data=(x, y), verbose=0)
    with pytest.raises(UserError, match=r"validation_data have shape \(3,\), but those of data \(2,\)"):
        deepstep.fit(_net(), (x, y), epochs=1, validation_data=(torch.randn(5, 3), y[:5]), verbose=0)
    with pytest.raises(UserError, match="validation_split > 0 .* or validation_data"):
        deepstep.fit(_net(), (x, y), epochs=1, early_stopping=2, verbose=0)


# --- 2. callbacks -------------------------------------------------------------------------------

class Recorder:
    """A plain Keras-style callback."""

    def __init__(self, stop_at=None, return_true_at=None):
        self.calls, self.logs = [], []
        self.stop_at, self.return_true_at = stop_at, return_true_at
        self.stop_training = False

    def on_train_begin(self, logs=None):
        self.calls.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(f"begin {epoch}")

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(f"end {epoch}")
        self.logs.append(dict(logs))
        if epoch == self.stop_at:
            self.stop_training = True
        return epoch == self.return_true_at

    def on_train_end(self, logs=None):
        self.calls.append("train_end")
        self.final = dict(logs)


class EngineRecorder(Plugin):
    """A deepstep plug-in sees the engine's own record names."""

    def __init__(self):
        self.records, self.summary = [], None

    def on_epoch_end(self, run, logs):
        self.records.append(dict(logs))
        return False

    def on_finish(self, run, summary):
        self.summary = dict(summary)
        summary["recorder/epochs"] = len(self.records)


def test_keras_callback_gets_keras_names_and_plugin_gets_engine_names():
    x, y = _blobs()
    keras, plugin = Recorder(), EngineRecorder()
    h = deepstep.fit(_net(), (x, y), epochs=3, batch_size=32, validation_split=0.25, callbacks=[keras, plugin],
                     verbose=0)
    assert keras.calls == ["train_begin", "begin 0", "end 0", "begin 1", "end 1", "begin 2", "end 2", "train_end"]
    assert set(keras.logs[0]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert not any("/" in k for k in keras.logs[0]), keras.logs[0]
    assert [lg["val_accuracy"] for lg in keras.logs] == h.history["val_accuracy"]
    assert [lg["loss"] for lg in keras.logs] == h.history["loss"]
    assert keras.final["val_loss"] == pytest.approx(h.run.summary["val/loss"])
    assert [r["epoch"] for r in plugin.records] == [1, 2, 3]
    assert plugin.records[0]["train/loss"] == h.history["loss"][0]
    assert plugin.records[0]["val/acc"] == h.history["val_accuracy"][0]
    assert h.run.summary["recorder/epochs"] == 3  # a plug-in adds summary keys


@pytest.mark.parametrize("how", ["stop_training", "return_true"])
def test_keras_callback_stops_training(how):
    x, y = _blobs(60)
    cb = Recorder(stop_at=1) if how == "stop_training" else Recorder(return_true_at=1)
    h = deepstep.fit(_net(), (x, y), epochs=10, callbacks=[cb], verbose=0)
    assert h.epochs == [1, 2]
    assert h.run.summary["epochs"] == 2
    assert cb.calls[-1] == "train_end"


def test_bad_callback_is_a_user_error():
    x, y = _blobs(30)
    with pytest.raises(UserError, match=r"callbacks\[1\] .*int.* neither a deepstep Plugin nor a Keras-style"):
        deepstep.fit(_net(), (x, y), epochs=1, callbacks=[Recorder(), 42], verbose=0)
    with pytest.raises(UserError, match=r"the class Recorder; pass an instance: Recorder\(\)"):
        deepstep.fit(_net(), (x, y), epochs=1, callbacks=[Recorder], verbose=0)


# --- 3. Dataset and DataLoader input ----------------------------------------------------------

class PairDataset(Dataset):
    """A map-style dataset of (NumPy x, int y) pairs."""

    def __init__(self, x, y):
        self.x, self.y = x.numpy(), y.tolist()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@pytest.mark.parametrize("form", ["TensorDataset", "PairDataset", "DataLoader", "unbatched DataLoader"])
def test_dataset_and_dataloader_train_like_the_arrays(form):
    x, y = _blobs(90)
    xv, yv = _blobs(30, seed=1)
    wrap = {"TensorDataset": lambda a, b: TensorDataset(a, b),
            "PairDataset": PairDataset,
            "DataLoader": lambda a, b: DataLoader(TensorDataset(a, b), batch_size=7),
            "unbatched DataLoader": lambda a, b: DataLoader(TensorDataset(a, b), batch_size=None)}[form]
    a, b = _net(), _net()
    kw = dict(epochs=2, batch_size=16, lr=1e-2, verbose=0)
    ha = deepstep.fit(a, (x, y), validation_data=(xv, yv), **kw)
    hb = deepstep.fit(b, wrap(x, y), validation_data=wrap(xv, yv), **kw)
    assert ha.history == hb.history
    assert _same_weights(a, b)
    assert hb.run.meta.sizes == {"train": 90, "val": 30}
    assert deepstep.evaluate(b, wrap(xv, yv)) == deepstep.evaluate(b, (xv, yv))


def test_other_inputs_are_a_clear_error():
    x, y = _blobs(30)
    accepted = r"must be \(x, y\) .* a torch Dataset of \(x, y\) pairs, or a DataLoader yielding \(x, y\) batches"
    with pytest.raises(UserError, match=accepted + r"; got a Tensor of shape \(30, 2\)"):
        deepstep.fit(_net(), x, epochs=1, verbose=0)
    with pytest.raises(UserError, match=accepted + r"; got a dict with keys \['x', 'y'\]"):
        deepstep.fit(_net(), {"x": x, "y": y}, epochs=1, verbose=0)
    with pytest.raises(UserError, match=accepted + r"; got a tuple of 3 items"):
        deepstep.fit(_net(), (x, y, y), epochs=1, verbose=0)
    with pytest.raises(UserError, match=r"a batch of the DataLoader is a Tensor of shape \(10, 2\), not an \(x, y\)"):
        deepstep.fit(_net(), DataLoader(x, batch_size=10), epochs=1, verbose=0)
    with pytest.raises(UserError, match=r"validation_data must be .*; got a Tensor"):
        deepstep.fit(_net(), (x, y), epochs=1, validation_data=x, verbose=0)


# --- 4. loss and optimizer objects ------------------------------------------------------------

@pytest.mark.parametrize("obj,name", [(nn.CrossEntropyLoss(), "cross_entropy"), (nn.CrossEntropyLoss, "cross_entropy"),
                                      (F.cross_entropy, "cross_entropy"), (nn.MSELoss(), "mse"), (nn.L1Loss(), "l1"),
                                      (nn.HuberLoss(), "huber"), (nn.SmoothL1Loss(), "huber"), (F.mse_loss, "mse"),
                                      ("mae", "l1")])
def test_torch_losses_map_to_the_engine_names(obj, name):
    if name == "cross_entropy":
        (x, y), start = _blobs(60), _net()
    else:
        (x, y), start = _linear_data(), nn.Linear(2, 1)
    a, b = copy.deepcopy(start), copy.deepcopy(start)
    kw = dict(epochs=2, batch_size=16, optimizer="sgd", lr=0.05, verbose=0)
    ha = deepstep.fit(a, (x, y), loss=obj, **kw)
    hb = deepstep.fit(b, (x, y), loss=name, **kw)
    assert ha.history == hb.history and _same_weights(a, b)
    assert ha.run.meta.loss == name


def test_sum_reduction_is_kept_for_the_step():
    """nn.MSELoss(reduction='sum'): the engine's step equals a plain torch step on the summed loss,
    and the reported training loss is that sum (the validation loss stays a mean)."""
    x, y = _linear_data(16)
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    start, manual = copy.deepcopy(model), copy.deepcopy(model)
    _manual_steps(manual, torch.optim.SGD(manual.parameters(), lr=0.01), nn.MSELoss(reduction="sum"), x, y, 1)
    h = deepstep.fit(model, (x, y), epochs=1, batch_size=16, optimizer=torch.optim.SGD, lr=0.01,
                     loss=nn.MSELoss(reduction="sum"), validation_data=(x, y), verbose=0)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(model.parameters(), manual.parameters()))
    assert h.history["loss"][0] == pytest.approx(F.mse_loss(start(x), y, reduction="sum").item(), rel=1e-5)
    assert h.history["val_loss"][0] == pytest.approx(F.mse_loss(manual(x), y).item(), rel=1e-5)
    # with the default reduction the step is 16 times smaller
    mean = copy.deepcopy(start)
    deepstep.fit(mean, (x, y), epochs=1, batch_size=16, optimizer=torch.optim.SGD, lr=0.01, loss=nn.MSELoss(),
                 verbose=0)
    d_sum, d_mean = (manual.weight - start.weight).detach(), (mean.weight - start.weight).detach()
    assert torch.allclose(d_sum, 16 * d_mean, rtol=1e-4)


def test_label_smoothing_of_cross_entropy_loss_is_used():
    x, y = _blobs(48)
    start = _net()
    with torch.no_grad():
        start[2].weight *= 10  # confident logits, where smoothing matters
    h = deepstep.fit(copy.deepcopy(start), (x, y), epochs=1, batch_size=48, optimizer="sgd", lr=1e-9,
                     loss=nn.CrossEntropyLoss(label_smoothing=0.2), verbose=0)
    assert h.run.cfg.train.label_smoothing == 0.2
    want = F.cross_entropy(start(x), y, label_smoothing=0.2).item()
    assert h.history["loss"][0] == pytest.approx(want, rel=1e-5)
    assert abs(want - F.cross_entropy(start(x), y).item()) > 1e-3  # smoothing changes the loss


@pytest.mark.parametrize("loss,message", [
    (nn.NLLLoss(), r"nn.NLLLoss\(\) is not supported. Supported: the names 'cross_entropy', 'mse', 'l1', 'huber'.*"
                   r"nn.CrossEntropyLoss\(\), nn.MSELoss\(\), nn.L1Loss\(\), nn.HuberLoss\(\).*on the logits"),
    (nn.BCEWithLogitsLoss(), r"BCEWithLogitsLoss\(\) is not supported.*give the model 2 outputs"),
    (nn.MSELoss(reduction="none"), r"MSELoss\(reduction='none'\) gives one loss per example.*'mean' .* or 'sum'"),
    (nn.CrossEntropyLoss(weight=torch.ones(3)), "class weights are not supported"),
    (nn.HuberLoss(delta=2.0), r"HuberLoss\(delta=2.0\) is not supported; the engine's 'huber' loss has delta = 1.0"),
    (lambda out, y: (out - y).abs().mean(), r"loss <lambda> is not supported. Supported: the names"),
    ("hinge", r"unknown loss 'hinge'. Supported: the names 'cross_entropy'"),
])
def test_unsupported_losses_are_rejected(loss, message):
    x, y = _blobs(30)
    with pytest.raises(UserError, match=message):
        deepstep.fit(_net(), (x, y), epochs=1, loss=loss, verbose=0)


def test_optimizer_class_gets_torch_defaults_and_fits_settings():
    x, y = _linear_data()
    torch.manual_seed(0)
    start = nn.Linear(2, 1)
    # SGD class: torch's momentum 0 (not the name's 0.9), fit's lr: one step equals torch's
    model, manual = copy.deepcopy(start), copy.deepcopy(start)
    _manual_steps(manual, torch.optim.SGD(manual.parameters(), lr=0.1), nn.MSELoss(), x, y, 1)
    h = deepstep.fit(model, (x, y), epochs=1, batch_size=32, optimizer=torch.optim.SGD, lr=0.1, loss="mse", verbose=0)
    assert (h.run.cfg.optim.name, h.run.cfg.optim.momentum, h.run.cfg.optim.lr) == ("sgd", 0.0, 0.1)
    assert all(torch.allclose(p, q, atol=1e-7) for p, q in zip(model.parameters(), manual.parameters()))
    h = deepstep.fit(copy.deepcopy(start), (x, y), epochs=1, optimizer=torch.optim.AdamW, loss="mse", verbose=0)
    assert (h.run.cfg.optim.name, h.run.cfg.optim.weight_decay, h.run.cfg.optim.lr) == ("adamw", 0.01, 1e-3)
    h = deepstep.fit(copy.deepcopy(start), (x, y), epochs=1, optimizer=torch.optim.RMSprop, loss="mse", verbose=0)
    assert (h.run.cfg.optim.name, h.run.cfg.optim.lr, h.run.cfg.optim.momentum) == ("rmsprop", 0.01, 0.0)


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=1e-3),
    lambda p: torch.optim.AdamW(p, lr=0.02, betas=(0.85, 0.99), weight_decay=0.1),
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, weight_decay=1e-2, nesterov=True),
    lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-5, momentum=0.3, weight_decay=1e-3),
])
def test_optimizer_instance_settings_are_used(make):
    """The engine builds a fresh optimizer with the instance's settings: 3 full-batch steps equal
    3 steps of a plain torch loop with the same optimizer."""
    x, y = _linear_data()
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    manual = copy.deepcopy(model)
    opt = make(model.parameters())
    h = deepstep.fit(model, (x, y), epochs=3, batch_size=32, optimizer=opt, loss="mse", verbose=0)
    _manual_steps(manual, make(manual.parameters()), nn.MSELoss(), x, y, 3)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(model.parameters(), manual.parameters()))
    g, o = opt.param_groups[0], h.run.cfg.optim
    assert o.lr == g["lr"] and o.weight_decay == g["weight_decay"]
    assert o.name == type(opt).__name__.lower()


def test_unsupported_optimizers_are_rejected():
    x, y = _blobs(30)
    net = _net()
    with pytest.raises(UserError, match=r"optimizer class Adagrad is not supported. Supported: the names 'sgd', "
                                        r"'adam', 'adamw', 'rmsprop', the classes torch.optim.SGD"):
        deepstep.fit(net, (x, y), epochs=1, optimizer=torch.optim.Adagrad, verbose=0)
    with pytest.raises(UserError, match=r"optimizer a torch.optim.adagrad.Adagrad instance is not supported"):
        deepstep.fit(net, (x, y), epochs=1, optimizer=torch.optim.Adagrad(net.parameters()), verbose=0)
    with pytest.raises(UserError, match=r"Adam\(amsgrad=True\) is not supported"):
        deepstep.fit(net, (x, y), epochs=1, optimizer=torch.optim.Adam(net.parameters(), amsgrad=True), verbose=0)
    with pytest.raises(UserError, match="parameters that are not the model's"):
        deepstep.fit(net, (x, y), epochs=1, optimizer=torch.optim.Adam(nn.Linear(2, 3).parameters()), verbose=0)
    with pytest.raises(UserError, match=r"leaves out 2 trainable parameters of the model \(0.weight, 0.bias\)"):
        deepstep.fit(net, (x, y), epochs=1, optimizer=torch.optim.Adam(net[2].parameters()), verbose=0)
    with pytest.raises(UserError, match="carries its own lr"):
        deepstep.fit(net, (x, y), epochs=1, optimizer=torch.optim.Adam(net.parameters()), lr=0.1, verbose=0)
    groups = [{"params": net[0].parameters(), "lr": 0.1}, {"params": net[2].parameters(), "lr": 0.01}]
    with pytest.raises(UserError, match="parameter groups differ in lr"):
        deepstep.fit(net, (x, y), epochs=1, optimizer=torch.optim.SGD(groups), verbose=0)


# --- 5. metrics ------------------------------------------------------------------------------

def test_metric_names_are_checked():
    x, y = _blobs(60)
    with pytest.raises(UserError, match=r"metric 'f1' is not supported. Valid metrics for classification "
                                        r"\(loss='cross_entropy'\): accuracy, acc, macro_f1"):
        deepstep.fit(_net(), (x, y), epochs=1, metrics=("f1",), verbose=0)
    with pytest.raises(UserError, match="'accuracy' is a classification metric.*Valid metrics for regression "
                                        r"\(loss='mse'\): mae, rmse"):
        deepstep.fit(nn.Linear(2, 1), _linear_data(), epochs=1, loss="mse", metrics=["accuracy"], verbose=0)
    h = deepstep.fit(_net(), (x, y), epochs=1, metrics="acc", verbose=0)  # an alias, a single name
    assert "accuracy" in h.history
    h = deepstep.fit(nn.Linear(2, 1), _linear_data(), epochs=1, loss="mse", metrics=("mae", "rmse"),
                     validation_split=0.25, verbose=0)
    assert set(h.history) >= {"loss", "val_loss", "val_mae", "val_rmse"} and "accuracy" not in h.history
    h = deepstep.fit(nn.Linear(2, 1), _linear_data(), epochs=1, loss="mse", verbose=0)  # default: none
    assert "accuracy" not in h.history


# --- 6. run_dir and History.run ---------------------------------------------------------------

def test_run_dir_holds_the_full_run(tmp_path):
    from deepstep.plugins.csv_log import CSVLog

    x, y = _blobs()
    net = _net()
    path = tmp_path / "run"
    h = deepstep.fit(net, (x, y), epochs=2, batch_size=32, validation_split=0.25, run_dir=path,
                     callbacks=[CSVLog()], verbose=0)
    assert h.run.path == path
    for f in ("config.toml", "meta.json", "metrics.jsonl", "summary.json", "model.safetensors", "checkpoint.pt",
              "metrics.csv"):
        assert (path / f).is_file(), f
    summary = json.loads((path / "summary.json").read_text())
    assert summary["val/loss"] == pytest.approx(h.history["val_loss"][-1]) == pytest.approx(h.run.summary["val/loss"])
    assert summary["epochs"] == 2
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert [r["val/acc"] for r in records if "epoch" in r] == h.history["val_accuracy"]
    weights = load_file(path / "model.safetensors")
    for k, v in net.state_dict().items():
        assert torch.equal(weights[f"model.{k}"], v), k
    assert len((path / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs
    # in memory: a Run without a directory
    h2 = deepstep.fit(_net(), (x, y), epochs=1, verbose=0)
    assert h2.run.path is None and h2.run.summary["epochs"] == 1
    assert "run" not in repr(h2)


# --- 7. labels and non-finite inputs ----------------------------------------------------------

def test_bad_labels_are_clear_user_errors():
    x, y = _blobs(30)
    net = _net()  # 3 outputs
    need = r"needs integer class labels 0..C-1 as y, where C = the model's output width \(3 here\)"
    with pytest.raises(UserError, match=need + r"; but y holds the labels 3, 4 \(20 examples\)\. Give the model 5 outputs"):
        deepstep.fit(net, (x, y + 2), epochs=1, verbose=0)
    with pytest.raises(UserError, match=need + r"; but y holds the labels -1 \(10 examples\)"):
        deepstep.fit(net, (x, y - 1), epochs=1, verbose=0)
    with pytest.raises(UserError, match=r"y holds strings \('cat', 'dog', 'eel', \.\.\.\)\. Map them to integers"):
        deepstep.fit(net, (x, np.array(["cat", "dog", "eel"] * 10)), epochs=1, verbose=0)
    with pytest.raises(UserError, match=r"y of validation_data, where C = the model's output width \(3 here\); but "
                                        r"y of validation_data holds the labels 7"):
        deepstep.fit(net, (x, y), epochs=1, validation_data=(x[:4], torch.tensor([0, 1, 2, 7])), verbose=0)
    with pytest.raises(UserError, match=r"shape \(30, 3\)\. For one-hot labels pass y.argmax\(1\)"):
        deepstep.fit(net, (x, F.one_hot(y)), epochs=1, verbose=0)


def test_non_finite_inputs_are_clear_user_errors():
    x, y = _blobs(30)
    bad = x.clone()
    bad[4, 1], bad[9, 0] = float("nan"), float("inf")
    with pytest.raises(UserError, match=r"x holds NaN or infinite values in 2 of 30 examples \(the first is example 4\)"):
        deepstep.fit(_net(), (bad, y), epochs=1, verbose=0)
    with pytest.raises(UserError, match=r"x of validation_data holds NaN or infinite values in 2 of 30"):
        deepstep.fit(_net(), (x, y), epochs=1, validation_data=(bad, y), verbose=0)
    xr, yr = _linear_data()
    yr[3] = float("nan")
    with pytest.raises(UserError, match=r"y holds NaN or infinite values in 1 of 32 examples \(the first is example 3\)"):
        deepstep.fit(nn.Linear(2, 1), (xr, yr), epochs=1, loss="mse", verbose=0)


def test_model_with_more_outputs_than_the_labels_present():
    """10 outputs, labels 0..2 only: the metrics count every class the model can predict."""
    x, y = _blobs(60)
    h = deepstep.fit(_net(n_out=10), (x, y), epochs=1, validation_split=0.25, verbose=0)
    assert h.run.meta.num_outputs == 10
    assert np.isfinite(h.history["val_macro_f1"][0])


# --- 8. summary -------------------------------------------------------------------------------

class Tied(nn.Module):
    """An embedding, an LSTM, a frozen layer, a raw parameter, tied weights and an unused layer."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.out = nn.Linear(8, 20, bias=False)
        self.out.weight = self.emb.weight  # tied: counted once
        self.scale = nn.Parameter(torch.ones(1))
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        h, _ = self.lstm(self.emb(x))
        return self.out(self.frozen(h[:, -1])) * self.scale


def test_summary_prints_layers_and_returns_the_totals():
    lines = []
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    net[1].eval()  # a deliberately frozen batch-norm stays in evaluation mode
    before = net[1].running_mean.clone()
    totals = deepstep.summary(net, (1, 8, 8), print_fn=lines.append)
    assert totals == {"total": 40 + 8 + 1450, "trainable": 1498, "non_trainable": 0}
    assert totals["total"] == sum(p.numel() for p in net.parameters())
    text = "\n".join(lines)
    rows = {line.split()[0]: line.split() for line in lines[4:8]}
    assert rows["0"] == ["0", "Conv2d", "(N,", "4,", "6,", "6)", "40", "yes"]
    assert rows["1"][:2] == ["1", "BatchNorm2d"] and rows["2"] == ["2", "Flatten", "(N,", "144)", "0", "-"]
    assert rows["3"] == ["3", "Linear", "(N,", "10)", "1,450", "yes"]
    assert "Total params: 1,498" in text and "Trainable params: 1,498" in text and "Non-trainable params: 0" in text
    assert net.training and not net[1].training  # every module's mode is kept
    assert torch.equal(net[1].running_mean, before)  # the probe ran in evaluation mode


def test_summary_of_tied_frozen_and_unused_modules(capsys):
    model = Tied()
    totals = deepstep.summary(model, (5,), dtype=torch.long)
    assert totals == {"total": sum(p.numel() for p in model.parameters()), "trainable": 1 + 160 + 576 + 12,
                      "non_trainable": 72}
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert rows["(model)"].split()[-2:] == ["1", "yes"]  # the raw parameter
    assert rows["lstm"].split()[2] == "[(N," and "(1, 2, 8)" in rows["lstm"]
    assert rows["frozen"].split()[-2:] == ["72", "no"]
    assert rows["out"].split()[-2:] == ["0", "-"]  # its weight is the embedding's, counted there
    assert "(not called)" in rows["unused"]
    assert "Non-trainable params: 72" in out


def test_summary_is_exported_and_reports_shape_errors():
    assert "summary" in deepstep.__all__ and deepstep.summary is deepstep.api.summary
    with pytest.raises(UserError, match=r"layer '0' \(Linear\) expects .* received a tensor of shape \(2, 3\)"):
        deepstep.summary(nn.Sequential(nn.Linear(4, 2)), (3,), print_fn=lambda s: None)


def test_precision_and_threads_can_be_pinned():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0).long()
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    pinned = deepstep.fit(copy.deepcopy(net), (x, y), epochs=1, verbose=0, precision="fp32", threads=1)
    assert pinned.run.summary["precision"] == "fp32" and "1 thread" in pinned.run.summary["device"]
    forced = deepstep.fit(copy.deepcopy(net), (x, y), epochs=1, verbose=0, precision="bf16", threads=1)
    assert forced.run.summary["precision"] == "bf16"
    with pytest.raises(UserError, match="precision"):
        deepstep.fit(copy.deepcopy(net), (x, y), epochs=1, verbose=0, precision="fp8")
