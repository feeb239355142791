"""Speed of the fast path: a plain PyTorch fp32 loop against deepstep fp32, bf16, bf16 +
channels_last and torch.compile, for the image recipes' models; threads 1 against 2; and time to
0.92 validation accuracy of `fashion-speedrun` against the same recipe written as a plain fp32 loop.

Everything runs in one process and alternates (plain, deepstep fp32, bf16, ..., then again), so
that load from other processes hits every variant alike: the ratios are what to read, and the
table says the load average. Seconds per epoch are training steps only (deepstep's
samples_per_second; the plain loop's own clock), on `--limit` training examples, one epoch per
measurement, the median of `--rounds`. The compile column's epoch includes compiling (a fresh
`torch._dynamo.reset()` each time), as a user's first epoch does.

    python bench/speed.py                        # every table, 1 thread, 3 rounds
    python bench/speed.py --parts fast --recipes fashion-cnn --rounds 5
    python bench/speed.py --parts threads        # threads 1 vs 2 with the FLOPs per forward call
    python bench/speed.py --parts speedrun       # time to 0.92: deepstep vs a plain fp32 loop
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from deepstep.config import load_config
from deepstep.engine.fit import fit
from deepstep.engine.plugin import Plugin
from deepstep.models.layers import create_model
from deepstep.registry import DATASETS, load_all

# recipe -> extra overrides of the measurement (the model and batch size stay the recipe's)
RECIPES = {
    "digits-mlp": [],
    "digits-cnn": [],
    "fashion-mlp": [],
    "fashion-cnn": [],
    "fashion-speedrun": [],
    "mnist1d-cnn": [],
}
VARIANTS = {  # name -> deepstep overrides
    "fp32": ["train.precision=fp32", "train.channels_last=false"],
    "bf16": ["train.precision=bf16", "train.channels_last=false"],
    "bf16+cl": ["train.precision=bf16", "train.channels_last=true"],
    "compile": ["train.precision=bf16", "train.channels_last=true", "train.compile=true"],
}
QUIET = ['plugins.skip=["report","explanations","model-card","class-report","diagnosis","progress",'
         '"tfidf-baseline","class-balance"]']


def load_line() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def arrays_for(cfg, limit: int):
    """The recipe's training images, normalized as deepstep normalizes them (mean/std of the
    training part), as float tensors (N, C, H, W) or (N, D)."""
    load_all()
    a = DATASETS.get(cfg.data.name)(cfg.data)
    x = np.asarray(a.x_train[:limit], dtype=np.float32) * np.float32(getattr(a, "scale", 1.0))
    x = (x - x.mean()) / (x.std() + 1e-8)
    return torch.as_tensor(x), torch.as_tensor(np.asarray(a.y_train[:limit]).astype(np.int64))


def plain_epoch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, lr: float) -> float:
    """One epoch of the loop a careful PyTorch user writes (fp32, Adam); returns its seconds."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    for i in range(0, len(y), batch_size):
        j = idx[i:i + batch_size]
        loss = F.cross_entropy(model(x[j]), y[j])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def deepstep_epoch(recipe: str, sets: list[str], limit: int) -> tuple[float, dict]:
    """Seconds per `limit` examples of the training steps of one epoch of the recipe with `sets`
    (from its samples_per_second: the recipe trains on its training part, after validation and
    test are held out), and its summary."""
    with tempfile.TemporaryDirectory() as d:
        cfg = load_config(recipe, [*sets, "train.epochs=1", f"data.limit={limit}", *QUIET])
        torch._dynamo.reset()
        run = fit(cfg, run_dir=f"{d}/run", verbose=0)
    s = run.summary
    n = s["samples_per_second"]
    return (limit / n if n else math.nan), s


