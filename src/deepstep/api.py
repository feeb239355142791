"""Keras-like convenience for learners: `fit`, `evaluate`, `predict` and `summary` on any
`nn.Module` and in-memory arrays (or a torch Dataset / DataLoader), running the same engine
`fit()` as `deepstep train`: the same loop, plug-ins, checkpoints and run directory.

What `fit` accepts besides names, and what it becomes in the engine's config:

    loss=       'cross_entropy' | nn.CrossEntropyLoss() | F.cross_entropy     -> cross_entropy
                'mse'           | nn.MSELoss()          | F.mse_loss          -> mse
                'l1' ('mae')    | nn.L1Loss()           | F.l1_loss           -> l1
                'huber'         | nn.HuberLoss() (delta 1), nn.SmoothL1Loss() (beta 1),
                                  F.huber_loss, F.smooth_l1_loss              -> huber
                reduction 'mean' or 'sum' (the training loss and its gradient; the reported
                validation loss is always the mean); CrossEntropyLoss's label_smoothing too.
    optimizer=  'sgd' | torch.optim.SGD (class or instance)      lr, momentum, weight_decay, nesterov
                'adam' | torch.optim.Adam                        lr, betas, eps, weight_decay
                'adamw' | torch.optim.AdamW                      lr, betas, eps, weight_decay
                'rmsprop' | torch.optim.RMSprop                  lr, alpha, eps, momentum, weight_decay
                a class gets torch's defaults (AdamW: weight_decay 0.01) unless fit's lr=,
                momentum=, weight_decay= are given; an instance carries its own settings.
    metrics=    classification: 'accuracy' (or 'acc': also on training batches), 'macro_f1'
                regression: 'mae', 'rmse'   (validation metrics are reported whenever there is
                validation data; the names are checked so that a typo is not ignored)
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import DataConfig, OptimConfig, RunConfig, SchedConfig, TrainConfig
from .data.arrays import Arrays, TensorData
from .engine.fit import fit as _fit
from .engine.plugin import KerasCallback, Plugin
from .errors import UserError, suggest
from .models.layers import check_fits
from .tasks.supervised import LOSSES, Supervised, loss_fn, metrics

KERAS_NAMES = {"train/loss": "loss", "train/acc": "accuracy", "val/loss": "val_loss", "val/acc": "val_accuracy"}


def keras_name(key: str) -> str:
    """An engine key as Keras names it: train/loss -> loss, val/acc -> val_accuracy,
    val/rmse -> val_rmse, eval/acc -> accuracy; keys without a split prefix (lr) stay."""
    split, sep, name = key.partition("/")
    if not sep or split not in ("train", "val", "test", "eval") or "/" in name:
        return key
    name = "accuracy" if name == "acc" else name
    return name if split in ("train", "eval") else f"{split}_{name}"


def keras_logs(record: dict) -> dict:
    """An epoch record (or a summary) with Keras names, without the loop's epoch and step."""
    return {keras_name(k): v for k, v in record.items() if k not in ("epoch", "step")}


