"""`deepstep.fit` set-up must not copy float32 inputs (bench/overhead.py found the copies cost a
second per Fashion-MNIST call), and skipping the identity normalization must not change results."""

from __future__ import annotations

import copy

import numpy as np
import torch

import deepstep
from deepstep.api import _arrays
from deepstep.config import DataConfig, OptimConfig, RunConfig, SchedConfig, TrainConfig
from deepstep.engine.runtime import Runtime
from deepstep.tasks.supervised import Supervised


def _task(x, y, normalize=False):
    cfg = RunConfig(task="classify", data=DataConfig(name="arrays", val_split=0.0, test_split=0.0, normalize=normalize),
                    model={"name": "custom"}, optim=OptimConfig(), sched=SchedConfig(),
                    train=TrainConfig(epochs=1, batch_size=16, monitor="val/loss"))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].size, 3))
    return Supervised(cfg, Runtime.from_config(cfg.train), arrays=_arrays(x, y, "cross_entropy"), model=net)


def _data(dtype):
    rng = np.random.default_rng(0)
    return rng.random((40, 1, 4, 4)).astype(dtype), rng.integers(0, 3, 40)


def test_float32_inputs_are_not_copied():
    x, y = _data(np.float32)
    assert y.dtype == np.int64
    task = _task(x, y)
    assert np.shares_memory(task.data["train"].x.numpy(), x)
    assert np.shares_memory(task.data["train"].y.numpy(), y)


def test_other_dtypes_and_normalization_still_convert():
    x, y = _data(np.float64)
    t = _task(x, y)
    assert t.data["train"].x.dtype == torch.float32 and not np.shares_memory(t.data["train"].x.numpy(), x)
    x32 = x.astype(np.float32)
    t = _task(x32, y, normalize=True)
    assert abs(t.data["train"].x.mean().item()) < 1e-5 and not np.shares_memory(t.data["train"].x.numpy(), x32)
    ro = x32.copy()
    ro.flags.writeable = False  # torch cannot share a read-only array: it must be copied
    assert not np.shares_memory(_task(ro, y).data["train"].x.numpy(), ro)


def test_fit_result_is_the_same_for_float32_and_float64_inputs():
    x, y = _data(np.float64)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    ha = deepstep.fit(a, (x, y), epochs=2, batch_size=8, verbose=0)  # converted (copied) path
    hb = deepstep.fit(b, (x.astype(np.float32), y), epochs=2, batch_size=8, verbose=0)  # shared path
    assert ha.history == hb.history
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), net.parameters()))  # it trained
