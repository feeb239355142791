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
from pathlib import Path

from ..config import RunConfig, load_config
from ..data.download import cache_dir
from ..engine.fit import cached_run
from ..errors import UserError
from ..registry import recipe_path


def cached_path(recipe: str, overrides: list[str]) -> Path:
    """Where the pretrained run of `recipe` with `overrides` is cached."""
    cfg = load_config(recipe, overrides)
    # the recipe's text and the overrides, not the resolved config: a new config field with a
    # default (a later deepstep version) must not make every cached backbone stale
    source = {"recipe": recipe_path(recipe).read_text(), "overrides": list(overrides)}
    key = hashlib.sha1(json.dumps(source, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "pretrained" / f"{cfg.recipe}-{key}"


def pretrained_run(recipe: str, overrides: list[str], verbose: int = 1) -> Path:
    """The cached run directory of `recipe` trained with `overrides`; trained (or resumed) here
    when missing, by one process at a time (engine.fit.cached_run)."""
    cfg = load_config(recipe, overrides)
    return cached_run(cfg, cached_path(recipe, overrides), verbose, what=f"the pretrained backbone '{cfg.recipe}'")


def with_pretrained(cfg: RunConfig, resuming: bool, verbose: int = 1) -> RunConfig:
    """The config the task is built from. Resuming from a checkpoint: no pretrained weights are read
    (the checkpoint holds them all), except that a pretrained tokenizer still comes from
    model.pretrained. Otherwise `transfer.pretrain` becomes `model.pretrained`."""
    has = "pretrained" in cfg.model
    if resuming:
        # a pretrained tokenizer (data.tokenizer = "pretrained") is read from model.pretrained: keep it
        keep = cfg.data.tokenizer == "pretrained"
        return dataclasses.replace(cfg, model={**cfg.model, "pretrained": ""}) if has and not keep else cfg
    if not cfg.uses("transfer") or not cfg.transfer.pretrain:  # [transfer]: classify and regress runs
        return cfg
    if not has:
        raise UserError(f"transfer.pretrain: model '{cfg.model['name']}' cannot load pretrained weights "
                        "(it has no `pretrained` option; resnet18/34/50 do).")
    if cfg.model["pretrained"]:
        raise UserError(f"Set either transfer.pretrain ('{cfg.transfer.pretrain}') or model.pretrained "
                        f"('{cfg.model['pretrained']}'), not both.")
    path = pretrained_run(cfg.transfer.pretrain, cfg.transfer.pretrain_set, verbose)
    return dataclasses.replace(cfg, model={**cfg.model, "pretrained": str(path)})