@dataclass
class History:
    """Per-epoch metrics: `history["loss"]`, `history["val_accuracy"]`, ... (Keras names), the
    epochs they belong to, and the engine's `Run` (`run.summary`, `run.path` with `run_dir=`)."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epochs: list[int] = field(default_factory=list)
    run: Any = field(default=None, repr=False, compare=False)


# --- what fit accepts --------------------------------------------------------------------------

LOSS_MODULES = {nn.CrossEntropyLoss: "cross_entropy", nn.MSELoss: "mse", nn.L1Loss: "l1",
                nn.HuberLoss: "huber", nn.SmoothL1Loss: "huber"}
LOSS_FUNCTIONS = {F.cross_entropy: "cross_entropy", F.mse_loss: "mse", F.l1_loss: "l1",
                  F.huber_loss: "huber", F.smooth_l1_loss: "huber"}
LOSS_ALIASES = {"mae": "l1", "mean_absolute_error": "l1", "mean_squared_error": "mse",
                "sparse_categorical_crossentropy": "cross_entropy"}
OPTIMIZERS = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw",
              torch.optim.RMSprop: "rmsprop"}
OPTIM_FIELDS = {"sgd": ("lr", "momentum", "weight_decay", "nesterov"),
                "adam": ("lr", "betas", "eps", "weight_decay"),
                "adamw": ("lr", "betas", "eps", "weight_decay"),
                "rmsprop": ("lr", "alpha", "eps", "momentum", "weight_decay")}
# torch settings the engine's optimizers do not have: accepted only at these (torch's default) values
OPTIM_FIXED = {"dampening": 0, "amsgrad": False, "maximize": False, "centered": False,
               "decoupled_weight_decay": False}
METRICS = {True: {"accuracy": "accuracy", "acc": "accuracy", "macro_f1": "macro_f1"},
           False: {"mae": "mae", "rmse": "rmse"}}


def _supported_losses() -> str:
    return ("the names " + ", ".join(f"'{n}'" for n in LOSSES + tuple(LOSS_ALIASES)) + "; the modules "
            + ", ".join(f"nn.{c.__name__}()" for c in LOSS_MODULES) + "; or the functions "
            + ", ".join(f"F.{f.__name__}" for f in LOSS_FUNCTIONS))


@dataclass
class LossSpec:
    """A loss as the engine runs it: its name, the training reduction, label smoothing."""

    name: str
    reduction: str = "mean"
    label_smoothing: float = 0.0


def loss_spec(loss) -> LossSpec:
    """`loss=` of fit/evaluate -> LossSpec: an engine name, a Keras alias, a torch loss module (or
    its class) or function; anything else, or a setting the engine cannot honour, is a UserError."""
    if isinstance(loss, str):
        name = LOSS_ALIASES.get(loss, loss)
        if name not in LOSSES:
            raise UserError(f"fit: unknown loss '{loss}'.{suggest(loss, LOSSES + tuple(LOSS_ALIASES))} "
                            f"Supported: {_supported_losses()}.")
        return LossSpec(name)
    if isinstance(loss, type) and issubclass(loss, nn.Module) and loss in LOSS_MODULES:
        loss = loss()
    if type(loss) in LOSS_MODULES:
        name, what = LOSS_MODULES[type(loss)], f"nn.{type(loss).__name__}"
        if loss.reduction not in ("mean", "sum"):
            raise UserError(f"fit: {what}(reduction='{loss.reduction}') gives one loss per example; training "
                            "needs one number per batch: use reduction='mean' (the default) or 'sum'.")
        if isinstance(loss, nn.CrossEntropyLoss):
            if loss.weight is not None:
                raise UserError(f"fit: {what}(weight=...) class weights are not supported; use "
                                f"{what}() (or resample the classes).")
            if loss.ignore_index != -100:
                raise UserError(f"fit: {what}(ignore_index={loss.ignore_index}) is not supported; drop those "
                                "examples from the data instead.")
            return LossSpec(name, loss.reduction, float(loss.label_smoothing))
        for attr in ("delta", "beta"):  # HuberLoss.delta, SmoothL1Loss.beta: the engine's huber is 1.0
            if getattr(loss, attr, 1.0) != 1.0:
                raise UserError(f"fit: {what}({attr}={getattr(loss, attr)}) is not supported; the engine's "
                                f"'huber' loss has {attr} = 1.0.")
        return LossSpec(name, loss.reduction)
    for fn, name in LOSS_FUNCTIONS.items():
        if loss is fn:
            return LossSpec(name)
    got = (f"class {loss.__name__}" if isinstance(loss, type) else f"nn.{loss!r}" if isinstance(loss, nn.Module)
           else getattr(loss, "__name__", None) or f"{type(loss).__name__} {loss!r}")
    hint = (" For log-probabilities use nn.CrossEntropyLoss() on the logits instead."
            if isinstance(loss, nn.NLLLoss) else
            " For two classes give the model 2 outputs and use nn.CrossEntropyLoss()."
            if isinstance(loss, (nn.BCEWithLogitsLoss, nn.BCELoss)) else "")
    raise UserError(f"fit: loss {got} is not supported. Supported: {_supported_losses()}.{hint}")


def optim_config(optimizer, model: nn.Module, lr: float | None, weight_decay: float | None,
                 momentum: float | None) -> OptimConfig:
    """`optimizer=` of fit -> the engine's OptimConfig: a name (with fit's lr, weight_decay,
    momentum), a torch.optim class (torch's defaults unless fit's are given) or an instance built
    over the model's parameters (its own settings)."""
    given = {k: v for k, v in (("lr", lr), ("weight_decay", weight_decay), ("momentum", momentum)) if v is not None}
    if isinstance(optimizer, str):
        settings = {"lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9, **given}
        return OptimConfig(name=optimizer.lower(), **settings)
    supported = ("the names 'sgd', 'adam', 'adamw', 'rmsprop', the classes "
                 + ", ".join(f"torch.optim.{c.__name__}" for c in OPTIMIZERS)
                 + ", or an instance of one of them built over the model's parameters")
    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    if cls not in OPTIMIZERS:
        what = f"class {cls.__name__}" if isinstance(optimizer, type) else f"a {cls.__module__}.{cls.__name__} instance"
        raise UserError(f"fit: optimizer {what} is not supported. Supported: {supported}.")
    name, fields = OPTIMIZERS[cls], OPTIM_FIELDS[OPTIMIZERS[cls]]
    if isinstance(optimizer, type):
        defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
        settings = {k: defaults[k] for k in fields if isinstance(defaults.get(k), (int, float, tuple, bool))}
        settings.update({k: v for k, v in given.items() if k in fields})
        return OptimConfig(name=name, **_plain(settings))
    if given:
        raise UserError(f"fit: optimizer is a torch.optim.{cls.__name__} instance, which carries its own "
                        f"{', '.join(given)}; set {', '.join(given)} when building it, or pass "
                        f"optimizer=torch.optim.{cls.__name__} (the class) or '{name}' with {', '.join(given)}=.")
    groups = optimizer.param_groups
    for key in fields + tuple(OPTIM_FIXED):
        values = {repr(_plain({key: g[key]})[key]) for g in groups if key in g}
        if len(values) > 1:
            raise UserError(f"fit: the optimizer's parameter groups differ in {key} ({', '.join(sorted(values))}); "
                            "deepstep.fit trains with one setting for all parameters.")
    g = groups[0]
    if name == "adam" and g.get("decoupled_weight_decay"):  # Adam(decoupled_weight_decay=True) is AdamW
        name = "adamw"
    for key, default in {**OPTIM_FIXED, "decoupled_weight_decay": name == "adamw"}.items():
        if key in g and g[key] != default:
            raise UserError(f"fit: torch.optim.{cls.__name__}({key}={g[key]}) is not supported; the engine's "
                            f"'{name}' has {key}={default}. Supported settings: {', '.join(fields)}.")
    mine = {id(p) for p in model.parameters()}
    opt = {id(p) for g in groups for p in g["params"]}
    if opt - mine:
        raise UserError(f"fit: the {cls.__name__} optimizer holds {len(opt - mine)} parameters that are not the "
                        "model's; build it over this model: "
                        f"torch.optim.{cls.__name__}(model.parameters(), ...).")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in opt]
    if missing:
        raise UserError(f"fit: the {cls.__name__} optimizer leaves out {len(missing)} trainable parameters of the "
                        f"model ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); deepstep.fit "
                        "trains every trainable parameter: build the optimizer over model.parameters(), or "
                        "freeze those (requires_grad = False).")
    return OptimConfig(name=name, **_plain({k: g[k] for k in fields if k in g}))


