"""Keras-like convenience for learners: `fit`, `evaluate`, `predict` on any `nn.Module` and
in-memory arrays, running the same engine loop as `deepstep train`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .config import DataConfig, OptimConfig, RunConfig, SchedConfig, TrainConfig
from .data.arrays import Arrays
from .engine.fit import fit as _fit
from .errors import UserError
from .tasks.supervised import Supervised, loss_fn, metrics

KERAS_NAMES = {"train/loss": "loss", "train/acc": "accuracy", "val/loss": "val_loss", "val/acc": "val_accuracy"}


@dataclass
class History:
    """Per-epoch metrics: `history["loss"]`, `history["val_accuracy"]`, ... (Keras names)."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epochs: list[int] = field(default_factory=list)


def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)


def _arrays(x, y, loss: str) -> Arrays:
    # copy=False: arrays already of the right dtype are used as they are (training only reads them)
    x = _numpy(x).astype(np.float32, copy=False)
    y = _numpy(y)
    if loss == "cross_entropy" and y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
        raise UserError("fit: loss='cross_entropy' needs integer class labels as y, but y holds "
                        "non-integer values. For real-valued targets use loss='mse', 'l1' or 'huber'.")
    y = y.astype(np.int64 if loss == "cross_entropy" else np.float32, copy=False)
    kind = {4: "image", 3: "series"}.get(x.ndim, "table")
    return Arrays(x_train=x, y_train=y, kind=kind, source="arrays passed to fit")


def fit(model: torch.nn.Module, data, *, epochs: int, batch_size: int = 64, optimizer: str = "adam",
        lr: float = 1e-3, loss: str = "cross_entropy", metrics: tuple = ("accuracy",),
        validation_split: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
        early_stopping: int = 0, device: str = "cpu", seed: int = 0, verbose: int = 1) -> History:
    """Train `model` in place on `data = (x, y)` with the deepstep engine.

    Args:
        model: any `nn.Module` mapping a batch of x to outputs (logits for cross-entropy).
        data: (x, y) as NumPy arrays or tensors.
        epochs, batch_size: passes over the data and examples per step.
        optimizer: sgd, adam, adamw or rmsprop; lr, weight_decay and momentum configure it.
        loss: cross_entropy (class indices as y), mse, l1 or huber.
        metrics: ("accuracy",) also tracks training accuracy for classification; () skips it.
        validation_split: fraction held out (stratified, fixed by `seed`) and evaluated each epoch.
        early_stopping: stop after this many epochs without val-loss improvement and restore the
            best weights (0: off; needs validation_split).
        device: 'cpu', 'cuda', 'mps' or 'auto'. seed: for the split, shuffling and dropout.
        verbose: 0 silent, 1 one line per epoch (a progress bar on a terminal).

    Returns:
        History with a Keras-like `.history` dict of per-epoch lists.

    Example:
        >>> import torch, deepstep
        >>> x = torch.randn(256, 2); y = (x[:, 0] > x[:, 1]).long()
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> h = deepstep.fit(net, (x, y), epochs=20, lr=1e-2, verbose=0)
        >>> h.history["accuracy"][-1] > 0.9
        True
        >>> deepstep.evaluate(net, (x, y))["accuracy"] > 0.9
        True
    """
    if early_stopping and not validation_split:
        raise UserError(f"fit: early_stopping={early_stopping} watches the validation loss, so it needs "
                        "validation_split > 0 (e.g. validation_split=0.2).")
    cfg = RunConfig(
        task="classify" if loss == "cross_entropy" else "regress",
        data=DataConfig(name="arrays", val_split=validation_split, test_split=0.0, normalize=False),
        model={"name": "custom"},
        optim=OptimConfig(name=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum),
        sched=SchedConfig(),
        train=TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, device=device, monitor="val/loss",
                          early_stop=early_stopping, restore_best=early_stopping > 0, log_every=10**9),
    )
    arrays = _arrays(*data, loss)
    run = _fit(cfg, task=lambda rt: Supervised(cfg, rt, arrays=arrays, model=model, loss=loss,
                                               train_acc="accuracy" in metrics), verbose=verbose)
    hist = History()
    for logs in run.loop.history:
        hist.epochs.append(logs["epoch"])
        for k, v in logs.items():
            if k not in ("epoch", "step"):
                hist.history.setdefault(KERAS_NAMES.get(k, k), []).append(v)
    return hist


@torch.inference_mode()
def predict(model: torch.nn.Module, x, batch_size: int = 1024) -> np.ndarray:
    """Model outputs for x (NumPy array or tensor), in eval mode, as a NumPy array."""
    model.eval()
    dev = next(model.parameters()).device
    x = torch.as_tensor(_numpy(x), dtype=torch.float32)
    return torch.cat([model(x[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)]).numpy()


def evaluate(model: torch.nn.Module, data, loss: str = "cross_entropy", batch_size: int = 1024) -> dict:
    """Loss and accuracy (classification) or RMSE/MAE (regression) of `model` on `data = (x, y)`.
    Returns Keras-like keys: {'loss': ..., 'accuracy': ...} or {'loss', 'rmse', 'mae'}."""
    out = torch.from_numpy(predict(model, data[0], batch_size))
    y = torch.as_tensor(_numpy(data[1]))
    classify = loss == "cross_entropy"
    y = y.long() if classify else y.float()
    m = metrics(out, y, loss_fn(loss, out, y, "sum").item() / len(y), classify, "eval", out.shape[-1])
    return {KERAS_NAMES.get(k.replace("eval/", "val/"), k.split("/")[1]).removeprefix("val_"): v for k, v in m.items()}
