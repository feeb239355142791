"""The diagnosis plug-in: one synthetic learning curve per label, the remedies, and a real run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepstep.plugins.diagnosis import LABELS, diagnose, remedies

N = 30


def curve(val, train, train_acc=None, val_acc=None, steps=True):
    """Epoch records (with step records in between, which diagnose must ignore)."""
    out = []
    for i, (v, t) in enumerate(zip(val, train)):
        if steps:
            out.append({"step": 10 * i + 5, "train/loss": 1e6})  # a step record: no "epoch"
        r = {"epoch": i + 1, "step": 10 * (i + 1), "train/loss": float(t), "val/loss": float(v)}
        if train_acc is not None:
            r["train/acc"] = float(train_acc[i])
        if val_acc is not None:
            r["val/acc"] = float(val_acc[i])
        out.append(r)
    return out


def noise(scale, n=N, seed=0):
    return scale * np.random.default_rng(seed).standard_normal(n)


def run(records, summary=None, **kw):
    kw.setdefault("num_classes", 10)
    return diagnose(records, summary or {}, "classify", "my-recipe", kw.pop("monitor", "val/acc"), **kw)


t = np.arange(N, dtype=float)
SETTLED_TRAIN = 0.30 + 0.9 * np.exp(-t / 3)  # falls and levels off
GOOD_ACC = np.full(N, 0.9)


def test_good_fit():
    val = 0.33 + 0.9 * np.exp(-t / 3) + noise(0.002)
    d = run(curve(val, SETTLED_TRAIN, GOOD_ACC, GOOD_ACC))
    assert d["label"] == "good_fit", d["evidence"]
    assert d["remedies"] == []


def test_overfitting():
    train = 1.2 * np.exp(-t / 4)  # to ~0: memorizing
    val = 0.5 + 0.5 * (t / 8 - 1) ** 2 * (t < 8) + 0.03 * np.clip(t - 8, 0, None) + noise(0.003)
    d = run(curve(val, train, np.minimum(0.6 + t / 20, 1.0), GOOD_ACC))
    assert d["label"] == "overfitting", d["evidence"]
    ev = d["evidence"]
    assert ev["val_loss_min_epoch"] == pytest.approx(9, abs=1)
    assert ev["val_loss_rise_rel"] > 0.5 and ev["gap_end"] > 1.0
    assert any("model.dropout=" in r for r in d["remedies"])
    assert all(r.startswith("deepstep train my-recipe --set ") for r in d["remedies"])


def test_overfitting_but_best_weights_restored_is_judged_at_the_best_epoch():
    train = 1.2 * np.exp(-t / 4)
    val = 0.5 + 0.5 * (t / 8 - 1) ** 2 * (t < 8) + 0.03 * np.clip(t - 8, 0, None) + noise(0.003)
    records = curve(val, train, np.minimum(0.6 + t / 20, 1.0), GOOD_ACC)
    assert run(records)["label"] == "overfitting"
    d = run(records, {"best_epoch": 9})
    assert d["label"] != "overfitting" and d["evidence"]["judged_epoch"] == 9


def test_overfitting_needs_a_rise_above_the_noise():
    # the same 12% "rise" in a curve that jumps by about as much every epoch is no evidence
    val = 0.5 + 0.3 * np.abs(np.sin(t * 1.7))
    d = run(curve(val, 1.2 * np.exp(-t / 4), GOOD_ACC, GOOD_ACC))
    assert d["label"] != "overfitting"


def test_underfitting():
    train = 1.9 + 0.4 * np.exp(-t / 2)  # high and flat from epoch ~8 on
    val = 1.93 + 0.4 * np.exp(-t / 2) + noise(0.002)
    acc = np.full(N, 0.32)  # skill (0.32 - 0.1) / 0.9 = 0.24
    d = run(curve(val, train, acc, acc))
    assert d["label"] == "underfitting", d["evidence"]
    assert d["evidence"]["train_skill"] == pytest.approx(0.2444, abs=1e-3)
    assert d["evidence"]["chance"] == pytest.approx(0.1)
    # the same curves with a train accuracy of 0.9 are no underfitting
    assert run(curve(val, train, GOOD_ACC, acc))["label"] != "underfitting"


def test_underfitting_without_train_accuracy_uses_the_chance_loss():
    train = 2.0 + 0.3 * np.exp(-t / 2)  # ln 10 = 2.30: above half of it
    val = 2.02 + 0.3 * np.exp(-t / 2) + noise(0.002)
    assert run(curve(val, train))["label"] == "underfitting"
    assert run(curve(val - 1.8, train - 1.8))["label"] == "good_fit"


def test_diverging_non_finite():
    train = list(SETTLED_TRAIN[:10]) + [math.nan]
    val = list(0.33 + 0.9 * np.exp(-t[:10] / 3)) + [math.inf]
    d = run(curve(val, train))
    assert d["label"] == "diverging" and d["evidence"]["non_finite_epochs"] == [11]
    assert any("optim.lr=" in r for r in d["remedies"]) and any("train.grad_clip=1.0" in r for r in d["remedies"])


def test_diverging_rising_train_loss():
    train = np.concatenate([1.2 * np.exp(-t[:15] / 4), 0.2 * np.exp((t[15:] - 15) / 8)])  # back up to 1.15
    val = train + 0.05
    assert run(curve(val, train))["label"] == "diverging"


def test_unstable():
    val = 0.4 + 0.15 * (-1) ** t * (t > 2) + 0.6 * np.exp(-t / 2)  # jumps by 0.3 every epoch
    d = run(curve(val, SETTLED_TRAIN + 0.05, GOOD_ACC, GOOD_ACC))
    assert d["label"] == "unstable", d["evidence"]
    assert d["evidence"]["val_loss_noise_rel"] > 0.1
    assert any("train.batch_size=128" in r for r in d["remedies"])


def test_still_improving():
    val = 2.0 - 0.05 * t + noise(0.002)  # still falling 0.05 per epoch at the end
    train = val - 0.05
    d = run(curve(val, train, GOOD_ACC, GOOD_ACC), settings={"train.epochs": 30})
    assert d["label"] == "still_improving", d["evidence"]
    assert d["remedies"] == ["deepstep train my-recipe --set train.epochs=60"]


def test_trend_only_without_val_loss():
    rising = [{"epoch": i + 1, "val/return_mean": 20.0 + 15 * i} for i in range(10)]
    flat = [{"epoch": i + 1, "val/return_mean": 500.0 - (i % 2)} for i in range(10)]
    jumpy = [{"epoch": i + 1, "val/return_mean": 500.0 if i % 2 else 150.0} for i in range(10)]
    labels = [diagnose(r, {}, "ppo", "cartpole-ppo", "val/return_mean")["label"] for r in (rising, flat, jumpy)]
    assert labels == ["still_improving", "good_fit", "unstable"]
    # a GAN's val/frechet improves downwards
    falling = [{"epoch": i + 1, "val/frechet": 100.0 / (i + 1)} for i in range(10)]
    assert diagnose(falling, {}, "gan", "digits-gan", "val/frechet")["label"] == "still_improving"
    # nothing to judge: no diagnosis
    none = diagnose([{"epoch": 1, "train/d_loss": 1.0}], {}, "gan", "x", "val/frechet")
    assert none["label"] is None


def test_remedies_only_name_keys_the_run_has():
    linear = {"model.name": "linear", "train.epochs": 100, "optim.lr": 1e-3, "optim.weight_decay": 0.0}
    assert remedies("underfitting", "r", linear) == ["deepstep train r --set model.name=mlp",
                                                     "deepstep train r --set train.epochs=200"]
    mlp = {"model.name": "mlp", "model.hidden": [256, 128], "model.dropout": 0.2, "train.epochs": 10}
    assert remedies("underfitting", "r", mlp)[0] == "deepstep train r --set 'model.hidden=[512, 256]'"
    no_dropout = {"model.name": "linear", "optim.weight_decay": 0.0, "train.early_stop": 0}
    out = remedies("overfitting", "r", no_dropout)
    assert not any("dropout" in r or "augment" in r for r in out) and out


def test_fit_adds_a_diagnosis():
    from deepstep.config import load_config
    from deepstep.engine.fit import fit

    run = fit(load_config("digits-mlp", ["train.epochs=3"]), verbose=0)
    d = run.summary["diagnosis"]
    assert d["label"] in LABELS
    assert isinstance(d["remedies"], list) and d["evidence"]["epochs"] == 3
    assert d["evidence"]["chance"] == pytest.approx(0.1)