def _plain(settings: dict) -> dict:
    """Tensors and tuples in optimizer settings -> floats and lists (OptimConfig's types)."""
    out = {}
    for k, v in settings.items():
        if isinstance(v, (tuple, list)):
            out[k] = [float(b) for b in v]
        elif isinstance(v, bool):
            out[k] = v
        else:
            out[k] = float(v)
    return out


def metric_names(given, classify: bool, loss: str) -> tuple[str, ...]:
    """`metrics=` -> the canonical names, checked against what the task reports."""
    if given is None:
        return ("accuracy",) if classify else ()
    valid = METRICS[classify]
    try:
        given = (given,) if isinstance(given, str) else tuple(given)
    except TypeError:
        raise UserError(f"fit: metrics={given!r} must be a list of names, e.g. metrics=['{next(iter(valid))}'] "
                        "(or metrics=()).") from None
    for m in given:
        if not isinstance(m, str) or m not in valid:
            other = METRICS[not classify]
            kind = "classification" if classify else "regression"
            why = (f" '{m}' is a {'regression' if classify else 'classification'} metric, but loss='{loss}' "
                   f"makes this a {kind} fit." if isinstance(m, str) and m in other else
                   suggest(m, valid) if isinstance(m, str) else "")
            raise UserError(f"fit: metric {m!r} is not supported.{why} Valid metrics for {kind} "
                            f"(loss='{loss}'): {', '.join(valid)} (or none: metrics=()).")
    return tuple(dict.fromkeys(valid[m] for m in given))


