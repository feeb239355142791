"""Engine overhead: `deepstep.fit` against a plain PyTorch loop doing the same work.

Both train the same initial weights (deep copies of one model) for one epoch on Fashion-MNIST
(loaded with deepstep's loader) with Adam lr 1e-3, batch 64. The plain loop is what a careful
PyTorch user writes: tensor-index batching with a fresh seeded `randperm` per epoch, forward,
cross-entropy, backward, Adam step, and training loss and accuracy accumulated on the device
(as `fit` computes both), read once at the end of the epoch — no per-step host sync.

The two are alternated in one process (plain, deepstep, plain, deepstep, ...) so that load from
other processes hits both alike; the table reports the median seconds per epoch of each and the
ratio deepstep / plain. The deepstep time is the whole `fit` call (set-up included), because that
is what a user waits for. The plain loop uses deepstep's shuffling seed, so for a model without
dropout both runs see the same batches and must end with the same weights: the "max |dw|"
column checks that the two did the same work.

    python bench/overhead.py                       # both models, 3 rounds
    python bench/overhead.py --models mlp --rounds 5 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import os
import pstats
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import deepstep
from deepstep.config import DataConfig
from deepstep.registry import DATASETS

MODELS = {"mlp": ("mlp", 60_000), "cnn": ("cnn-fashion", 10_000)}  # name -> (registry model, default limit)


def plain_fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 1, batch_size: int = 64,
              lr: float = 1e-3, seed: int = 0) -> dict:
    """The plain PyTorch loop; returns the last epoch's mean training loss and accuracy."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(y)
    logs = {}
    for epoch in range(epochs):
        model.train()
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # deepstep's per-epoch shuffle seed
        idx = torch.randperm(n, generator=g)
        loss_sum, acc_sum, steps = torch.zeros(()), torch.zeros(()), 0
        for i in range(0, n, batch_size):
            j = idx[i:i + batch_size]
            xb, yb = x[j], y[j]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            acc_sum += (out.argmax(1) == yb).float().mean()
            steps += 1
        logs = {"loss": loss_sum.item() / steps, "accuracy": acc_sum.item() / steps}
    return logs


def deepstep_fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64,
                 lr: float = 1e-3) -> dict:
    # the plain loop's settings: fp32 and its thread count (the "auto" defaults would change both)
    h = deepstep.fit(model, (x, y), epochs=1, batch_size=batch_size, optimizer="adam", lr=lr, verbose=0,
                     precision="fp32", threads=torch.get_num_threads())
    return {"loss": h.history["loss"][-1], "accuracy": h.history["accuracy"][-1]}


def max_weight_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


class _OpCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched (forward, backward and optimizer alike)."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def per_step_work(fn, base: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 8) -> tuple:
    """(ATen operators, Python function calls) per training step: counted on one epoch of
    `steps` batches and one of 2 * `steps`, so that fixed set-up cost cancels out. Unlike seconds,
    these counts do not depend on what else the machine is doing."""
    counts = []
    for n in (steps * 64, 2 * steps * 64):
        with _OpCounter() as c:
            fn(copy.deepcopy(base), x[:n], y[:n])
        prof = cProfile.Profile()
        prof.enable()
        fn(copy.deepcopy(base), x[:n], y[:n])
        prof.disable()
        counts.append((c.ops, pstats.Stats(prof).total_calls))
    return tuple((b - a) / steps for a, b in zip(*counts))


def bench_model(key: str, x_all: torch.Tensor, y_all: torch.Tensor, rounds: int, limit: int) -> dict:
    name, default_limit = MODELS[key]
    n = min(limit or default_limit, len(y_all))
    x, y = x_all[:n], y_all[:n]
    torch.manual_seed(0)
    base = deepstep.create_model(name, tuple(x.shape[1:]), 10)
    # warm-up (allocator, first-call dispatch, lazy imports), not timed
    warm = min(n, 1024)
    plain_fit(copy.deepcopy(base), x[:warm], y[:warm])
    deepstep_fit(copy.deepcopy(base), x[:warm], y[:warm])
    work = {who: per_step_work(fn, base, x_all, y_all) for who, fn in (("plain", plain_fit), ("deepstep", deepstep_fit))}
    times = {"plain": [], "deepstep": []}
    cpu = {"plain": [], "deepstep": []}
    logs = {}
    diff = float("nan")
    for r in range(rounds):
        models = {}
        for who, fn in (("plain", plain_fit), ("deepstep", deepstep_fit)):
            m = copy.deepcopy(base)
            t0, c0 = time.perf_counter(), time.process_time()
            logs[who] = fn(m, x, y)
            times[who].append(time.perf_counter() - t0)
            cpu[who].append(time.process_time() - c0)
            models[who] = m
        if r == 0:
            diff = max_weight_diff(models["plain"], models["deepstep"])
        print(f"  {key} round {r + 1}/{rounds}: plain {times['plain'][-1]:.3f} s "
              f"(cpu {cpu['plain'][-1]:.3f}), deepstep {times['deepstep'][-1]:.3f} s "
              f"(cpu {cpu['deepstep'][-1]:.3f})", flush=True)
    plain, ds = statistics.median(times["plain"]), statistics.median(times["deepstep"])
    cpu_ratio = statistics.median(cpu["deepstep"]) / statistics.median(cpu["plain"])
    return {"model": key, "n": n, "plain": plain, "deepstep": ds, "ratio": ds / plain, "diff": diff,
            "cpu_plain": statistics.median(cpu["plain"]), "cpu_deepstep": statistics.median(cpu["deepstep"]),
            "cpu_ratio": cpu_ratio, "min_ratio": min(times["deepstep"]) / min(times["plain"]),
            "ratios": [d / p for p, d in zip(times["plain"], times["deepstep"])], "logs": logs, "work": work}


