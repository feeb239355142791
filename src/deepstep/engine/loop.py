"""The one training loop. It knows nothing about the domain: a task yields items for an epoch
(batches, rollouts, ...), `task.train_step(item)` does the work and returns a dict of scalars
(0-dim tensors are fine: they are summed on the device and read once per logging interval).

Task protocol (duck-typed):
    batches(epoch) -> iterable of items           modules() -> {name: nn.Module}
    train_step(item) -> {key: scalar}             evaluate(split) -> {key: float}
    train(mode=True)                              end_epoch(logs)
    state_dict() / load_state_dict(state)         samples_in(item) -> int
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from ..errors import NonFiniteLoss
from .checkpoint import save_checkpoint
from .runtime import rng_state, set_rng_state


@dataclass
class LoopState:
    epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    step_seconds: float = 0.0
    samples: int = 0
    stopped: bool = False  # a callback ended training early; a resume must not continue it


class Loop:
    def __init__(self, task, runtime, epochs: int, run=None, callbacks=(), checkpoint_every: int = 1,
                 log_every: int = 100):
        self.task, self.runtime, self.epochs, self.run = task, runtime, epochs, run
        self.callbacks = list(callbacks)
        self.checkpoint_every, self.log_every = checkpoint_every, log_every
        self.state = LoopState()
        self.history: list[dict] = []
        self.saved_epoch: int | None = None  # epoch of the last checkpoint this loop wrote or loaded

    def fit(self) -> dict:
        task, cbs, st = self.task, self.callbacks, self.state
        for cb in cbs:
            cb.on_train_begin(self)
        while st.epoch < self.epochs and not st.stopped:
            epoch, t0 = st.epoch, time.perf_counter()
            for cb in cbs:
                cb.on_epoch_begin(epoch)
            task.train(True)
            sums, n, last, last_n = {}, 0, {}, 0
            for item in task.batches(epoch):
                out = task.train_step(item)
                for k, v in out.items():
                    sums[k] = sums[k] + v.detach() if k in sums else v.detach()
                n += 1
                st.step += 1
                st.samples += task.samples_in(item) * self.runtime.world_size  # shards are equal
                if st.step % self.log_every == 0:
                    last, last_n = self._log_interval(sums, n, last, last_n)
                for cb in cbs:
                    cb.on_batch_end(st.step)
            logs = self._means(sums, n)
            self._check_finite(logs, f"epoch {epoch + 1}")
            st.step_seconds += time.perf_counter() - t0
            task.train(False)
            logs.update(task.evaluate("val"))
            logs = {"epoch": epoch + 1, "step": st.step, **logs}
            st.train_seconds += time.perf_counter() - t0
            st.epoch += 1
            stop = any([cb.on_epoch_end(epoch, logs) for cb in cbs])
            # every rank must take the same decision, or the others wait forever in the next step
            st.stopped = bool(self.runtime.all_reduce_sum(torch.tensor(float(stop))).item() > 0)
            task.end_epoch(logs)
            self.history.append(logs)
            if self.run is not None and self.runtime.is_main:
                self.run.log(logs)
                if st.epoch % self.checkpoint_every == 0 or st.stopped or st.epoch == self.epochs:
                    self.save()
        final: dict = {}
        for cb in cbs:
            cb.on_train_end(final)
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
        if self.run is not None and self.runtime.is_main:
            self.run.log({"step": self.state.step, **rec})
        return now, n

    def _check_finite(self, logs: dict, where: str) -> None:
        bad = [k for k, v in logs.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            if self.run is None:
                kept = ""
            elif self.saved_epoch is None:
                kept = f" No checkpoint was written yet; {self.run.path} holds the metrics so far."
            else:
                kept = f" The last good checkpoint (epoch {self.saved_epoch}) is kept in {self.run.checkpoint}."
            raise NonFiniteLoss(
                f"Training diverged at {where}: {', '.join(bad)} became {logs[bad[0]]}. "
                f"Lower optim.lr, set train.grad_clip (e.g. 1.0), or check the data for NaN values.{kept}"
            )

    def state_dict(self) -> dict:
        return {
            "task": self.task.state_dict(),
            "loop": asdict(self.state),
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "rng": rng_state(),
            "metric_lines": self.run.metric_lines() if self.run else 0,
        }

    def save(self) -> None:
        save_checkpoint(self.state_dict(), self.run.checkpoint)
        self.saved_epoch = self.state.epoch

    def load_state_dict(self, state: dict) -> None:
        self.task.load_state_dict(state["task"])
        self.state = LoopState(**state["loop"])
        for cb, s in zip(self.callbacks, state["callbacks"]):
            cb.load_state_dict(s)
        set_rng_state(state["rng"])
        self.saved_epoch = self.state.epoch
        if self.run is not None and self.runtime.is_main:
            self.run.truncate_metrics(state["metric_lines"])
