"""The `[transfer]` section of the supervised tasks (classify, regress): pretraining a backbone
recipe (tasks/transfer.py) and the scratch baseline (plugins/scratch.py), registered with those
tasks (config.register_section)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import opt, register_section
from ..errors import UserError


@dataclass
class TransferConfig:
    pretrain: str = opt("", "transfer: recipe (name or TOML file) whose run supplies model.pretrained; trained once "
                            "on first use and cached in $DEEPSTEP_CACHE/pretrained/ ('': off)")
    pretrain_set: list[str] = opt([], "transfer: --set overrides for the pretraining recipe, e.g. ['train.epochs=1'] "
                                      "(part of the cache key)")
    scratch_baseline: bool = opt(False, "transfer: also train the same model from scratch (no pretrained weights, "
                                        "nothing frozen, one learning rate) on the same split; "
                                        "reports baseline/scratch_acc")

    def __post_init__(self):
        for item in self.pretrain_set:
            if "=" not in item:
                raise UserError(f"transfer.pretrain_set: '{item}' is not of the form key=value (e.g. train.epochs=1).")


register_section("transfer", TransferConfig, tasks=("classify", "regress"))
