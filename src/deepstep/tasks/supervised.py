"""Supervised learning on in-memory arrays: classification (cross-entropy; accuracy, macro-F1)
and regression (MSE/L1/Huber; RMSE, MAE). The step is one forward/backward on a batch.

Text (data kind "text"): after the split, a tokenizer is built on the training texts only and
every part becomes int64 ids (N, T) — no normalization; the model gets the vocabulary size as its
third positional argument (models/rnn.py). Plug-ins save the tokenizer (tokenizer.json) and score a
TF-IDF + logistic-regression baseline on the same split (plugins/text.py).
With data.tokenizer = "pretrained" the tokenizer is instead the pretrained encoder's own (the
source named by model.pretrained; models/bert.py), saved into RUN/tokenizer/ with the encoder's
config.json in RUN/encoder/.

Transfer learning (ResNets, models/resnet.py): `data.train_limit` keeps the first N training
examples after the split (the test part stays the same); `optim.stage_lr_decay` gives each earlier
stage a smaller rate (engine/optim.py `stage_groups`); `train.cache_features` encodes every split
once with the frozen backbone and trains the head on the embeddings, through the same loop;
`transfer.scratch_baseline` trains the same model from scratch on the same split
(plugins/scratch.py); `transfer.pretrain` trains a backbone recipe once (`Supervised.prepare`).

Registered as the classes `Classify` and `Regress`; `Supervised.inference(run)` rebuilds what
predictions need from a finished run directory alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..data.arrays import (
    Arrays,
    Normalizer,
    StreamData,
    TensorData,
    alternate_flips,
    augment_images,
    limit_stratified,
    resize_images,
    split,
)
from ..data.tokenize import TOKENIZER_FILE, PretrainedTokenizer, Tokenizer, build_tokenizer
from ..engine.checkpoint import load_state
from ..engine.logs import monitor_mode
from ..engine.optim import Optimization, stage_groups
from ..engine.run import Inference, Run
from ..engine.runtime import Runtime, evaluating, unwrap
from ..errors import UserError
from ..models.layers import check_fits, create_model, reload_options, text_models
from ..registry import DATASETS, MODELS, TASKS
from .transfer import with_pretrained

LOSSES = ("cross_entropy", "mse", "l1", "huber")


class Supervised:
    """Learning from labelled in-memory arrays: one forward and backward pass per batch.

    Args:
        cfg: the resolved RunConfig.
        runtime: device/precision/distribution.
        arrays: data to use instead of loading `cfg.data.name` (the Python API passes its own).
        model: an nn.Module to use instead of building `cfg.model` (any module works).
        loss: 'cross_entropy' (classification) or 'mse', 'l1', 'huber' (regression).
    """

    tta = ""  # train.tta of image runs; subclasses with other inputs (forecast) keep ""
    _flips: torch.Tensor | None = None  # data.augment = 'altflip': the even epochs' mirrored half
    _odd = False  # the current epoch is odd: the other half is mirrored

    def __init__(self, cfg: RunConfig, runtime: Runtime, arrays: Arrays | None = None, model: torch.nn.Module | None = None,
                 loss: str = "cross_entropy", train_acc: bool = True):
        if loss not in LOSSES:
            raise UserError(f"Unknown loss '{loss}'. Valid losses: {', '.join(LOSSES)}.")
        self.cfg, self.rt, self.loss_name = cfg, runtime, loss
        self.classify = loss == "cross_entropy"
        self.train_acc = self.classify and train_acc
        given = arrays is not None
        arrays = arrays if given else DATASETS.get(cfg.data.name)(cfg.data)
        if not isinstance(arrays, Arrays):  # e.g. a time series, which task 'forecast' reads
            raise UserError(f"Data set '{cfg.data.name}' is for task '{getattr(arrays, 'task', '?')}', not '{cfg.task}'.")
        if self.classify and arrays.y_train.dtype.kind not in "iu":
            raise UserError(f"{arrays.source}: classification needs integer class labels, got {arrays.y_train.dtype}.")
        if cfg.data.image_size and arrays.kind == "image":
            size = cfg.data.image_size
            if cfg.data.stream and tuple(arrays.x_train.shape[-2:]) != (size, size):
                raise UserError(f"data.image_size = {size}: streamed images ({arrays.source}, "
                                f"{arrays.x_train.shape[-2]}x{arrays.x_train.shape[-1]}) are read from disk as "
                                "they are; resize the files, or drop data.stream to resize them in memory.")
            if not cfg.data.stream:
                arrays = resize_images(arrays, size)
        stream = cfg.data.stream and arrays.kind != "text"
        if stream:  # split row indices; the inputs stay where they are (usually a memory-mapped file)
            sources = {"train": arrays.x_train, "val": arrays.x_train,
                       "test": arrays.x_train if arrays.x_test is None else arrays.x_test}
            rows = dataclasses.replace(arrays, x_train=np.arange(len(arrays.x_train)),
                                       x_test=None if arrays.x_test is None else np.arange(len(arrays.x_test)))
            parts = split(rows, cfg.data.val_split, cfg.data.test_split, cfg.train.seed, stratify=self.classify)
        else:
            parts = split(arrays, cfg.data.val_split, cfg.data.test_split, cfg.train.seed, stratify=self.classify,
                          need_test=not given)
        if cfg.data.train_limit:  # classes: each class's share kept (stratified)
            y = np.asarray(parts["train"][1])
            keep = (limit_stratified(y, cfg.data.train_limit) if self.classify and y.dtype.kind in "iu"
                    else np.arange(min(cfg.data.train_limit, len(y))))
            parts["train"] = tuple(a[keep] for a in parts["train"])
        self.tokenizer, self.texts = None, {}
        if arrays.kind == "text":
            self.texts = {k: v for k, v in parts.items() if v is not None}  # raw, for the baseline
            self.tokenizer = build_tokenizer(parts["train"][0], cfg.data, cfg.model)
            parts = {k: v and (self.tokenizer.encode(v[0]), v[1]) for k, v in parts.items()}
        x_train = parts["train"][0]
        if stream:  # statistics from (up to) the first 10,000 training rows, in file order
            x_train = np.asarray(arrays.x_train[np.sort(x_train[:10_000])], dtype=np.float32) * np.float32(arrays.scale)
        if arrays.kind == "text":
            self.norm = Normalizer([], [], "text")  # token ids are not scaled
        else:
            self.norm = (Normalizer.fit(x_train, arrays.kind) if cfg.data.normalize
                         else Normalizer.identity(x_train, arrays.kind))
        if stream:
            self.data = {k: StreamData(sources[k], v[0], v[1], self.norm, arrays.scale, runtime.device,
                                       cfg.data.workers) for k, v in parts.items() if v is not None}
        else:
            self.data = {k: TensorData(self._normalized(v[0]), v[1], runtime.device)
                         for k, v in parts.items() if v is not None}
        y = arrays.y_train
        if self.classify and len(np.unique(np.asarray(parts["train"][1]))) < 2:
            found = np.unique(np.asarray(parts["train"][1])).tolist()
            raise UserError(f"{arrays.source or cfg.data.name}: the training examples hold only one class "
                            f"({', '.join(str(arrays.classes[i]) if i < len(arrays.classes) else str(i) for i in found) or 'none'}"
                            "), so there is nothing to tell apart. Classification needs at least two classes; "
                            "check the label column, or data.limit / data.train_limit.")
        if self.classify:
            n_out = max(len(arrays.classes), int(y.max()) + 1)
            classes = arrays.classes or [str(i) for i in range(n_out)]
        else:
            n_out, classes = (1 if y.ndim == 1 else y.shape[1]), []
        in_shape = tuple(x_train.shape[1:])
        name = cfg.model["name"]
        data_args = (in_shape, n_out) + ((self.tokenizer.vocab_size,) if self.tokenizer else ())
        if model is None:
            if self.tokenizer and name not in text_models():
                raise UserError(f"Model '{name}' reads numbers, not token ids; for text data "
                                f"({arrays.source}) use one of: {', '.join(text_models())}.")
            if self.tokenizer and "pretrained" in cfg.model and not isinstance(self.tokenizer, PretrainedTokenizer):
                raise UserError(f"Model '{name}' reads the ids of its pretrained tokenizer: set "
                                f"data.tokenizer = 'pretrained' (not '{cfg.data.tokenizer}').")
            model = create_model(name, *data_args, **{k: v for k, v in cfg.model.items() if k != "name"})
            pad = model.pad_id if MODELS.has(name, "pretrained-tokenizer") else None
            if isinstance(self.tokenizer, PretrainedTokenizer) and pad not in (None, self.tokenizer.pad_id):
                raise UserError(f"The tokenizer of '{self.tokenizer.source}' pads with id {self.tokenizer.pad_id}, "
                                f"but its encoder's config.json says pad_token_id = {pad}.")
        check_fits(model, self.data["train"].sample(2), arrays.source or cfg.data.name)
        self.model = runtime.module(model)
        self.augment = cfg.data.augment if arrays.kind == "image" else ""
        if "altflip" in self.augment:  # drawn from the seed: the same on every rank and on resume
            self._flips = alternate_flips(len(self.data["train"]), cfg.train.seed).to(runtime.device)
        if cfg.train.tta and arrays.kind != "image":
            raise UserError(f"train.tta = '{cfg.train.tta}' flips images; data '{cfg.data.name}' holds "
                            f"{arrays.kind} inputs. Set train.tta = ''.")
        if cfg.train.tta and cfg.train.cache_features:
            raise UserError("train.tta flips the images, but train.cache_features trains the head on features "
                            "computed once: use one of the two.")
        self.tta = cfg.train.tta
        if cfg.train.cache_features:
            self.encode, self._head = self._feature_head(model, stream)
        n_train = len(self.data["train"]) // runtime.world_size
        self.steps_per_epoch = -(-n_train // cfg.train.batch_size)
        self.opt = Optimization(stage_groups(unwrap(self.model), cfg.optim), cfg.optim, cfg.sched, self.steps_per_epoch, cfg.train.epochs,
                                cfg.train.grad_clip, cfg.train.grad_accum, monitor_mode(cfg.train.monitor),
                                unwrap(self.model).buffers())
        self.meta = {"task": cfg.task, "loss": loss, "classes": classes, "in_shape": list(in_shape),
                     "num_outputs": n_out, "kind": arrays.kind, "normalizer": self.norm.to_dict(),
                     "source": arrays.source, "sizes": {k: len(v) for k, v in self.data.items()}}
        if self.tokenizer:
            self.meta["vocab_size"] = self.tokenizer.vocab_size
        self.has_val = "val" in self.data

    def _feature_head(self, model: torch.nn.Module, stream: bool):
        """Check that train.cache_features applies; return the model's (features, head)."""
        why = ""
        if not MODELS.has(self.cfg.model["name"], "staged"):
            why = f"model '{self.cfg.model['name']}' does not split into a feature extractor and a head (resnet18/34/50 do)"
        elif self.augment:
            why = (f"data.augment = '{self.augment}' changes the images every epoch, so their features cannot be "
                   "computed once: set data.augment = '' or train.cache_features = false")
        elif stream:
            why = "data.stream reads batches from disk: set data.stream = false"
        elif self.rt.distributed:
            why = "the head alone is not wrapped for distributed training: run it in one process"
        if why:
            raise UserError(f"train.cache_features: {why}.")
        encode, head = model.feature_head()
        head = self.rt.module(head, ddp=False)
        head_params = {id(p) for p in head.parameters()}
        trains = sorted({n.split(".")[0] for n, p in model.named_parameters()
                         if p.requires_grad and id(p) not in head_params})
        if trains:
            raise UserError(f"train.cache_features needs a frozen backbone, but {', '.join(trains)} would train: "
                            "set model.freeze = 'backbone' (or train.cache_features = false to fine-tune).")
        return encode, head

    def _features(self) -> None:
        """Replace every split's images by their embeddings, once, with the (frozen) backbone as it is
        now: called on first use, so a resumed run encodes with the checkpoint's weights."""
        if self.encode is None or self._encoded:
            return
        model, bs = unwrap(self.model), self.cfg.train.eval_batch_size
        with torch.no_grad(), evaluating(model), self.rt.autocast():  # not inference_mode: the head's backward reads them
            for k, d in self.data.items():
                z = torch.cat([self.encode(d.x[i:i + bs]).float() for i in range(0, len(d), bs)])
                self.data[k] = TensorData(z, d.y, self.rt.device)
        self._encoded = True

    encode = None  # train.cache_features: the frozen backbone that encodes each split once
    _encoded = False  # ... and whether it has
    _head = None  # ... and the head that then trains on the embeddings

    @property
    def net(self) -> torch.nn.Module:
        """What a batch goes through: the model, or its head on cached features."""
        return self.model if self._head is None else self._head

    def _normalized(self, x: np.ndarray) -> np.ndarray:
        # the identity on writable float32 inputs would only copy them (a second for Fashion-MNIST)
        if self.norm.kind == "text" or (not self.cfg.data.normalize and x.dtype == np.float32 and x.flags.writeable):
            return x
        return self.norm(x)

    def metric_names(self) -> set[str] | None:
        """Every metric key this task logs per epoch (train/..., val/..., lr) and in its summary
        (test/...), as `metrics` and `train_step` write them; None for a subclass that measures
        otherwise (the generative tasks)."""
        own = type(self)
        if own.evaluate is not Supervised.evaluate or own.train_step is not Supervised.train_step:
            return None
        names = ("loss", "acc", "macro_f1") if self.classify else ("loss", "rmse", "mae")
        train = {"train/loss", *(["train/acc"] if self.train_acc else [])}
        return {*train, "lr", *(f"{split}/{n}" for split in ("val", "test") for n in names)}

    def data_fingerprint(self) -> str:
        """A digest of every split's inputs and targets as the model sees them (streamed inputs: their
        row numbers and shapes), so that a resume refuses changed data."""
        import hashlib

        h = hashlib.sha256()
        for name in sorted(self.data):
            d = self.data[name]
            for part in ((d.rows, d.y_all) if isinstance(d, StreamData) else (d.x, d.y)):
                a = part.detach().cpu().numpy() if isinstance(part, torch.Tensor) else np.asarray(part)
                h.update(f"{name}:{a.dtype}:{a.shape}".encode())
                h.update(np.ascontiguousarray(a).data)
        return h.hexdigest()

    # --- before training and after it ------------------------------------------------------
    @classmethod
    def prepare(cls, cfg: RunConfig, resuming: bool, verbose: int = 1) -> RunConfig:
        """The config the task is built from: `transfer.pretrain` becomes `model.pretrained` (the
        backbone recipe trained once, tasks/transfer.py); a resumed run reads no pretrained file."""
        return with_pretrained(cfg, resuming, verbose)

    @classmethod
    def inference(cls, run: Run) -> Inference:
        """The model of a finished run, rebuilt from its directory alone (safetensors; nothing
        unpickled), with the run's normalization or tokenizer and its output transform."""
        meta, cfg = run.meta, run.cfg
        vocab = (meta.vocab_size,) if meta.vocab_size else ()  # text: the factory's third data argument
        # the run's own weights replace any `pretrained` ones: the run directory alone is enough
        options = reload_options(cfg.model["name"], run.path, {k: v for k, v in cfg.model.items() if k != "name"})
        model = create_model(cfg.model["name"], tuple(meta.in_shape), meta.num_outputs, *vocab, **options)
        load_state(model, run.module_weights("model"), str(run.dir.weights))
        model.eval()
        probs = meta.loss == "cross_entropy"
        if meta.kind == "text":
            tokenizer = (PretrainedTokenizer.load(run.path) if cfg.data.tokenizer == "pretrained"
                         else Tokenizer.from_dict(run.dir.read_json(run.path / TOKENIZER_FILE), str(run.path / TOKENIZER_FILE)))
            preprocess = lambda texts: torch.as_tensor(tokenizer.encode(list(texts)))  # noqa: E731
            return Inference(model, preprocess, lambda out: (out.softmax(-1) if probs else out).numpy(),
                             tokenizer=tokenizer)
        norm = Normalizer(meta.normalizer["mean"], meta.normalizer["std"], meta.normalizer["kind"])
        return Inference(model, lambda x: norm(torch.as_tensor(np.asarray(x), dtype=torch.float32)),
                         lambda out: (out.softmax(-1) if probs else out).numpy(), normalizer=norm,
                         tta=cfg.train.tta if meta.kind == "image" else "")

    # --- the loop's protocol -------------------------------------------------------------
    def modules(self) -> dict:
        return {"model": unwrap(self.model)}

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def batches(self, epoch: int):
        self._features()
        self._odd = epoch % 2 == 1
        return self.data["train"].batches(self.cfg.train.batch_size, seed=self.cfg.train.seed * 1_000_003 + epoch,
                                          rank=self.rt.rank, world=self.rt.world_size,
                                          with_index=self._flips is not None)

    def samples_in(self, batch) -> int:
        return batch[1].shape[0]

    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return loss_fn(self.loss_name, out, y, reduction, self.cfg.train.label_smoothing)

    def train_step(self, batch) -> dict:
        x, y, *where = batch  # with alternating flips, the examples' positions in the training part
        if self.augment:
            x = augment_images(x, self.augment, flip=(self._flips[where[0]] ^ self._odd) if where else None)
        out = self.net(x)  # the runtime's precision and memory format (engine/runtime.py)
        loss = self.loss(out.float(), y)
        self.opt.step(loss)
        if self.train_acc:
            return {"train/loss": loss, "train/acc": (out.argmax(1) == y).float().mean()}
        return {"train/loss": loss}

    def end_epoch(self, logs: dict) -> None:
        self.opt.end_epoch(logs.get(self.cfg.train.monitor))
        logs["lr"] = self.opt.lr

    @torch.inference_mode()
    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Model outputs for normalized inputs, in evaluation batches (float32)."""
        bs = self.cfg.train.eval_batch_size
        return torch.cat([tta_forward(self.net, x[i:i + bs], self.tta) for i in range(0, len(x), bs)])

    def predictions(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and targets of a whole split (streamed parts are read batch by batch)."""
        self._features()
        d = self.data[split]
        if isinstance(d, StreamData):
            pairs = [(self.outputs(x), y) for x, y in d.batches(self.cfg.train.eval_batch_size)]
            return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        return self.outputs(d.x), d.y

    def evaluate(self, split: str) -> dict:
        if split not in self.data:
            return {}
        with evaluating(self.model):
            out, y = self.predictions(split)
        return metrics(out, y, self.loss(out, y, "sum").item() / len(y), self.classify, split,
                       self.meta["num_outputs"])

    def state_dict(self) -> dict:
        return {"model": unwrap(self.model).state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])


