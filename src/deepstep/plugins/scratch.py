"""The transfer-learning control: the same model trained from scratch on the same split."""

from __future__ import annotations

import dataclasses

from ..engine.fit import fit
from ..engine.plugin import Plugin
from ..registry import PLUGINS
from ..tasks.supervised import Supervised
from ..tasks.transfer_options import TransferConfig


@PLUGINS.register("scratch-baseline", tags=("default",))
class ScratchBaseline(Plugin):
    """With transfer.scratch_baseline, trains the same config again without pretrained weights (nothing frozen, one learning rate, no cached features) on the same split and reports baseline/scratch_acc (or _rmse)."""

    name = "scratch-baseline"
    rank0_only = False

    def applies_to(self, run) -> bool:
        return (run.cfg.uses("transfer") and run.cfg.transfer.scratch_baseline  # classify, regress
                and isinstance(run.task, Supervised) and "test" in run.task.data)

    def on_finish(self, run, summary: dict) -> None:
        cfg = run.cfg
        model = {**cfg.model, **{k: v for k, v in (("pretrained", ""), ("freeze", "none"), ("new_head", False))
                                 if k in cfg.model}}
        cfg = dataclasses.replace(cfg, model=model, transfer=TransferConfig(),
                                  optim=dataclasses.replace(cfg.optim, stage_lr_decay=1.0),
                                  train=dataclasses.replace(cfg.train, cache_features=False))
        scratch = fit(cfg, verbose=0)  # in memory: no run directory
        name = "acc" if run.task.classify else "rmse"
        summary[f"baseline/scratch_{name}"] = scratch.summary[f"test/{name}"]
