"""Text runs: the files predictions need (tokenizer, encoder config) and the TF-IDF baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..engine.plugin import Plugin
from ..engine.runtime import unwrap
from ..registry import MODELS, PLUGINS
from ..tasks.baselines import tfidf_logreg
from ..tasks.supervised import Supervised, metrics


def _text(run) -> bool:
    return isinstance(run.task, Supervised) and run.task.tokenizer is not None


@PLUGINS.register("tokenizer-files", tags=("default",))
class TokenizerFiles(Plugin):
    """Saves a text run's tokenizer (RUN/tokenizer.json or RUN/tokenizer/) and a pretrained encoder's config (RUN/encoder/), so that predict needs the run directory alone."""

    name = "tokenizer-files"

    def applies_to(self, run) -> bool:
        return run.dir is not None and _text(run)

    def on_start(self, run) -> None:
        run.task.tokenizer.save(run.path)
        if MODELS.has(run.cfg.model["name"], "run-files"):  # a model that needs files of its own to be rebuilt
            unwrap(run.task.model).save_run_files(run.path)


@PLUGINS.register("tfidf-baseline", tags=("default",))
class TfidfBaseline(Plugin):
    """Scores a TF-IDF + logistic-regression baseline on the same training and test texts (baseline/tfidf_acc, baseline/tfidf_macro_f1)."""

    name = "tfidf-baseline"
    rank0_only = False

    def applies_to(self, run) -> bool:
        return _text(run) and run.task.classify and "test" in run.task.texts

    def on_finish(self, run, summary: dict) -> None:
        task = run.task
        (x, y), (xt, yt) = task.texts["train"], task.texts["test"]
        val = task.texts.get("val")
        pred = tfidf_logreg(list(x), y, list(xt), val=val and (list(val[0]), val[1]),
                            lowercase=task.cfg.data.lowercase, seed=task.cfg.train.seed)
        n = task.meta["num_outputs"]
        m = metrics(F.one_hot(torch.as_tensor(pred), n).float(), torch.as_tensor(yt), 0.0, True, "baseline", n)
        summary.update({"baseline/tfidf_acc": m["baseline/acc"], "baseline/tfidf_macro_f1": m["baseline/macro_f1"]})