def tta_forward(net, x: torch.Tensor, tta: str = "") -> torch.Tensor:
    """Outputs (float32) for a batch; with train.tta = "flip", the mean of the outputs for the
    images and their mirror images (test-time augmentation, as airbench averages logits)."""
    out = net(x).float()
    if tta == "flip":
        out = (out + net(x.flip(-1)).float()) / 2
    return out


def loss_fn(name: str, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean",
            label_smoothing: float = 0.0) -> torch.Tensor:
    """cross_entropy on logits and class indices; mse, l1 or huber on outputs and targets."""
    if name == "cross_entropy":
        return F.cross_entropy(out, y, label_smoothing=label_smoothing, reduction=reduction)
    out = out.squeeze(-1) if out.shape[-1] == 1 and y.ndim == 1 else out
    fn = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss}[name]
    return fn(out, y.to(out.dtype), reduction=reduction)


def metrics(out: torch.Tensor, y: torch.Tensor, loss: float, classify: bool, split: str, n_out: int) -> dict:
    """Loss plus accuracy/macro-F1 (classification) or RMSE/MAE (regression), prefixed by split."""
    m = {f"{split}/loss": loss}
    if classify:
        pred = out.argmax(1)
        m[f"{split}/acc"] = (pred == y).float().mean().item()
        cm = torch.bincount(y * n_out + pred, minlength=n_out * n_out).reshape(n_out, n_out).double()
        tp, support, predicted = cm.diag(), cm.sum(1), cm.sum(0)
        f1 = 2 * tp / (support + predicted).clamp(min=1)
        m[f"{split}/macro_f1"] = f1[support > 0].mean().item()
    else:
        out = out.squeeze(-1) if out.shape[-1] == 1 and y.ndim == 1 else out
        err = out - y.to(out.dtype)
        m[f"{split}/rmse"] = err.pow(2).mean().sqrt().item()
        m[f"{split}/mae"] = err.abs().mean().item()
    return m


@TASKS.register("classify", tags=("predict",))
class Classify(Supervised):
    """Classification with cross-entropy, reporting accuracy and macro-F1."""

    def __init__(self, cfg: RunConfig, runtime: Runtime, **kw):
        super().__init__(cfg, runtime, **{"loss": "cross_entropy", **kw})


@TASKS.register("regress", tags=("predict",))
class Regress(Supervised):
    """Regression with mean squared error, reporting RMSE and MAE."""

    def __init__(self, cfg: RunConfig, runtime: Runtime, **kw):
        super().__init__(cfg, runtime, **{"loss": "mse", **kw})

