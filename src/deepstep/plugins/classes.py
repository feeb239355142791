"""Per-class analysis of a classification run (RUN/classes.json, RUN/predictions.npz), which the
model card and the HTML report read, and the class-balance warning at the start of training."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.plugin import Plugin
from ..engine.runtime import evaluating
from ..registry import PLUGINS
from ..tasks.supervised import Supervised

CLASSES_FILE = "classes.json"
PREDICTIONS_FILE = "predictions.npz"
ECE_BINS = 15
TOP_LOSSES = 16
MOST_CONFUSED = 5


def _classify(run) -> bool:
    """A classifier: autoencoders and GANs subclass Supervised with `classify` set too, but their
    meta's loss is not cross-entropy."""
    return isinstance(run.task, Supervised) and run.task.classify and run.meta.loss == "cross_entropy"


def train_counts(run) -> np.ndarray:
    """Examples per class in the training split (length num_outputs)."""
    d = run.task.data["train"]
    y = d.y if hasattr(d, "y") else d.y_all
    return np.bincount(y.cpu().numpy().astype(np.int64), minlength=run.meta.num_outputs)


def calibration(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Expected calibration error over `bins` equal-width confidence bins (a confidence c falls in
    the bin (lo, hi], the first bin also holds 0) and each bin's accuracy, mean confidence and count
    (accuracy and confidence are None for an empty bin)."""
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    out, ece = [], 0.0
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        acc = float(correct[m].mean()) if n else None
        c = float(conf[m].mean()) if n else None
        if n:
            ece += n / len(y) * abs(acc - c)
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "accuracy": acc, "confidence": c, "count": n})
    return {"ece": float(ece), "bins": out}


def analyse(probs: np.ndarray, y: np.ndarray, classes: list[str], balance: np.ndarray) -> dict:
    """What RUN/classes.json holds, from test probabilities (N, C), labels (N,) and the training
    split's counts per class."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(classes)))
    pred = probs.argmax(1)
    p, r, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y, pred, labels=labels)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    off = [(int(cm[t, q]), t, q) for t in labels for q in labels if t != q and cm[t, q] > 0]
    off.sort(key=lambda e: (-e[0], e[1], e[2]))
    present = [i for i in labels if support[i] > 0]  # as test/macro_f1: classes the test split holds
    worst = min(present, key=lambda i: (f1[i], i))
    mean_f1 = float(np.mean(f1[present]))
    return {
        "classes": list(classes),
        "per_class": [{"class": classes[i], "precision": float(p[i]), "recall": float(r[i]),
                       "f1": float(f1[i]), "support": int(support[i])} for i in labels],
        "confusion": cm.astype(int).tolist(),
        "confusion_normalized": norm.tolist(),
        "most_confused": [{"true": classes[t], "predicted": classes[q], "count": n}
                          for n, t, q in off[:MOST_CONFUSED]],
        "calibration": calibration(probs, y),
        "train_balance": {classes[i]: int(balance[i]) for i in labels},
        "worst_class": {"class": classes[worst], "f1": float(f1[worst]), "gap_to_mean": mean_f1 - float(f1[worst])},
    }


@PLUGINS.register("class-report", tags=("default",))
class ClassReport(Plugin):
    """Per-class precision/recall/F1, confusion matrix, most-confused pairs, calibration (ECE, 15
    bins) and the training split's class balance of a classification run's test split, into
    RUN/classes.json; test probabilities and the 16 highest-loss test inputs into
    RUN/predictions.npz; summary keys test/ece and test/worst_class_f1."""

    name = "class-report"
    order = 30

    def applies_to(self, run) -> bool:
        return run.dir is not None and _classify(run) and "test" in run.task.data

    def on_finish(self, run, summary: dict) -> None:
        task = run.task
        with torch.inference_mode(), evaluating(task.model):
            out, y = task.predictions("test")
            out, y = out.float().cpu(), y.cpu().long()
            probs = out.softmax(-1)
            losses = F.cross_entropy(out, y, reduction="none")
        k = min(TOP_LOSSES, len(y))
        top = torch.argsort(losses, descending=True, stable=True)[:k].numpy()
        probs_np, y_np = probs.numpy().astype(np.float32), y.numpy().astype(np.int64)
        classes = list(run.meta.classes)
        classes += [str(i) for i in range(len(classes), probs_np.shape[1])]
        report = analyse(probs_np, y_np, classes, train_counts(run))
        files = {"probs": probs_np, "y": y_np, "top_loss_index": top.astype(np.int64),
                 "top_loss_x": self._inputs(task, top), "top_loss_loss": losses[top].numpy().astype(np.float32)}
        if "test" in task.texts:
            files["top_loss_text"] = np.array([str(task.texts["test"][0][i]) for i in top])
        np.savez_compressed(run.path / PREDICTIONS_FILE, **files)
        (run.path / CLASSES_FILE).write_text(json.dumps(report, indent=1) + "\n")
        summary["test/ece"] = report["calibration"]["ece"]
        summary["test/worst_class_f1"] = report["worst_class"]["f1"]

    @staticmethod
    def _inputs(task, index: np.ndarray) -> np.ndarray:
        """The test inputs at `index` as the model saw them (normalized; token ids for text)."""
        d = task.data["test"]
        x = d.x[torch.as_tensor(index, device=d.x.device)] if hasattr(d, "x") else d.read(index)[0]
        x = x.cpu().numpy()
        return x if x.dtype.kind in "iu" else x.astype(np.float32)


@PLUGINS.register("class-balance", tags=("default",))
class ClassBalance(Plugin):
    """Warns at the start of training (stderr) about each class with less than a third of the
    training examples of the largest class."""

    name = "class-balance"

    def applies_to(self, run) -> bool:
        return _classify(run) and "train" in run.task.data

    def on_start(self, run) -> None:
        for line in balance_warnings(train_counts(run), list(run.meta.classes)):
            print(line, file=sys.stderr, flush=True)


def balance_warnings(counts: np.ndarray, classes: list[str]) -> list[str]:
    """One warning per class with fewer than a third of the largest class's training examples."""
    names = classes or [str(i) for i in range(len(counts))]
    big = int(np.argmax(counts))
    return [f"warning: class '{names[i]}' has {int(n)} training examples, less than a third of the largest "
            f"class '{names[big]}' ({int(counts[big])})" for i, n in enumerate(counts) if 3 * n < counts[big]]