# --- data ------------------------------------------------------------------------------------

def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)


def _describe(obj) -> str:
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)} items ({', '.join(type(o).__name__ for o in obj[:4])})"
    if isinstance(obj, dict):
        return f"a dict with keys {list(obj)[:6]}"
    if hasattr(obj, "shape"):
        return f"a {type(obj).__name__} of shape {tuple(obj.shape)}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def materialize(data, what: str = "data") -> tuple:
    """(x, y) as given, or a torch Dataset of (x, y) pairs / a DataLoader of (x, y) batches read
    once into two arrays; anything else is a UserError saying what came and what is accepted."""
    from torch.utils.data import DataLoader, Dataset

    accepted = (f"fit: {what} must be (x, y) with x and y NumPy arrays or tensors, a torch Dataset of (x, y) "
                "pairs, or a DataLoader yielding (x, y) batches")
    if isinstance(data, (tuple, list)) and len(data) == 2 and not any(
            isinstance(d, (Dataset, DataLoader)) for d in data):
        return data[0], data[1]
    item = "batch"
    if isinstance(data, Dataset):
        data, item = DataLoader(data, batch_size=1024, shuffle=False), "item"
    if not isinstance(data, DataLoader):
        raise UserError(f"{accepted}; got {_describe(data)}.")
    unbatched = data.batch_size is None and data.batch_sampler is None  # DataLoader(batch_size=None)
    xs, ys = [], []
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise UserError(f"{accepted}; but a {item} of the {'Dataset' if item == 'item' else 'DataLoader'} "
                            f"is {_describe(batch)}, not an (x, y) pair.")
        xs.append(_numpy(batch[0]))
        ys.append(_numpy(batch[1]))
    if not xs:
        raise UserError(f"fit: {what} is an empty {type(data).__name__}: it yielded no (x, y) {item}.")
    join = np.stack if unbatched else np.concatenate
    return join(xs), join(ys)


def _check_finite(a: np.ndarray, what: str) -> None:
    # a float64 sum of float32 values overflows only for absurd sizes, and NaN/inf propagate through it
    if a.dtype.kind != "f" or np.isfinite(np.sum(a, dtype=np.float64)):
        return
    bad = np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(1))
    raise UserError(f"fit: {what} holds NaN or infinite values in {len(bad)} of {len(a)} examples (the first is "
                    f"example {bad[0]}). Drop or impute them (e.g. np.nan_to_num) before training: one NaN "
                    "makes the loss and then every weight NaN.")


def _arrays(x, y, loss: str, what: str = "data") -> Arrays:
    """(x, y) -> Arrays for the engine, checked: numbers, finite x, class labels for cross-entropy."""
    # copy=False: arrays already of the right dtype are used as they are (training only reads them)
    name = f"x of {what}" if what != "data" else "x"
    x, y = _numpy(x), _numpy(y)
    if x.dtype.kind not in "biuf":
        raise UserError(f"fit: {name} must hold numbers, but it holds {x.dtype} values "
                        f"(e.g. {x.reshape(-1)[:2].tolist()}).")
    x = x.astype(np.float32, copy=False)
    _check_finite(x, name)
    # the label range is checked by fit once the model's output width is known
    y = _labels(y, loss, what, ranged=False) if loss == "cross_entropy" else _targets(y, loss, what)
    kind = {4: "image", 3: "series"}.get(x.ndim, "table")
    return Arrays(x_train=x, y_train=y, kind=kind, source="arrays passed to fit" if what == "data" else what)


