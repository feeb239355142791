"""The contract between the loop and a task, as a typed Protocol (no base class to inherit).

A task owns what one step means: it builds its data and modules from the config, yields the items
of an epoch, does the work of one item and measures a split. Everything else — directories,
checkpoints, logging, pictures, baselines — lives in the engine and the plug-ins."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Task(Protocol):
    """What `engine.loop.Loop` and `engine.fit.fit` call on a task.

    Registered task classes (`registry.TASKS`) also provide the classmethods `prepare(cfg,
    resuming, verbose) -> cfg` (resolve the config before the task is built, e.g. train a
    pretrained backbone) and `inference(run) -> Inference` (rebuild what predictions need from a
    finished run directory alone); their registry tags declare capabilities: "predict",
    "reconstruct", "sample", "forecast", "play"."""

    meta: dict  # written to meta.json: task, kind, shapes, classes, normalizer, ...
    steps_per_epoch: int
    has_val: bool

    def modules(self) -> dict[str, torch.nn.Module]: ...
    def batches(self, epoch: int) -> Iterable[Any]: ...
    def train_step(self, item: Any) -> dict[str, Any]: ...
    def samples_in(self, item: Any) -> int: ...
    def evaluate(self, split: str) -> dict[str, float]: ...
    def train(self, mode: bool = True) -> None: ...
    def end_epoch(self, logs: dict) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
