"""The learning-rate range test (L. Smith, "Cyclical Learning Rates for Training Neural Networks",
2017; fastai's `lr_find`): train for a few hundred steps while the rate grows exponentially from
`start_lr` to `end_lr`, smooth the loss, and suggest the rate where the smoothed loss falls
fastest (steepest descent against log rate), with the rate of the lowest loss divided by 10
beside it. The loss is smoothed by a bias-corrected moving average with beta 0.95 (fastai: 0.98):
over 200 steps spanning 8 decades, 0.98 averages over about 50 steps, two decades of rate, and
so shifts the curve, and the suggestion, to higher rates (measured on digits-mlp: 0.0073 with
0.98, 0.0035 with 0.95). `deepstep lr-find RECIPE` plots it; `--set optim.lr=auto` runs it before training
(`engine.fit.fit` resolves "auto" first, so config.toml records the rate used).

Departure from "one loop": the test is not training. It builds the recipe's task as `fit` does
and calls the task's own `batches` and `train_step`, setting the optimizer's rate before each
step, on a throwaway model: no checkpoints, evaluation, plug-ins or run directory, and it stops as
soon as the smoothed loss exceeds `diverge` times its minimum. The training that follows starts
from the seed again (its runtime reseeds), so it equals a run given the same rate by hand.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np

from ..config import RunConfig, SchedConfig
from ..errors import UserError
from ..registry import TASKS
from .checkpoint import atomic_write
from .optim import Optimization
from .runtime import Runtime


def lr_find(cfg: RunConfig, steps: int = 200, start_lr: float = 1e-7, end_lr: float = 10.0, beta: float = 0.95,
            diverge: float = 4.0, verbose: int = 1) -> dict:
    """Run the range test for `cfg` (its optimizer, batch size, model and data).

    Returns:
        {"lrs", "losses", "smoothed": per-step lists, "steepest": the suggestion, "minimum": the
        rate of the lowest smoothed loss, "min_10": minimum / 10, "stopped": why it ended early
        ("" when it ran all steps)}.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("The learning-rate finder runs in one process: run `deepstep lr-find RECIPE` first and "
                        "pass its rate (scaled for the global batch) with --set optim.lr=... under torchrun.")
    if steps < 20:
        raise UserError(f"--steps {steps} is too few for a range test: use at least 20 (default 200).")
    if not (0 < start_lr < end_lr) or not math.isfinite(end_lr):
        raise UserError(f"The range test needs 0 < start rate < end rate, got {start_lr:g} and {end_lr:g}.")
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=start_lr), sched=SchedConfig())
    task_cls = TASKS.get(cfg.task)
    task_cfg = task_cls.prepare(cfg, False, verbose)
    runtime = Runtime.from_config(cfg.train)
    task = task_cls(task_cfg, runtime)
    opt = getattr(task, "opt", None)
    if not isinstance(opt, Optimization):
        raise UserError(f"The learning-rate finder needs a task with one optimizer whose step reports "
                        f"train/loss (classify, regress, forecast, autoencode, vae); task '{cfg.task}' has "
                        f"{'several' if cfg.task == 'gan' else 'none of that kind'}.")
    groups = opt.optimizer.param_groups
    ratios = [g["lr"] / start_lr for g in groups]  # discriminative rates keep their proportions
    grow = (end_lr / start_lr) ** (1.0 / (steps - 1))
    lrs, losses, smoothed = [], [], []
    avg, best, stopped, epoch = 0.0, math.inf, "", 0
    task.train(True)
    while len(lrs) < steps and not stopped:
        for item in task.batches(epoch):
            lr = start_lr * grow ** len(lrs)
            for g, r in zip(groups, ratios):
                g["lr"] = lr * r
            out = task.train_step(item)
            if "train/loss" not in out:
                raise UserError(f"Task '{cfg.task}' reports no train/loss: the learning-rate finder has nothing to follow.")
            loss = float(out["train/loss"].detach())
            if not math.isfinite(loss):
                stopped = f"the loss became {loss} at rate {lr:.3g}"
                break
            avg = beta * avg + (1 - beta) * loss
            smooth = avg / (1 - beta ** (len(lrs) + 1))  # bias-corrected moving average
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(smooth)
            best = min(best, smooth)
            if len(lrs) > 10 and smooth > diverge * best:
                stopped = f"the smoothed loss passed {diverge:g} times its minimum at rate {lr:.3g}"
                break
            if len(lrs) >= steps:
                break
        epoch += 1
    return {**suggest(lrs, smoothed), "lrs": lrs, "losses": losses, "smoothed": smoothed, "stopped": stopped,
            "recipe": cfg.recipe, "optimizer": cfg.optim.name, "batch_size": cfg.train.batch_size}