def _labels(y: np.ndarray, loss: str, what: str, n_out: int | None = None, ranged: bool = True) -> np.ndarray:
    """Class labels as int64, checked to be 0..C-1 (C = the model's output width when known)
    unless not `ranged`; anything else is a UserError."""
    name = f"y of {what}" if what != "data" else "y"
    c = f"C = the model's output width ({n_out} here)" if n_out else "C = the model's output width"
    need = f"fit: loss='{loss}' needs integer class labels 0..C-1 as {name}, where {c}"
    if y.dtype.kind in "USO":
        sample = ", ".join(repr(v) for v in list(dict.fromkeys(y.reshape(-1)[:1000].tolist()))[:3])
        raise UserError(f"{need}; but {name} holds {'strings' if y.dtype.kind in 'US' else 'objects'} "
                        f"({sample}, ...). Map them to integers first, e.g. "
                        "classes, y = np.unique(y, return_inverse=True).")
    if y.ndim == 2 and y.shape[1] > 1:
        raise UserError(f"{need}, one per example (shape (N,)); but {name} has shape {y.shape}. For one-hot labels "
                        "pass y.argmax(1).")
    if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
        raise UserError(f"fit: loss='cross_entropy' needs integer class labels as {name}, but {name} holds "
                        "non-integer values. For real-valued targets use loss='mse', 'l1' or 'huber'.")
    y = y.reshape(-1) if y.ndim == 2 else y
    y = y.astype(np.int64, copy=False)
    if not ranged:
        return y
    bad = (y < 0) | (y >= n_out) if n_out else y < 0
    if bad.any():
        wrong = np.unique(y[bad])
        listed = ", ".join(str(v) for v in wrong[:6]) + (", ..." if len(wrong) > 6 else "")
        fix = (f" Give the model {int(y.max()) + 1} outputs (one per class), or relabel the classes as 0..{n_out - 1}."
               if n_out and y.max() >= n_out else " Relabel the classes as 0..C-1.")
        raise UserError(f"{need}; but {name} holds the labels {listed} ({int(bad.sum())} examples).{fix}")
    return y


def _targets(y: np.ndarray, loss: str, what: str) -> np.ndarray:
    name = f"y of {what}" if what != "data" else "y"
    if y.dtype.kind not in "biuf":
        raise UserError(f"fit: loss='{loss}' needs numbers as {name}, but it holds {y.dtype} values "
                        f"(e.g. {y.reshape(-1)[:2].tolist()}).")
    y = y.astype(np.float32, copy=False)
    _check_finite(y, name)
    return y


def _output_width(model: nn.Module, x: np.ndarray) -> int | None:
    """The model's number of outputs per example (one forward pass on 2 examples, evaluation mode),
    or None; a shape error is a UserError naming the layer (models.layers.check_fits)."""
    p = next(iter(model.parameters()), None)
    sample = torch.as_tensor(x[:2]).to(p.device if p is not None else "cpu")
    with modes_kept(model):
        out = check_fits(model, sample, "arrays passed to fit")
    return int(out.shape[1]) if torch.is_tensor(out) and out.ndim >= 2 else None