def fast_table(recipes: list[str], rounds: int, limit: int, threads: int) -> None:
    print(f"\n## plain fp32 loop vs deepstep (training seconds per {limit} examples, {threads} thread(s); "
          f"ratio = plain / variant, above 1 is faster than plain)\n")
    print("| recipe (model) | plain fp32 | " + " | ".join(f"deepstep {v}" for v in VARIANTS) + " | accuracy fp32 / bf16+cl |")
    print("|---|---|" + "---|" * len(VARIANTS) + "---|")
    for recipe in recipes:
        base = [f"train.threads={threads}", *RECIPES.get(recipe, [])]
        cfg = load_config(recipe, base)
        x, y = arrays_for(cfg, limit)
        torch.manual_seed(0)
        n_out = int(y.max()) + 1
        model = create_model(cfg.model["name"], tuple(x.shape[1:]), n_out,
                             **{k: v for k, v in cfg.model.items() if k != "name"})
        torch.set_num_threads(threads)
        plain_epoch(copy.deepcopy(model), x[:512], y[:512], cfg.train.batch_size, cfg.optim.lr)  # warm-up
        scale = limit / len(y)  # plain seconds per `limit` examples (digits has fewer)
        times = {k: [] for k in ["plain", *VARIANTS]}
        acc = {}
        for _ in range(rounds):
            torch.set_num_threads(threads)
            times["plain"].append(scale * plain_epoch(copy.deepcopy(model), x, y, cfg.train.batch_size, cfg.optim.lr))
            for v, sets in VARIANTS.items():
                sec, s = deepstep_epoch(recipe, base + sets, limit)
                times[v].append(sec)
                acc[v] = s.get("test/acc")
        med = {k: statistics.median(v) for k, v in times.items()}
        cells = [f"{med['plain']:.2f} s"] + [f"{med[v]:.2f} s ({med['plain'] / med[v]:.2f}x)" for v in VARIANTS]
        print(f"| {recipe} ({cfg.model['name']}) | " + " | ".join(cells)
              + f" | {acc.get('fp32', 0):.3f} / {acc.get('bf16+cl', 0):.3f} |", flush=True)
    print(f"\n({load_line()}; accuracy: test accuracy after the one epoch)")


def flops_per_call(recipe: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    cfg = load_config(recipe, [])
    x, y = arrays_for(cfg, cfg.train.batch_size)
    model = create_model(cfg.model["name"], tuple(x.shape[1:]), int(y.max()) + 1,
                         **{k: v for k, v in cfg.model.items() if k != "name"}).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        model(x)
    return float(c.get_total_flops())


def threads_table(recipes: list[str], rounds: int, limit: int) -> None:
    print(f"\n## threads: 1 against 2 (seconds per epoch of {limit} examples, recipe's precision auto)\n")
    print("| recipe | FLOPs per forward call (one batch) | 1 thread | 2 threads | 2 threads faster by |")
    print("|---|---|---|---|---|")
    for recipe in recipes:
        t = {1: [], 2: []}
        for _ in range(rounds):
            for n in (1, 2):
                t[n].append(deepstep_epoch(recipe, [f"train.threads={n}", *RECIPES.get(recipe, [])], limit)[0])
        a, b = statistics.median(t[1]), statistics.median(t[2])
        print(f"| {recipe} | {flops_per_call(recipe) / 1e6:,.0f} M | {a:.2f} s | {b:.2f} s | {a / b:.2f}x |",
              flush=True)
    print(f"\n({load_line()})")


class ValClock(Plugin):
    """Training seconds (steps and validation, as train_seconds counts them) at each epoch's end."""

    rank0_only = False

    def __init__(self):
        self.points, self.t = [], 0.0

    def on_epoch_start(self, run, epoch):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, run, logs):
        self.t += time.perf_counter() - self.t0
        self.points.append((self.t, logs.get("val/acc", 0.0)))
        return False


def time_to(points, bar: float) -> float:
    return next((t for t, a in points if a >= bar), math.nan)


