"""Quick mode: `DEEPSTEP_QUICK=1` shortens every run so that the notebooks in `examples/` (and
anything else) execute in seconds, e.g. in CI. Nothing changes unless the variable is set.

`enabled()` is the one place the variable is read. `engine.fit.fit` passes every config through
`shorten(cfg)`, so recipes (`deepstep.train`, the CLI), `deepstep.fit` on arrays, a transfer
recipe's pretraining, baselines and the Fréchet feature classifier are all capped the same way;
`data.download.cache_dir()` adds a `quick/` folder, so that a shortened pretraining or feature
classifier is never cached where a full run would reuse it. The caps (only ever lowering a value):

    train.epochs 2 · data.limit 200 training examples · data.max_length 32 tokens
    gen.eval_samples 256 · gen.test_samples 1000 · gen.nll_samples 10
    env.steps_per_epoch 2048 · env.val_episodes 2 · env.eval_episodes 3 · rl.learning_starts 256

A data set with its own test split (Fashion-MNIST, MNIST) keeps the whole test split.

Results in quick mode are not the recipes' results: `[expect]` targets are usually NOT met.
"""

from __future__ import annotations

import copy
import os

VARIABLE = "DEEPSTEP_QUICK"

# section.key -> the largest value quick mode allows; 0 ("all"/"none") counts as unlimited for data.limit
CAPS: dict[str, int] = {
    "train.epochs": 2,
    "data.limit": 200,
    "data.max_length": 32,
    "gen.eval_samples": 256,
    "gen.test_samples": 1000,
    "gen.nll_samples": 10,
    "env.steps_per_epoch": 2048,
    "env.val_episodes": 2,
    "env.eval_episodes": 3,
    "rl.learning_starts": 256,
}
UNLIMITED_WHEN_ZERO = {"data.limit", "data.max_length"}


def enabled() -> bool:
    """Whether quick mode is on: DEEPSTEP_QUICK set to anything but '', '0', 'false', 'no', 'off'."""
    return os.environ.get(VARIABLE, "").strip().lower() not in ("", "0", "false", "no", "off")


def shorten(cfg):
    """`cfg` unchanged when quick mode is off; otherwise a copy with the CAPS applied to the
    sections the run has (a config already within the caps is returned as it is)."""
    if not enabled():
        return cfg
    changes = []
    for key, cap in CAPS.items():
        section, name = key.split(".")
        if not cfg.uses(section):
            continue
        value = getattr(getattr(cfg, section), name)
        if value > cap or (value == 0 and key in UNLIMITED_WHEN_ZERO):
            changes.append((section, name, cap))
    if not changes:
        return cfg
    cfg = copy.deepcopy(cfg)
    for section, name, cap in changes:
        setattr(getattr(cfg, section), name, cap)
    return cfg
