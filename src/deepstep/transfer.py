"""Pretrained backbones from deepstep's own recipes (`[transfer] pretrain = "fashion-resnet18"`).

The pretraining recipe, with its `transfer.pretrain_set` overrides, is trained once into
`$DEEPSTEP_CACHE/pretrained/<recipe>-<hash>/` (default ~/.cache/deepstep) and that run directory
becomes the transfer run's `model.pretrained`. The hash covers the recipe file's text and the
overrides, so a changed recipe or other overrides (a tiny pretraining in the tests) never reuse a
backbone trained otherwise, while new config fields with defaults keep the cache valid. An
interrupted pretraining is resumed on the next use; a lock file (`<dir>.lock`) makes a second
process that needs the same backbone wait for the first one's pretraining and then reuse it.

A resumed transfer run reads no pretrained weights at all: its checkpoint holds every weight, so
it continues even when the pretrained file or cache entry is gone."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from filelock import FileLock, Timeout

from .config import RunConfig, load_config
from .data.download import cache_dir
from .engine.rundir import RunDir
from .errors import UserError


def cached_path(recipe: str, overrides: list[str]) -> Path:
    """Where the pretrained run of `recipe` with `overrides` is cached."""
    from .registry import recipe_path

    cfg = load_config(recipe, overrides)
    # the recipe's text and the overrides, not the resolved config: a new config field with a
    # default (a later deepstep version) must not make every cached backbone stale
    source = {"recipe": recipe_path(recipe).read_text(), "overrides": list(overrides)}
    key = hashlib.sha1(json.dumps(source, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "pretrained" / f"{cfg.recipe}-{key}"


def pretrained_run(recipe: str, overrides: list[str], verbose: int = 1) -> Path:
    """The cached run directory of `recipe` trained with `overrides`; trained (or resumed) here
    when missing, by one process at a time."""
    cfg = load_config(recipe, overrides)
    path = cached_path(recipe, overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:  # another process is training this backbone: wait for it, then reuse it
        print(f"transfer: another process is pretraining '{cfg.recipe}' into {path}; waiting for it", flush=True)
        lock.acquire()
    try:
        return _cached_or_trained(cfg, path, verbose)
    finally:
        lock.release()


def _cached_or_trained(cfg: RunConfig, path: Path, verbose: int) -> Path:
    from .run import resume, train

    run = RunDir(path)
    if run.summary.is_file() and run.weights.is_file():
        print(f"transfer: using the cached pretrained run {path}", flush=True)
        return path
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(f"transfer.pretrain: the pretrained run of '{cfg.recipe}' is not cached yet ({path}); "
                        "run the transfer recipe once in a single process first, then under torchrun.")
    if run.checkpoint.is_file():
        print(f"transfer: resuming the interrupted pretraining of '{cfg.recipe}' in {path}", flush=True)
        resume(path, verbose=verbose)
    else:
        print(f"transfer: pretraining '{cfg.recipe}' once (first use) into {path}; later runs reuse it", flush=True)
        train(cfg, path, verbose=verbose)
    return path


def with_pretrained(cfg: RunConfig, resuming: bool, verbose: int = 1) -> RunConfig:
    """The config the task is built from. Resuming from a checkpoint: no pretrained weights are read
    (the checkpoint holds them all). Otherwise `transfer.pretrain` becomes `model.pretrained`."""
    has = "pretrained" in cfg.model
    if resuming:
        return dataclasses.replace(cfg, model={**cfg.model, "pretrained": ""}) if has else cfg
    if not cfg.transfer.pretrain:
        return cfg
    if not has:
        raise UserError(f"transfer.pretrain: model '{cfg.model['name']}' cannot load pretrained weights "
                        "(it has no `pretrained` option; resnet18/34/50 do).")
    if cfg.model["pretrained"]:
        raise UserError(f"Set either transfer.pretrain ('{cfg.transfer.pretrain}') or model.pretrained "
                        f"('{cfg.model['pretrained']}'), not both.")
    path = pretrained_run(cfg.transfer.pretrain, cfg.transfer.pretrain_set, verbose)
    return dataclasses.replace(cfg, model={**cfg.model, "pretrained": str(path)})
