"""Over/underfitting diagnosis: the learning-curve lesson made automatic.

At the end of every run with at least 2 epochs, the `diagnosis` plug-in reads the epoch records of
metrics.jsonl (step records, which have no "epoch", are ignored) and writes
`summary["diagnosis"] = {"label", "evidence", "remedies"}`; with `verbose` it prints one line with
the label and the first remedy. `diagnose()` is a pure function of the records and the summary.

Which epoch is judged. A run that restored its best weights (`train.restore_best`: the summary has
`best_epoch`) ends with the model of that epoch, so "the end" below is the best epoch; otherwise it
is the last epoch. The trend at the end is always read from the last epochs that were trained.

Noise. The epoch-to-epoch noise of a curve is estimated robustly from its second differences: for
each inner epoch r = v[t] - (v[t-1] + v[t+1]) / 2 (a locally straight trend cancels out) and
sigma = 1.4826 * median|r| / sqrt(1.5) (for white noise of deviation s, r has deviation
s * sqrt(1.5); 1.4826 * median turns a median absolute value into a deviation). It needs 5 epochs;
with fewer, sigma is 0 and only the relative thresholds apply. The window of "the last epochs" is
k = clip(epochs // 5, 3, 10) epochs; its slope is the least-squares slope per epoch, and the change
across the window is slope * (k - 1).

Rules, checked in this order; the first that holds gives the label:

1. diverging: a train or val loss is NaN or infinite, or the train loss at the last epoch is above
   its minimum by more than max(50% of that minimum, 10% of the first epoch's train loss). Falling
   is what a train loss does whatever else goes wrong (even an overfitting model drives it to 0),
   so a clear rise means the optimization itself broke; the 10%-of-the-start guard keeps a train
   loss near 0 going from 0.001 to 0.002 from counting.
2. overfitting: at the end, the val loss is above its minimum by more than 10% of that minimum AND
   by more than 3 sigma (a rise its noise cannot explain), the minimum came at an earlier epoch,
   the train loss at the end is below the train loss at that minimum (it kept falling while the
   val loss rose: memorizing, not a worse optimizer), and the train-val gap at the end,
   val loss - train loss, is at least 20% of the val loss (the model fits its training data
   clearly better than new data). 10% is well above the epoch-to-epoch wobble of a healthy run
   (1-3% for the MLPs of the recipes) and below the doubling a memorizing run shows.
3. unstable: sigma is at least 10% of the median val loss: the val loss jumps from epoch to epoch
   by a tenth of its size around its own trend (a well-behaved run wobbles by 1-3%), typically a
   learning rate too high for the batch size.
4. still_improving: the val loss fell across the last k epochs by at least 2% of its final value
   and by more than 2 sigma: more epochs would still help (2% over a few epochs is a gain worth
   another run; the noise term keeps a wobble from counting).
5. underfitting (classification, where chance is known): the model does not fit even its
   training data, and that has stopped changing. Its train accuracy closes less than half of the
   distance from chance (1/num_classes) to perfect, (train_acc - 1/K) / (1 - 1/K) < 0.5 (with no
   train accuracy: the train loss is above half of the chance cross-entropy ln K), and the train
   loss fell less than 5% across the last k epochs (flat: training longer does not help, capacity
   or features are missing). Half of the way to perfect is a low bar that a model with enough
   capacity clears on its training split: the Fashion-MNIST MLPs of the recipes reach train
   accuracy 0.90 (regularized, skill 0.89) and 1.0 (overfit), while logistic regression on
   MNIST-1D stays at 0.37 (skill 0.30). Tasks without classes (regression, forecasting) have no
   chance level, so underfitting is not judged for them.
6. good_fit otherwise.

Runs without a val/loss (RL: val/return_mean or rollout/return; GAN: val/frechet; autoencoders
and VAEs: val/recon_loss, val/neg_elbo) are judged on
the monitored metric (train.monitor, or the first of val/return_mean, rollout/return present)
alone, in the direction it improves: `unstable` (rule 3 on that metric, sigma against its median
absolute value), `still_improving` (rule 4) or `good_fit`. Their train losses are no counterpart
of that metric (a GAN's losses are a game, an RL loss moves with the data the policy collects, a
VAE's train/loss weighs the KL term by gen.beta, its val/neg_elbo by 1), so overfitting and underfitting are
not judged. A run with neither a val/loss nor 2 finite values of
such a metric gets no diagnosis (`diagnose` returns label None and the plug-in adds nothing).

Evidence (rounded to 4 significant digits): epochs, judged_epoch, best_epoch, val_loss_min,
val_loss_min_epoch, val_loss_end, val_loss_rise (absolute), val_loss_rise_rel (relative to the
minimum), val_loss_noise (sigma), val_loss_slope_end (per epoch over the last `window` epochs),
val_loss_change_end_rel, train_loss_end, train_loss_min, gap_end and gap_best (val loss - train
loss at the judged and the best epoch), train_acc_end, val_acc_end, train_skill, the monitored
metric's value, chance (1/num_classes) and above_chance, and `vs_baseline/<metric>` (the test
metric minus `baseline/*` of the summary) when the run has a baseline. `reason` says in words
which rule fired.

Remedies are commands to copy, `deepstep train RECIPE --set KEY=VALUE`, chosen by the label and
only for keys the run's config and model have (model.dropout only for models with a dropout
option, data.augment only for images): overfitting -> more dropout, weight decay, augmentation,
early stopping with the best weights restored, more data (when data.train_limit/limit cut it);
underfitting -> a bigger model (or model.name=mlp for linear), less regularization, more epochs;
diverging -> a 10x lower learning rate, gradient clipping; unstable -> a 3x lower learning rate, a
larger batch, gradient clipping; still_improving -> twice the epochs; good_fit -> none.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..engine.logs import monitor_mode
from ..engine.plugin import Plugin
from ..registry import PLUGINS, model_options

LABELS = ("good_fit", "overfitting", "underfitting", "diverging", "unstable", "still_improving")

DIVERGE_REL, DIVERGE_START = 0.5, 0.1
OVERFIT_RISE, OVERFIT_SIGMAS, OVERFIT_GAP = 0.10, 3.0, 0.20
UNSTABLE_NOISE = 0.10
IMPROVING_REL, IMPROVING_SIGMAS = 0.02, 2.0
UNDERFIT_SKILL, UNDERFIT_CE, UNDERFIT_FLAT = 0.5, 0.5, 0.05
TREND_METRICS = ("val/return_mean", "rollout/return")


def _r(x: Any) -> Any:
    if isinstance(x, float):
        return float(f"{x:.4g}") if math.isfinite(x) else x
    return x


def _noise(v: np.ndarray) -> float:
    if len(v) < 5:
        return 0.0
    r = v[1:-1] - (v[:-2] + v[2:]) / 2
    return float(1.4826 * np.median(np.abs(r)) / math.sqrt(1.5))


def _window(n: int) -> int:
    return int(min(10, max(3, n // 5)))


def _slope(v: np.ndarray) -> float:
    if len(v) < 2:
        return 0.0
    t = np.arange(len(v), dtype=float)
    return float(np.polyfit(t, v, 1)[0])


def _series(epochs: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) if isinstance(r.get(key), (int, float)) else math.nan for r in epochs])


def _cmd(recipe: str, *sets: str) -> str:
    return "deepstep train " + (recipe or "RECIPE") + "".join(" --set " + shlex.quote(s) for s in sets)


def _toml(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def remedies(label: str, recipe: str, settings: Mapping[str, Any] | None = None, epochs: int = 0) -> list[str]:
    """Commands to copy for `label`. `settings`: the run's current values by dotted key
    ("model.dropout": 0.0, ...); a key it lacks gets no remedy (None: every key is allowed)."""
    s = settings

    def has(key: str) -> bool:
        return s is None or key in s

    def cur(key: str, default: Any = None) -> Any:
        return default if s is None else s.get(key, default)

    out: list[list[str]] = []
    if label == "overfitting":
        if has("model.dropout"):
            d = float(cur("model.dropout", 0.0) or 0.0)
            if d < 0.5:
                out.append([f"model.dropout={max(0.3, round(d + 0.2, 2)):g}"])
        if has("optim.weight_decay"):
            wd = float(cur("optim.weight_decay", 0.0) or 0.0)
            out.append([f"optim.weight_decay={(wd * 10 if wd else 1e-4):g}"])
        if has("data.augment") and cur("data.augment", "") != "flip+shift":
            out.append(["data.augment=flip+shift"])
        if has("train.early_stop") and not cur("train.early_stop", 0):
            sets = ["train.early_stop=5"]
            if has("train.restore_best") and cur("train.restore_best", True) is False:
                sets.append("train.restore_best=true")
            out.append(sets)
        for key in ("data.train_limit", "data.limit"):
            if has(key) and cur(key, 0):
                out.append([f"{key}=0"])  # all the training data there is
    elif label == "underfitting":
        name = cur("model.name", "")
        if name == "linear":
            out.append(["model.name=mlp"])
        else:
            for key in ("model.hidden", "model.hidden_size", "model.dim", "model.widths", "model.channels"):
                if s is not None and key in s:
                    v = s[key]
                    if isinstance(v, (list, tuple)) and v:
                        out.append([f"{key}={_toml([int(x) * 2 for x in v])}"])
                    elif isinstance(v, int) and not isinstance(v, bool) and v > 0:
                        out.append([f"{key}={v * 2}"])
                    break
        if s is not None and float(s.get("model.dropout", 0) or 0) > 0:
            out.append(["model.dropout=0"])
        if s is not None and float(s.get("optim.weight_decay", 0) or 0) > 0:
            out.append(["optim.weight_decay=0"])
        if has("train.epochs"):
            out.append([f"train.epochs={2 * int(cur('train.epochs', epochs) or epochs or 10)}"])
    elif label in ("diverging", "unstable"):
        if has("optim.lr"):
            lr = float(cur("optim.lr", 1e-3) or 1e-3)
            out.append([f"optim.lr={lr / (10 if label == 'diverging' else 3):.2g}"])
        if label == "unstable" and has("train.batch_size"):
            out.append([f"train.batch_size={2 * int(cur('train.batch_size', 64) or 64)}"])
        if has("train.grad_clip") and not cur("train.grad_clip", 0):
            out.append(["train.grad_clip=1.0"])
    elif label == "still_improving":
        if has("train.epochs"):
            out.append([f"train.epochs={2 * int(cur('train.epochs', epochs) or epochs or 10)}"])
    return [_cmd(recipe, *sets) for sets in out]


def _chance(summary: dict, num_classes: int) -> float | None:
    k = num_classes or int(summary.get("num_classes", 0) or 0)
    return 1.0 / k if k >= 2 else None


def _baselines(summary: dict) -> dict:
    out = {}
    for key, value in summary.items():
        if key.startswith("baseline/") and isinstance(value, (int, float)):
            metric = key.split("/", 1)[1].rsplit("_", 1)[-1]  # baseline/scratch_acc -> acc
            test = summary.get(f"test/{metric}")
            if isinstance(test, (int, float)):
                out[f"vs_baseline/{metric}"] = _r(float(test) - float(value))
    return out


def _trend_only(epochs: list[dict], summary: dict, monitor: str, recipe: str,
                settings: Mapping[str, Any] | None) -> dict:
    key = monitor if any(isinstance(r.get(monitor), (int, float)) for r in epochs) else next(
        (k for k in TREND_METRICS if any(isinstance(r.get(k), (int, float)) for r in epochs)), None)
    m = _series(epochs, key) if key else np.array([])
    m = m[np.isfinite(m)]
    if len(m) < 2:
        return {"label": None, "evidence": {"epochs": len(epochs), "reason": "no val/loss and fewer than 2 "
                                            "finite values of the monitored metric: nothing to judge"},
                "remedies": []}
    sign = 1.0 if monitor_mode(key) == "min" else -1.0  # work on a "lower is better" curve
    v = sign * m
    k = _window(len(v))
    sigma, slope = _noise(v), _slope(v[-k:])
    change = slope * (k - 1)
    scale = max(float(np.median(np.abs(v))), 1e-12)
    ev = {"epochs": len(epochs), "metric": key, "metric_end": _r(float(m[-1])),
          "metric_best": _r(float(sign * v.min())), "metric_noise": _r(sigma),
          "metric_noise_rel": _r(sigma / scale), "window": k,
          "metric_change_end_rel": _r(-change / max(abs(float(v[-1])), 1e-12)), **_baselines(summary)}
    if sigma >= UNSTABLE_NOISE * scale:
        label, reason = "unstable", f"{key} jumps by {sigma / scale:.0%} of its size from epoch to epoch"
    elif -change >= IMPROVING_REL * abs(float(v[-1])) and -change > IMPROVING_SIGMAS * sigma:
        label, reason = "still_improving", f"{key} still improving over the last {k} epochs"
    else:
        label, reason = "good_fit", f"{key} settled (judged on the monitored metric only: no val/loss)"
    ev["reason"] = reason
    return {"label": label, "evidence": ev, "remedies": remedies(label, recipe, settings, len(epochs))}


def diagnose(records: list[dict], summary: dict, task: str, recipe: str, monitor: str, *,
             num_classes: int = 0, settings: Mapping[str, Any] | None = None) -> dict:
    """The label of a finished run's learning curves, the numbers behind it and remedies to copy
    (the rules are in this module's docstring).

    Args:
        records: metrics.jsonl records; only epoch records (those with "epoch") are read.
        summary: the run's summary (best_epoch, test metrics, baseline/* keys).
        task: the task name ("classify", "ppo", ...); classification-only rules need classes.
        recipe: recipe name, for the remedy commands.
        monitor: train.monitor, e.g. "val/acc".
        num_classes: classes of a classification run (1/num_classes is chance; 0: unknown).
        settings: the run's config values by dotted key; remedies use only keys it holds.

    Returns:
        {"label": one of LABELS (None: nothing to judge), "evidence": {...}, "remedies": [str]}.
    """
    # the last record of each epoch (a resumed run may have logged an epoch twice), in order
    epochs = sorted({int(r["epoch"]): r for r in records if "epoch" in r}.values(), key=lambda r: int(r["epoch"]))
    if not any(isinstance(r.get("val/loss"), (int, float)) for r in epochs):
        return _trend_only(epochs, summary, monitor, recipe, settings)
    bad = [int(r["epoch"]) for r in epochs if any(
        isinstance(r.get(key), (int, float)) and not math.isfinite(r[key]) for key in ("train/loss", "val/loss"))]
    epochs = [r for r in epochs if isinstance(r.get("val/loss"), (int, float))]  # epochs without validation: skipped
    n = len(epochs)
    val, train = _series(epochs, "val/loss"), _series(epochs, "train/loss")
    nums = [int(r["epoch"]) for r in epochs]
    has_train = bool(np.isfinite(train).any())
    chance = _chance(summary, num_classes if task in ("classify", "") or num_classes else 0)
    # the judged epoch: the restored best epoch, else the last one
    best_epoch = summary.get("best_epoch")
    j = nums.index(best_epoch) if best_epoch in nums else n - 1
    if best_epoch is None:
        mon = _series(epochs, monitor)
        if np.isfinite(mon).any():
            best_epoch = nums[int(np.nanargmin(mon) if monitor_mode(monitor) == "min" else np.nanargmax(mon))]
    ev: dict[str, Any] = {"epochs": n, "judged_epoch": nums[j], "best_epoch": best_epoch}

    def done(label: str, reason: str) -> dict:
        ev["reason"] = reason
        return {"label": label, "evidence": {k: _r(v) for k, v in ev.items()},
                "remedies": remedies(label, recipe, settings, n)}

    if bad:
        ev["non_finite_epochs"] = bad[:10]
        return done("diverging", f"non-finite loss at epoch {bad[0]}")
    k = _window(n)
    sigma = _noise(val)
    i_min = int(np.argmin(val))
    v_min, v_end = float(val[i_min]), float(val[j])
    rise = v_end - v_min
    slope = _slope(val[-k:])
    change_rel = -slope * (k - 1) / max(abs(float(val[-1])), 1e-12)
    ev.update(val_loss_min=v_min, val_loss_min_epoch=nums[i_min], val_loss_end=v_end, val_loss_rise=rise,
              val_loss_rise_rel=rise / max(abs(v_min), 1e-12), val_loss_noise=sigma,
              val_loss_noise_rel=sigma / max(float(np.median(np.abs(val))), 1e-12), window=k,
              val_loss_slope_end=slope, val_loss_change_end_rel=change_rel)
    if has_train:
        t_min = float(np.nanmin(train))
        gap_end = v_end - float(train[j])
        b = nums.index(best_epoch) if best_epoch in nums else j
        ev.update(train_loss_end=float(train[j]), train_loss_min=t_min, gap_end=gap_end,
                  gap_best=float(val[b] - train[b]))
    for name in ("train/acc", "val/acc"):
        s = _series(epochs, name)
        if np.isfinite(s[j]):
            ev[name.replace("/", "_") + "_end"] = float(s[j])
    if isinstance(summary.get(monitor), (int, float)) or np.isfinite(_series(epochs, monitor)).any():
        mv = summary.get(monitor)
        mv = float(mv) if isinstance(mv, (int, float)) else float(_series(epochs, monitor)[j])
        ev["monitor"], ev["monitor_value"] = monitor, mv
    if chance is not None:  # the monitored accuracy's distance to chance (else the val accuracy's)
        ev["chance"] = chance
        acc = ev["monitor_value"] if monitor.endswith("/acc") and "monitor_value" in ev else ev.get("val_acc_end")
        if acc is not None:
            ev["above_chance"] = acc - chance
    ev.update(_baselines(summary))
    train_skill = None
    if chance is not None and "train_acc_end" in ev:
        train_skill = (ev["train_acc_end"] - chance) / (1 - chance)
        ev["train_skill"] = train_skill

    # 1. diverging
    if has_train:
        t_first, t_last = float(train[np.isfinite(train)][0]), float(train[np.isfinite(train)][-1])
        t_rise = t_last - t_min
        if t_rise > max(DIVERGE_REL * t_min, DIVERGE_START * t_first):
            ev["train_loss_rise"] = t_rise
            return done("diverging", f"train loss rose from its minimum {t_min:.4g} to {t_last:.4g}")
    # 2. overfitting
    if (has_train and i_min < j and rise > OVERFIT_RISE * abs(v_min) and rise > OVERFIT_SIGMAS * sigma
            and train[j] < train[i_min] and ev["gap_end"] >= OVERFIT_GAP * v_end):
        return done("overfitting", f"val loss rose {rise / abs(v_min):.0%} above its minimum at epoch "
                    f"{nums[i_min]} while the train loss kept falling (gap {ev['gap_end']:.3g})")
    # 3. unstable
    if n >= 5 and ev["val_loss_noise_rel"] >= UNSTABLE_NOISE:
        return done("unstable", f"val loss jumps by {ev['val_loss_noise_rel']:.0%} of its size from epoch to epoch")
    # 4. still improving
    if change_rel >= IMPROVING_REL and -slope * (k - 1) > IMPROVING_SIGMAS * sigma:
        return done("still_improving", f"val loss fell {change_rel:.1%} over the last {k} epochs")
    # 5. underfitting
    if chance is not None and has_train:
        t_window = train[-k:]
        flat = (float(t_window[0]) - float(t_window[-1])) < UNDERFIT_FLAT * abs(float(t_window[-1]))
        weak = (train_skill < UNDERFIT_SKILL if train_skill is not None
                else float(train[j]) > UNDERFIT_CE * math.log(1 / chance))
        if flat and weak:
            what = (f"train accuracy {ev['train_acc_end']:.3g} closes only {train_skill:.0%} of the way from "
                    f"chance {chance:.3g} to 1" if train_skill is not None
                    else f"train loss {float(train[j]):.3g} is above half of ln K")
            return done("underfitting", what + ", and the train loss is flat")
    return done("good_fit", "no rule fired: the val loss settled near its minimum with a modest gap")


def run_settings(cfg: Any, kind: str = "") -> dict[str, Any]:
    """The run's config as dotted keys that a remedy may name: the data, optim and train sections,
    model.name and the model factory's own options (data.augment only for image data)."""
    out: dict[str, Any] = {}
    for section in ("data", "optim", "train"):
        obj = getattr(cfg, section, None)
        for key, value in (vars(obj).items() if obj is not None else ()):
            out[f"{section}.{key}"] = value
    name = cfg.model.get("name", "")
    out["model.name"] = name
    try:
        opts = model_options(name)
    except Exception:  # an unknown model name: no model remedies
        opts = {}
    for key, p in opts.items():
        out[f"model.{key}"] = cfg.model.get(key, p.default)
    if kind != "image":
        out.pop("data.augment", None)
    return out


@PLUGINS.register("diagnosis", tags=("default",))
class Diagnosis(Plugin):
    """Labels the learning curves at the end (good_fit, overfitting, underfitting, diverging, unstable, still_improving) with the numbers behind the label and commands to try: summary["diagnosis"]."""

    name = "diagnosis"
    order = 40  # after best-weights: it reads best_epoch
    rank0_only = False  # every rank has the same records and writes the same summary

    def applies_to(self, run) -> bool:
        return int(run.cfg.train.epochs) >= 2

    def on_finish(self, run, summary: dict) -> None:
        meta = run.meta
        classes = len(meta.classes) if meta is not None and meta.classes else 0
        if not classes and meta is not None and run.cfg.task == "classify":
            classes = int(meta.num_outputs or 0)
        kind = meta.kind if meta is not None else ""
        result = diagnose(run.metrics(), summary, run.cfg.task, run.cfg.recipe, run.cfg.train.monitor,
                          num_classes=classes, settings=run_settings(run.cfg, kind))
        if result["label"] is None:
            return
        summary["diagnosis"] = result
        if run.verbose and run.is_main:
            first = result["remedies"][0] if result["remedies"] else "nothing to change"
            print(f"  diagnosis: {result['label']} ({result['evidence']['reason']}); try: {first}", flush=True)