def plain_speedrun(cfg, bar: float, seed: int = 0) -> tuple[float, float, float]:
    """`fashion-speedrun` written as the plain fp32 PyTorch loop a careful user writes: the same
    model, data split sizes, normalization, optimizer, warm-up and linear decay, label smoothing,
    random or alternating mirror images (as the recipe's data.augment) and test-time flips, every
    usable core. Returns (seconds to validation
    accuracy `bar`, training seconds with the per-epoch validation, test accuracy)."""
    load_all()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    a = DATASETS.get(cfg.data.name)(cfg.data)
    x = torch.as_tensor(np.asarray(a.x_train, dtype=np.float32) * np.float32(getattr(a, "scale", 1.0)))
    y = torch.as_tensor(np.asarray(a.y_train).astype(np.int64))
    xt = torch.as_tensor(np.asarray(a.x_test, dtype=np.float32) * np.float32(getattr(a, "scale", 1.0)))
    yt = torch.as_tensor(np.asarray(a.y_test).astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_val = int(cfg.data.val_split * len(y))
    xv, yv, x, y = x[perm[:n_val]], y[perm[:n_val]], x[perm[n_val:]], y[perm[n_val:]]
    mu, sd = x.mean(), x.std()
    x, xv, xt = (x - mu) / sd, (xv - mu) / sd, (xt - mu) / sd
    torch.manual_seed(seed)
    model = create_model(cfg.model["name"], tuple(x.shape[1:]), 10, **{k: v for k, v in cfg.model.items() if k != "name"})
    o = cfg.optim
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
    bs, epochs = cfg.train.batch_size, cfg.train.epochs
    per_epoch = math.ceil(len(y) / bs)
    warm, total = int(cfg.sched.warmup_epochs * per_epoch), epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, 1 - (s - warm) / max(1, total - warm)))

    @torch.no_grad()
    def accuracy(xs, ys):
        model.eval()
        right = 0
        step = cfg.train.eval_batch_size  # the recipe's evaluation batch, as deepstep uses it
        for i in range(0, len(ys), step):
            b = xs[i:i + step]
            right += ((model(b) + model(b.flip(-1))).argmax(1) == ys[i:i + step]).sum().item()
        model.train()
        return right / len(ys)

    alternate = "altflip" in cfg.data.augment  # a fixed random half mirrored in even epochs, the rest in odd ones
    half = torch.rand(len(y), generator=torch.Generator().manual_seed(seed)) < 0.5
    clock, reached = 0.0, math.nan
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(y))
        for i in range(0, len(y), bs):
            j = order[i:i + bs]
            xb = x[j]
            flip = (half[j] ^ (epoch % 2 == 1)) if alternate else torch.rand(len(j)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), y[j], label_smoothing=cfg.train.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(xv, yv)
        clock += time.perf_counter() - t0
        if acc >= bar and math.isnan(reached):
            reached = clock
    return reached, clock, accuracy(xt, yt)


def speedrun_table(rounds: int, bar: float = 0.92) -> None:
    """`fashion-speedrun` through deepstep (its defaults: bf16, channels_last; and in fp32) against
    the same recipe written as a plain fp32 PyTorch loop, alternating, seed 0."""
    print(f"\n## fashion-speedrun: seconds to validation accuracy {bar} (seed 0, every core)\n")
    print(f"| variant | seconds to val/acc ≥ {bar} | training seconds (with validation) | test/acc |")
    print("|---|---|---|---|")
    rows = {"plain PyTorch fp32 loop": [], "deepstep fp32 (train.precision=fp32)": [],
            "deepstep defaults (bf16, channels_last)": []}
    for _ in range(rounds):
        rows["plain PyTorch fp32 loop"].append(plain_speedrun(load_config("fashion-speedrun", []), bar))
        for name, sets in (("deepstep fp32 (train.precision=fp32)", ["train.precision=fp32"]),
                           ("deepstep defaults (bf16, channels_last)", [])):
            clock = ValClock()
            with tempfile.TemporaryDirectory() as d:
                run = fit(load_config("fashion-speedrun", sets + QUIET), run_dir=f"{d}/run", plugins=[clock], verbose=0)
            rows[name].append((time_to(clock.points, bar), clock.t, run.summary["test/acc"]))
    base = statistics.median(v[0] for v in rows["plain PyTorch fp32 loop"])
    for name, vals in rows.items():
        med = [statistics.median(v) for v in zip(*vals)]
        print(f"| {name} | {med[0]:.1f} s ({base / med[0]:.2f}x) | {med[1]:.1f} s | {med[2]:.4f} |", flush=True)
    print(f"\n({load_line()}; ratio = plain loop's seconds / the variant's)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=["fast", "threads", "speedrun"],
                    choices=["fast", "threads", "speedrun"])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=10_000, help="training examples per measured epoch")
    ap.add_argument("--threads", type=int, default=1, help="threads of the fast-path table")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {load_line()}")
    if "fast" in args.parts:
        fast_table(args.recipes, args.rounds, args.limit, args.threads)
    if "threads" in args.parts:
        threads_table(args.recipes, args.rounds, args.limit)
    if "speedrun" in args.parts:
        speedrun_table(max(1, args.rounds // 2))


if __name__ == "__main__":
    main()
