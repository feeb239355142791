"""The one training loop. It knows nothing about the domain: a task yields items for an epoch
(batches, rollouts, ...), `task.train_step(item)` does the work and returns a dict of scalars
(0-dim tensors are fine: they are summed on the device and read once per logging interval).
The task's contract is `engine.task.Task`; optional concerns are plug-ins (`engine.plugin`).

`run` is the live `engine.run.Run` (or None for a bare loop): plug-in hooks receive it, and its
run directory (`run.dir`, None when the run writes nothing) holds the checkpoints. Records go
to the plug-ins' `on_log` (the metrics.jsonl writer is one); the loop writes no file but the
checkpoint.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from ..errors import NonFiniteLoss
from .checkpoint import save_checkpoint
from .plugin import Plugin
from .runtime import rng_state, set_rng_state, unwrap


@dataclass
class LoopState:
    epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    step_seconds: float = 0.0
    samples: int = 0
    stopped: bool = False  # a plug-in ended training early; a resume must not continue it
    first_loss: float = 0.0  # the largest loss of the first step: the scale divergence is measured on


EXPLODED = 1e6  # a loss this many times the first step's (and above 1e6) counts as divergence


class Loop:
    def __init__(self, task, runtime, epochs: int, run=None, plugins=(), checkpoint_every: int = 1,
                 log_every: int = 100):
        self.task, self.runtime, self.epochs, self.run = task, runtime, epochs, run
        self.plugins = sorted(plugins, key=lambda p: p.order)
        self.checkpoint_every, self.log_every = checkpoint_every, log_every
        self.state = LoopState()
        self.history: list[dict] = []
        self.saved_epoch: int | None = None  # epoch of the last checkpoint this loop wrote or loaded
        self.fingerprint: str | None = None  # digest of the training data, kept in every checkpoint

    @property
    def dir(self):
        """The run directory checkpoints go to (main process only), or None."""
        d = self.run.dir if self.run is not None else None
        return d if d is not None and self.runtime.is_main else None

    def fit(self) -> dict:
        task, pls, st, run = self.task, self.plugins, self.state, self.run
        # the per-step hook only for plug-ins that have one: nothing else runs between two steps
        per_step = [p for p in pls if type(p).on_batch_end is not Plugin.on_batch_end]
        for p in pls:
            p.on_start(run)
        while st.epoch < self.epochs and not st.stopped:
            epoch, t0 = st.epoch, time.perf_counter()
            for p in pls:
                p.on_epoch_start(run, epoch)
            task.train(True)
            sums, n, last, last_n = {}, 0, {}, 0
            for item in task.batches(epoch):
                out = task.train_step(item)
                if st.step == 0:  # one host sync per run: the scale of a sane loss
                    st.first_loss = max([abs(float(v.detach() if torch.is_tensor(v) else v)) for k, v in out.items()
                                         if "loss" in k] or [0.0])
                for k, v in out.items():
                    sums[k] = sums[k] + v.detach() if k in sums else v.detach()
                n += 1
                st.step += 1
                st.samples += task.samples_in(item) * self.runtime.world_size  # shards are equal
                if st.step % self.log_every == 0:
                    last, last_n = self._log_interval(sums, n, last, last_n)
                for p in per_step:
                    p.on_batch_end(run, st.step)
            logs = self._means(sums, n)
            self._check_finite(logs, f"epoch {epoch + 1}")
            st.step_seconds += time.perf_counter() - t0
            task.train(False)
            logs.update(task.evaluate("val"))
            logs = {"epoch": epoch + 1, "step": st.step, **logs}
            st.train_seconds += time.perf_counter() - t0
            st.epoch += 1
            task.end_epoch(logs)  # schedules step; adds e.g. lr
            for p in pls:
                p.on_log(run, logs)
            stop = any([p.on_epoch_end(run, logs) for p in pls])
            # every rank must take the same decision, or the others wait forever in the next step
            st.stopped = bool(self.runtime.all_reduce_sum(torch.tensor(float(stop))).item() > 0)
            self.history.append(logs)
            writes = self.run is not None and self.run.dir is not None  # on every rank: save() gathers
            if writes and (st.epoch % self.checkpoint_every == 0 or st.stopped or st.epoch == self.epochs):
                self.save()
        final: dict = {}
        for p in pls:
            p.on_train_end(run, final)
        return final

    def _means(self, sums: dict, n: int) -> dict:
        keys = list(sums)
        if not keys:
            return {}
        values = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64).reshape(()).cpu() for k in keys])
        values = self.runtime.all_reduce_sum(values) / self.runtime.world_size  # mean over ranks' shards
        return {k: float(v) / n for k, v in zip(keys, values.tolist())}

    def _log_interval(self, sums: dict, n: int, last: dict, last_n: int):
        now = self._means(sums, 1)
        rec = {k: (now[k] - last.get(k, 0.0)) / (n - last_n) for k in now}
        self._check_finite(rec, f"step {self.state.step}")
        record = {"step": self.state.step, **rec}
        for p in self.plugins:
            p.on_log(self.run, record)
        return now, n

    def _check_finite(self, logs: dict, where: str) -> None:
        """Stop a diverging run: a non-finite value, or a loss grown a million-fold past the first
        step's (at least past 1e6), e.g. Adam at lr 1e6 reaching 1e18 without overflowing."""
        bad = [k for k, v in logs.items() if isinstance(v, float) and not math.isfinite(v)]
        limit = EXPLODED * max(1.0, self.state.first_loss if math.isfinite(self.state.first_loss) else 1.0)
        huge = [k for k, v in logs.items() if "loss" in k and isinstance(v, float) and math.isfinite(v)
                and abs(v) > limit]
        if huge and not bad:
            bad = huge
            logs = {**logs, huge[0]: f"{logs[huge[0]]:.3g} (the first step's loss was "
                                     f"{self.state.first_loss:.3g}: it exploded)"}
        if bad:
            d = self.run.dir if self.run is not None else None
            if d is None:
                kept = ""
            elif self.saved_epoch is None:
                kept = f" No checkpoint was written yet; {d.path} holds the metrics so far."
            else:
                kept = f" The last good checkpoint (epoch {self.saved_epoch}) is kept in {d.checkpoint}."
            raise NonFiniteLoss(
                f"Training diverged at {where}: {', '.join(bad)} became {logs[bad[0]]}. "
                f"Lower optim.lr, set train.grad_clip (e.g. 1.0), or check the data for NaN values.{kept}"
            )

    def state_dict(self) -> dict:
        return {
            "task": self.task.state_dict(),
            "loop": asdict(self.state),
            "plugins": {_key(p): p.state_dict() for p in self.plugins},
            "rng": rng_state(),
            "signature": signature(self.task),  # checked on resume (engine/fit.py check_resumable)
            **({"data": self.fingerprint} if self.fingerprint is not None else {}),
        }

    def save(self) -> None:
        """Write the checkpoint (main process). Distributed, every rank calls it: each rank's random
        state is gathered into `rng_ranks`, so that a resume gives every rank its own stream back."""
        ranks = self.runtime.gather(rng_state()) if self.runtime.distributed else None
        self.saved_epoch = self.state.epoch
        if self.dir is None:
            return
        state = self.state_dict()
        if ranks is not None:
            state["rng_ranks"] = ranks
        save_checkpoint(state, self.dir.checkpoint)

    def load_state_dict(self, state: dict) -> None:
        self.task.load_state_dict(state["task"])
        self.state = LoopState(**state["loop"])
        saved = state.get("plugins") or _from_callbacks(state)
        for p in self.plugins:
            if _key(p) in saved:  # a plug-in added since the checkpoint starts from scratch
                p.load_state_dict(saved[_key(p)])
        set_rng_state(state["rng"])
        if self.runtime.rank > 0:  # its own stream: saved by save(), or a fresh one (older checkpoint, other world size)
            ranks = state.get("rng_ranks") or []
            if len(ranks) == self.runtime.world_size:
                set_rng_state(ranks[self.runtime.rank])
            else:
                self.runtime.seed_rank()
        self.saved_epoch = self.state.epoch


def signature(task) -> dict:
    """{module: {parameter or buffer: shape}}: what a checkpoint's weights must fit."""
    return {n: {k: list(v.shape) for k, v in unwrap(m).state_dict().items()} for n, m in task.modules().items()}


def _from_callbacks(state: dict) -> dict:
    """Plug-in states of a checkpoint written before plug-ins existed (deepstep 0.1 with
    callbacks): its metrics.jsonl line count and its best-weights state, so that such a run
    resumes without losing metric lines or its best epoch."""
    out = {}
    if "metric_lines" in state:
        out["metrics"] = {"lines": state["metric_lines"]}
    for cb in state.get("callbacks", []):
        if isinstance(cb, dict) and {"best", "best_epoch", "wait", "best_state"} <= set(cb):
            out["best-weights"] = cb
    return out


def _key(plugin) -> str:
    """A plug-in's name in the checkpoint: its registered name, else its class name."""
    return plugin.name or type(plugin).__name__
