"""`train.compile`: does torch.compile pay for itself over a whole run on this CPU?

For each recipe (shortened as below), runs with `train.compile=false` and `=true` alternate in
one process, one thread each (`train.threads=1`), seed 0. The compiled run's time includes its
compilation: every compiled run gets a fresh, empty inductor cache (TORCHINDUCTOR_CACHE_DIR),
as a user's first run has. Reported: median `train_seconds` (training + per-epoch validation,
first compile included) and the wall time of the whole `fit` call, their ratio compiled / eager,
the test metric of both (compile must not change what is learned beyond float noise), and the
steady state: the median seconds of an epoch from the third epoch on (a plug-in times each
epoch), when the compiled graphs exist. `torch._dynamo.reset()` before every compiled run makes
each one compile from scratch, as in a new process.

    python bench/compile.py                 # three recipes, 2 rounds
    python bench/compile.py --rounds 3 --recipes digits-cnn
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from deepstep.config import load_config
from deepstep.engine.fit import fit
from deepstep.engine.plugin import Plugin

RECIPES = {  # recipe -> overrides that keep one round within a minute or two
    "digits-cnn": ["train.epochs=10"],
    "mnist1d-cnn": ["train.epochs=5"],
    "fashion-mlp": ["data.limit=20000", "train.epochs=4"],
}


class EpochClock(Plugin):
    """Seconds of every epoch (training and validation)."""

    rank0_only = False

    def __init__(self):
        self.seconds = []

    def on_epoch_start(self, run, epoch):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, run, logs):
        self.seconds.append(time.perf_counter() - self.t0)
        return False


def one(recipe: str, compiled: bool) -> dict:
    over = [*RECIPES[recipe], "train.threads=1", f"train.compile={str(compiled).lower()}"]
    if compiled:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
        torch._dynamo.reset()
    clock = EpochClock()
    t0 = time.perf_counter()
    s = fit(load_config(recipe, over), plugins=[clock], verbose=0).summary
    metric = next(k for k in ("test/acc", "test/rmse") if k in s)
    return {"train": s["train_seconds"], "wall": time.perf_counter() - t0, "metric": metric, "value": s[metric],
            "steady": statistics.median(clock.seconds[2:] or clock.seconds[-1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print("| recipe | eager train s | compiled train s | ratio | eager wall s | compiled wall s | test eager | "
          "test compiled | s/epoch eager | s/epoch compiled (from epoch 3) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for recipe in args.recipes:
        rows = {False: [], True: []}
        for _ in range(args.rounds):
            for compiled in (False, True):
                rows[compiled].append(one(recipe, compiled))
        med = {c: {k: statistics.median(r[k] for r in rows[c]) for k in ("train", "wall", "value", "steady")}
               for c in rows}
        e, c = med[False], med[True]
        print(f"| {recipe} ({' '.join(RECIPES[recipe])}) | {e['train']:.1f} | {c['train']:.1f} | "
              f"{c['train'] / e['train']:.2f} | {e['wall']:.1f} | {c['wall']:.1f} | "
              f"{rows[False][0]['metric']} {e['value']:.4f} | {c['value']:.4f} | "
              f"{e['steady']:.3f} | {c['steady']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