@contextmanager
def modes_kept(model: nn.Module):
    """Every submodule back in its own training mode afterwards (a probe's model.train(was) would
    put a deliberately frozen batch-norm back into training mode)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class ArraysTask(Supervised):
    """Supervised learning on the arrays passed to `fit`: an explicit validation part
    (`validation_data`), the loss's training reduction, and the model's own output width."""

    def __init__(self, cfg, runtime, *, arrays: Arrays, model: nn.Module, spec: LossSpec, train_acc: bool,
                 val: tuple | None = None, n_out: int | None = None):
        super().__init__(cfg, runtime, arrays=arrays, model=model, loss=spec.name, train_acc=train_acc)
        self.reduction = spec.reduction
        if self.classify and n_out:  # metrics count every class the model can predict
            self.meta["num_outputs"], self.meta["classes"] = n_out, [str(i) for i in range(n_out)]
        if val is not None:
            self.data["val"] = TensorData(self._normalized(val[0]), val[1], runtime.device)
            self.meta["sizes"]["val"] = len(val[1])
            self.has_val = True

    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return super().loss(out, y, self.reduction if reduction == "mean" else reduction)


class KerasLogs(KerasCallback):
    """A Keras-style callback that sees Keras names: on_epoch_end(epoch, {'loss', 'accuracy',
    'val_loss', 'val_accuracy', ...}), on_train_end with the final metrics named the same way."""

    def on_epoch_end(self, run: Any, logs: dict) -> bool:
        stop = self._call("on_epoch_end", logs["epoch"] - 1, keras_logs(logs))
        return bool(stop) or bool(getattr(self.obj, "stop_training", False))

    def on_finish(self, run: Any, summary: dict) -> None:
        self._call("on_train_end", keras_logs(summary))


def _plugins(callbacks) -> list[Plugin]:
    if callbacks is None:
        return []
    callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    hooks = ("on_train_begin", "on_epoch_begin", "on_epoch_end", "on_train_end")
    out = []
    for i, cb in enumerate(callbacks):
        if isinstance(cb, Plugin):
            out.append(cb)
        elif isinstance(cb, type):
            raise UserError(f"fit: callbacks[{i}] is the class {cb.__name__}; pass an instance: {cb.__name__}().")
        elif any(callable(getattr(cb, h, None)) for h in hooks):
            out.append(KerasLogs(cb))
        else:
            raise UserError(f"fit: callbacks[{i}] ({_describe(cb)}) is neither a deepstep Plugin nor a Keras-style "
                            f"callback (an object with any of {', '.join(hooks)}; on_epoch_end(epoch, logs)).")
    return out


# --- the API ---------------------------------------------------------------------------------

def fit(model: torch.nn.Module, data, *, epochs: int, batch_size: int = 64, optimizer="adam",
        lr: float | None = None, loss="cross_entropy", metrics=None, validation_split: float = 0.0,
        validation_data=None, callbacks=(), weight_decay: float | None = None, momentum: float | None = None,
        early_stopping: int = 0, run_dir=None, device: str = "cpu", seed: int = 0, verbose: int = 1,
        precision: str = "auto", threads: int | str = "auto") -> History:
    """Train `model` in place on `data` with the deepstep engine (`engine.fit.fit`).

    Args:
        model: any `nn.Module` mapping a batch of x to outputs (logits for cross-entropy).
        data: (x, y) as NumPy arrays or tensors, a torch Dataset of (x, y) pairs or a DataLoader
            of (x, y) batches (read once into arrays).
        epochs, batch_size: passes over the data and examples per step.
        optimizer: 'sgd', 'adam', 'adamw' or 'rmsprop' (lr default 1e-3, weight_decay 0, momentum
            0.9 for sgd/rmsprop); a torch.optim class (SGD, Adam, AdamW, RMSprop: torch's defaults
            unless lr/weight_decay/momentum are given); or such an optimizer built over the model's
            parameters (its settings are used; the engine builds a fresh one with them).
        loss: 'cross_entropy' (class indices 0..C-1 as y), 'mse', 'l1' ('mae') or 'huber', or
            the torch losses nn.CrossEntropyLoss(), nn.MSELoss(), nn.L1Loss(), nn.HuberLoss(),
            nn.SmoothL1Loss() (reduction 'mean' or 'sum') and their F. functions.
        metrics: classification: ('accuracy',) (the default; 'acc' too) also tracks training
            accuracy, 'macro_f1'; regression: 'mae', 'rmse'; () none. Validation metrics are
            reported whenever there is validation data; unknown names are an error.
        validation_split: fraction held out (stratified, fixed by `seed`) and evaluated each epoch.
        validation_data: (x_val, y_val) (or a Dataset / DataLoader) evaluated each epoch instead of
            a held-out fraction (not together with validation_split).
        callbacks: deepstep Plugins (engine/plugin.py) and Keras-style objects with any of
            on_train_begin(logs), on_epoch_begin(epoch), on_epoch_end(epoch, logs) (logs with Keras
            names: loss, accuracy, val_loss, val_accuracy), on_train_end(logs); returning True
            from on_epoch_end, or setting `.stop_training = True`, stops training.
        early_stopping: stop after this many epochs without val-loss improvement and restore the
            best weights (0: off; needs validation data).
        run_dir: a run directory to write (config.toml, metrics.jsonl, checkpoint.pt,
            model.safetensors, summary.json, plug-ins' files); None trains in memory.
        device: 'cpu', 'cuda', 'mps' or 'auto'. seed: for the split, shuffling and dropout.
        verbose: 0 silent, 1 one line per epoch (a progress bar on a terminal).
        precision, threads: as train.precision and train.threads ('auto': bf16 autocast and
            channels_last for conv nets where the device runs bf16 natively, and one thread for
            models under 10 MFLOPs per call); e.g. precision='fp32', threads=1 to pin them.

    Returns:
        History with a Keras-like `.history` dict of per-epoch lists, `.epochs`, and `.run`, the
        engine's Run (`run.summary`: final metrics; `run.path`: the run directory or None).

    Example:
        >>> import torch, deepstep
        >>> x = torch.randn(256, 2); y = (x[:, 0] > x[:, 1]).long()
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> h = deepstep.fit(net, (x, y), epochs=20, lr=1e-2, verbose=0)
        >>> h.history["accuracy"][-1] > 0.9
        True
        >>> deepstep.evaluate(net, (x, y))["accuracy"] > 0.9
        True
        >>> h = deepstep.fit(net, (x, y), epochs=2, loss=torch.nn.CrossEntropyLoss(), verbose=0,
        ...                  optimizer=torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
        ...                  validation_data=(x[:64], y[:64]))
        >>> sorted(h.history), h.run.summary["epochs"]
        (['accuracy', 'loss', 'lr', 'val_accuracy', 'val_loss', 'val_macro_f1'], 2)
    """
    spec = loss_spec(loss)
    classify = spec.name == "cross_entropy"
    names = metric_names(metrics, classify, spec.name)
    optim = optim_config(optimizer, model, lr, weight_decay, momentum)
    if validation_data is not None and validation_split:
        raise UserError(f"fit: give either validation_split={validation_split} (a part of data held out) or "
                        "validation_data=(x_val, y_val), not both.")
    if early_stopping and not validation_split and validation_data is None:
        raise UserError(f"fit: early_stopping={early_stopping} watches the validation loss, so it needs "
                        "validation data: validation_split > 0 (e.g. validation_split=0.2) or "
                        "validation_data=(x_val, y_val).")
    plugins = _plugins(callbacks)
    arrays = _arrays(*materialize(data, "data"), spec.name)
    n_out = _output_width(model, arrays.x_train)
    if classify:
        arrays.y_train = _labels(arrays.y_train, spec.name, "data", n_out)
    val = None
    if validation_data is not None:
        v = _arrays(*materialize(validation_data, "validation_data"), spec.name, "validation_data")
        if v.x_train.shape[1:] != arrays.x_train.shape[1:]:
            raise UserError(f"fit: the examples of validation_data have shape {v.x_train.shape[1:]}, but those of "
                            f"data {arrays.x_train.shape[1:]}.")
        val = (v.x_train, _labels(v.y_train, spec.name, "validation_data", n_out) if classify else v.y_train)
    cfg = RunConfig(
        task="classify" if classify else "regress",
        data=DataConfig(name="arrays", val_split=validation_split, test_split=0.0, normalize=False),
        model={"name": "custom"},
        optim=optim,
        sched=SchedConfig(),
        train=TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, device=device, monitor="val/loss",
                          early_stop=early_stopping, restore_best=early_stopping > 0, log_every=10**9,
                          label_smoothing=spec.label_smoothing, precision=precision, threads=threads),
    )
    run = _fit(cfg, run_dir=run_dir, plugins=plugins, verbose=verbose,
               task=lambda rt: ArraysTask(cfg, rt, arrays=arrays, model=model, spec=spec,
                                          train_acc="accuracy" in names, val=val, n_out=n_out))
    hist = History(run=run)
    for logs in run.loop.history:
        hist.epochs.append(logs["epoch"])
        for k, v in keras_logs(logs).items():
            hist.history.setdefault(k, []).append(v)
    return hist


@torch.inference_mode()
def predict(model: torch.nn.Module, x, batch_size: int = 1024) -> np.ndarray:
    """Model outputs for x (NumPy array or tensor), in eval mode, as a NumPy array."""
    model.eval()
    dev = next(model.parameters()).device
    x = torch.as_tensor(_numpy(x), dtype=torch.float32)
    return torch.cat([model(x[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)]).numpy()


def evaluate(model: torch.nn.Module, data, loss="cross_entropy", batch_size: int = 1024) -> dict:
    """Loss and accuracy (classification) or RMSE/MAE (regression) of `model` on `data` ((x, y),
    a Dataset or a DataLoader, as for `fit`); `loss` as for `fit`, the loss reported as a mean.
    Returns Keras-like keys: {'loss': ..., 'accuracy': ..., 'macro_f1': ...} or {'loss', 'rmse', 'mae'}."""
    spec = loss_spec(loss)
    x, y = materialize(data, "data")
    out = torch.from_numpy(predict(model, x, batch_size))
    y = torch.as_tensor(_numpy(y))
    classify = spec.name == "cross_entropy"
    y = y.long() if classify else y.float()
    total = loss_fn(spec.name, out, y, "sum", spec.label_smoothing).item() / len(y)
    m = metrics(out, y, total, classify, "eval", out.shape[-1])
    return {keras_name(k): v for k, v in m.items()}


def summary(model: nn.Module, input_shape, *, dtype: torch.dtype = torch.float32, print_fn=print) -> dict:
    """Print the model's layers Keras-style (name, type, output shape, parameters, trainable) from
    one forward pass of a zero batch of shape (2, *input_shape) in evaluation mode, then the total,
    trainable and non-trainable parameter counts, which it returns as a dict.

    Rows are the modules that compute something themselves (leaves, and containers with their
    own parameters) in the order the forward pass reaches them; modules it never calls come last.
    Each parameter counts once, in the first module that holds it (tied weights are not doubled).
    `N` in an output shape is the batch dimension. `dtype=torch.long` feeds token ids.

    Example:
        >>> import torch, deepstep
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> deepstep.summary(net, (4,), print_fn=lambda line: None)
        {'total': 67, 'trainable': 67, 'non_trainable': 0}
    """
    shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(int(s) for s in input_shape)
    batch = 2
    first = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    x = torch.zeros((batch, *shape), dtype=dtype, device=first.device if first is not None else "cpu")
    seen_params: set[int] = set()
    rows: dict[int, dict] = {}  # id(module) -> row, in the order the forward pass enters them
    modules = [(n, m) for n, m in model.named_modules()
               if not list(m.children()) or any(True for _ in m.parameters(recurse=False))]

    def enter(mod, args, name):
        rows.setdefault(id(mod), {"name": name or "(model)", "type": type(mod).__name__, "shape": None})

    def leave(mod, args, out):
        row = rows[id(mod)]
        if row["shape"] is None:
            row["shape"] = _shape_text(out, batch)

    hooks = []
    for n, m in modules:
        hooks.append(m.register_forward_pre_hook(lambda mod, args, n=n: enter(mod, args, n)))
        hooks.append(m.register_forward_hook(leave))
    try:
        with modes_kept(model):  # check_fits runs it in evaluation mode
            check_fits(model, x, f"summary's input_shape {shape}")
    finally:
        for h in hooks:
            h.remove()
    for n, m in modules:  # modules the forward pass did not call
        rows.setdefault(id(m), {"name": n or "(model)", "type": type(m).__name__, "shape": "(not called)"})
    by_id = {id(m): m for _, m in modules}
    for key, row in rows.items():
        params = [p for p in by_id[key].parameters(recurse=False) if id(p) not in seen_params]
        seen_params.update(id(p) for p in params)
        n_train = sum(p.numel() for p in params if p.requires_grad)
        row["params"] = sum(p.numel() for p in params)
        row["trainable"] = ("-" if not row["params"] else "yes" if n_train == row["params"]
                            else "no" if n_train == 0 else "partly")
    unique = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in unique)
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    head = ("Layer", "Type", "Output shape", "Params", "Trainable")
    table = [(r["name"], r["type"], r["shape"] or "-", f"{r['params']:,}", r["trainable"]) for r in rows.values()]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *table)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    rule = "-" * len(line(head))
    print_fn(f'Model: "{type(model).__name__}"  (input {(batch, *shape)}, N = the batch)')
    print_fn(rule)
    print_fn(line(head))
    print_fn("=" * len(rule))
    for cells in table:
        print_fn(line(cells))
    print_fn("=" * len(rule))
    print_fn(f"Total params: {total:,}")
    print_fn(f"Trainable params: {trainable:,}")
    print_fn(f"Non-trainable params: {total - trainable:,}")
    print_fn(rule)
    return {"total": total, "trainable": trainable, "non_trainable": total - trainable}


def _shape_text(out, batch: int) -> str:
    """A module's output as shapes: (N, 16), or nested for tuples and dicts (LSTM's (out, (h, c)))."""
    if torch.is_tensor(out):
        dims = list(out.shape)
        return "(" + ", ".join(["N" if i == 0 and d == batch else str(d) for i, d in enumerate(dims)]) + \
            ("," if len(dims) == 1 else "") + ")"
    if isinstance(out, (tuple, list)):
        return "[" + ", ".join(_shape_text(o, batch) for o in out) + "]"
    if isinstance(out, dict):
        return "{" + ", ".join(f"{k}: {_shape_text(v, batch)}" for k, v in out.items()) + "}"
    return type(out).__name__