def suggest(lrs: list[float], smoothed: list[float]) -> dict:
    """The steepest descent of the smoothed loss against log rate, between the first points
    (skipped: the average is still warming up) and the minimum; and the minimum's rate / 10."""
    n = len(lrs)
    if n < 20:
        raise UserError(f"The loss diverged after {n} steps of the range test, before anything could be read from "
                        "it: lower --start-lr (or check the data).")
    lr, sm = np.log(np.asarray(lrs)), np.asarray(smoothed)
    low = int(np.argmin(sm))
    first = min(10, n // 10)
    if low - first < 3:
        raise UserError(f"The loss was lowest at the start of the range test (rate {lrs[low]:.3g}): every rate "
                        "tried was too high. Lower --start-lr.")
    slope = np.gradient(sm[first:low + 1], lr[first:low + 1])
    return {"steepest": float(lrs[first + int(np.argmin(slope))]), "minimum": float(lrs[low]),
            "min_10": float(lrs[low]) / 10}


def plot_lr_find(result: dict, out: Path | str) -> Path:
    """OUT/lr_find.png (raw and smoothed loss against the rate, both suggestions marked) and
    OUT/lr_find.json; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"Cannot write to '{out}' ({e.strerror}); choose another folder with --out.") from None
    lrs, sm = np.asarray(result["lrs"]), np.asarray(result["smoothed"])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(lrs, result["losses"], color="0.75", lw=0.8, label="loss per step")
    ax.plot(lrs, sm, color="C0", lw=2, label="smoothed loss")
    for key, color, what in (("steepest", "C3", "steepest descent (suggestion)"), ("min_10", "C1", "minimum / 10")):
        x = result[key]
        y = float(np.interp(np.log(x), np.log(lrs), sm))
        ax.axvline(x, color=color, ls="--", lw=1)
        ax.plot([x], [y], "o", color=color, label=f"{what}: {x:.2g}")
    ax.set_xscale("log")
    top = float(sm[: max(1, len(sm) // 10)].max())  # the divergence at the end would squash the curve
    low = min(float(sm.min()), float(np.percentile(result["losses"], 2)))
    ax.set_ylim(low - 0.05 * (top - low), top * 1.15 + 1e-12)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(f"lr-find: {result['recipe']} ({result['optimizer']}, batch {result['batch_size']})")
    ax.legend(loc="lower left", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    png = out / "lr_find.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    atomic_write(out / "lr_find.json", (json.dumps(result, indent=1) + "\n").encode())
    return png


def with_found_rate(cfg: RunConfig, verbose: int = 1) -> tuple[RunConfig, dict]:
    """`optim.lr = "auto"` replaced by the range test's suggestion (steepest descent)."""
    r = lr_find(cfg, verbose=verbose)
    if verbose:
        print(f"optim.lr = auto: the range test suggests {r['steepest']:.3g} (steepest descent; "
              f"minimum/10: {r['min_10']:.3g}); training with it", flush=True)
    found = float(f"{r['steepest']:.3g}")
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=found)), r