def _load() -> str:
    """The 1-minute load average against the CPU count: above the count, other processes compete."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per model (each runs plain then deepstep)")
    ap.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    ap.add_argument("--limit", type=int, default=0,
                    help="training examples per epoch (0: 60000 for the MLP, 10000 for the CNN)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0: torch's default). 1 by default: on a small shared machine extra "
                         "threads wait on each other whenever another process holds a core, which swamps the "
                         "engine overhead this measures")
    args = ap.parse_args(argv)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    bad = [k for k in keys if k not in MODELS]
    if bad or not keys or args.rounds < 1:
        ap.error(f"--models takes a comma-separated subset of {', '.join(MODELS)} (got {args.models!r}); "
                 f"--rounds must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = DATASETS.get("fashion-mnist")(DataConfig())
    x_all = torch.from_numpy(np.ascontiguousarray(data.x_train))  # (60000, 1, 28, 28) in [0, 1]
    y_all = torch.from_numpy(data.y_train)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, Adam lr 1e-3, batch 64, "
          f"1 epoch per run, {args.rounds} rounds, alternating plain/deepstep; {_load()}")
    results = [bench_model(k, x_all, y_all, args.rounds, args.limit) for k in keys]

    print()
    head = (f"{'model':<6}{'examples':>9}{'plain s/epoch':>15}{'deepstep s/epoch':>18}{'ratio':>8}"
            f"{'min ratio':>11}{'cpu ratio':>11}{'max |dw|':>11}   {'plain loss/acc':<16}{'deepstep loss/acc':<19}per-round ratios")
    print(head)
    print("-" * len(head))
    for r in results:
        lp, ld = r["logs"]["plain"], r["logs"]["deepstep"]
        print(f"{r['model']:<6}{r['n']:>9}{r['plain']:>15.3f}{r['deepstep']:>18.3f}{r['ratio']:>8.3f}"
              f"{r['min_ratio']:>11.3f}{r['cpu_ratio']:>11.3f}{r['diff']:>11.2e}   {lp['loss']:.4f}/{lp['accuracy']:.4f}  "
              f"{ld['loss']:.4f}/{ld['accuracy']:.4f}    " + " ".join(f"{x:.3f}" for x in r["ratios"]))
    print("(seconds and ratio: wall-clock medians; min ratio: fastest deepstep / fastest plain run (load from\n"
          " other processes only ever adds time); cpu ratio: medians of process CPU time, which such load\n"
          " disturbs less with --threads 1; max |dw|: largest weight difference after round 1, 0 when both\n"
          " did exactly the same steps (models with dropout draw different masks, so it is not 0 for them))")
    print(f"at the end: {_load()}")
    print("\nwork per training step (deterministic):")
    for r in results:
        (po, pc), (do, dc) = r["work"]["plain"], r["work"]["deepstep"]
        print(f"  {r['model']}: ATen operators plain {po:.0f}, deepstep {do:.0f}; "
              f"Python calls plain {pc:.0f}, deepstep {dc:.0f}")
    print()
    for r in results:
        verdict = "within" if r["ratio"] <= 1.05 else "ABOVE"
        print(f"{r['model']}: deepstep/plain = {r['ratio']:.3f} ({r['deepstep']:.3f} s vs {r['plain']:.3f} s "
              f"per epoch, median of {args.rounds}; min ratio {r['min_ratio']:.3f}, cpu-time ratio {r['cpu_ratio']:.3f}; "
              f"{verdict} the 1.05 target)")


if __name__ == "__main__":
    main()
