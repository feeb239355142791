"""Typed run configuration. Presets are TOML files (`recipes/*.toml`); the CLI's repeatable
`--set key=value` maps 1:1 onto these dataclasses (dotted keys for sections: `optim.lr=3e-4`).
Each field's `help` is the text shown by `deepstep train --help-config`.

Model options are not a dataclass here: a model factory's keyword-only signature *is* its typed
config (see `registry.model_options`), so `[model]` holds `name` plus that factory's arguments.

Options belong to their owner. This module holds the generic sections (data, optim, sched, train,
plugins, card) and the typed-coercion machinery. A task-specific section (`[env]` and `[rl]` of dqn/ppo,
`[gen]` of autoencode/vae/gan, `[forecast]`, `[transfer]` of classify/regress) is declared beside
its tasks (tasks/rl/options.py, tasks/*_options.py) and registered with them by
`register_section(name, cls, tasks=...)`: registration goes from tasks to config, never back;
parsing a config runs `registry.load_all()` (imports by name) first. A `RunConfig` holds the
generic sections and its task's own only: they live in its `sections` dict and read as attributes
(`cfg.rl.gamma`); `cfg.rl` of a classify run is a `SectionError` (an AttributeError), and
`to_dict()` (config.toml, `--dry-run`) writes only what the run uses. One class with a dict rather
than a dataclass made per task: one type to annotate, pickle and compare, and
`dataclasses.replace(cfg, transfer=...)` still works (its `__init__` takes sections by name).

Strict where a user types, lenient where an older file is read: a recipe or `--set` naming a
section of other tasks is a UserError naming it, its tasks and the run's task; a run directory's
config.toml (`RunConfig.from_dict(d, strict=False)`, as `Run.open` reads it) may hold every section,
as earlier versions wrote, and those the task does not use are ignored. Unknown names are errors
either way.
"""

from __future__ import annotations

import copy
import math
import re
import tomllib
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from .errors import UserError, suggest, unknown
from .registry import MODELS, TASKS, load_all, model_options, recipe_path


def opt(default: Any, help: str, check: str = ""):
    """A dataclass field with a one-line help text and its constraint (`Check` syntax, e.g. "> 0",
    ">= 1", "[0, 1)"), checked whenever a config is built."""
    meta = {"help": help, **({"check": Check(check)} if check else {})}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


class Check:
    """The range an option's numbers must lie in, declared beside the option: "> 0", ">= 1",
    "[0, 1)", "(0, 1]". It applies to numbers only (each element of a list of numbers), so an
    option that also takes a word ("auto") declares its range the same way and checks its words
    itself. Every float option must in any case be finite (`check_value`)."""

    _BOUND = re.compile(r"^\s*(>=|>|<=|<)\s*(\S+)\s*$")
    _RANGE = re.compile(r"^\s*([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])\s*$")

    def __init__(self, spec: str):
        self.spec = spec
        self.lo = self.hi = None
        self.lo_open = self.hi_open = False
        if m := self._BOUND.match(spec):
            op, value = m.group(1), float(m.group(2))
            if op.startswith(">"):
                self.lo, self.lo_open = value, op == ">"
            else:
                self.hi, self.hi_open = value, op == "<"
        elif m := self._RANGE.match(spec):
            self.lo, self.hi = float(m.group(2)), float(m.group(3))
            self.lo_open, self.hi_open = m.group(1) == "(", m.group(4) == ")"
        else:
            raise ValueError(f"option constraint {spec!r}: expected e.g. '> 0', '>= 1' or '[0, 1)'")

    def holds(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def describe(self, what: str = "a number") -> str:
        """'a number > 0', 'a whole number in [0, 4096]'."""
        if self.lo is not None and self.hi is not None:
            return f"{what} in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {_num(self.lo)}"
        return f"{what} {'<' if self.hi_open else '<='} {_num(self.hi)}"


def _num(v: float) -> str:
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)


def check_value(value: Any, check: Check | str | None, where: str, help: str = "") -> None:
    """Raise a UserError unless every number in `value` (a number or a list of them) is finite and
    satisfies `check`. Words, booleans and None are left to the option's own checks."""
    if isinstance(check, str):
        check = Check(check) if check else None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_value(v, check, f"{where}[{i}]", help)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    about = f" ({help})" if help else ""
    if isinstance(value, float) and not math.isfinite(value):
        want = check.describe() if check else "a finite number"
        raise UserError(f"{where} = {value} is not a finite number{about}: expected {want}.")
    if check is not None and not check.holds(value):
        what = "a whole number" if isinstance(value, int) else "a number"
        raise UserError(f"{where} = {value!r} is out of range{about}: expected {check.describe(what)}.")


def check_section(obj: Any, where: str) -> None:
    """Check every field of a section dataclass against its declared constraint."""
    for f in fields(obj):
        check_value(getattr(obj, f.name), f.metadata.get("check"), f"{where}.{f.name}", f.metadata.get("help", ""))


@dataclass
class DataConfig:
    name: str = opt("digits", "data set (see `deepstep list`)")
    path: str = opt("", "file or folder holding the data; empty: the data set's default place")
    val_split: float = opt(0.1, "fraction of the training split held out for validation (fixed by seed)", "[0, 1)")
    test_split: float = opt(0.2, "fraction held out for testing when the data set has no test split", "[0, 1)")
    normalize: bool = opt(True, "standardize inputs with statistics of the training split only")
    label_column: str = opt("label", "CSV tables: name of the label column")
    image_size: int = opt(0, "image data: resize images to this square size (antialiased bilinear; 0: keep "
                              "the size; image folders: the first image's size), e.g. 8 to train on "
                              "Fashion-MNIST at the 8x8 resolution of the digits", ">= 0")
    grayscale: bool = opt(False, "image folders: convert images to one channel")
    limit: int = opt(0, "use only the first N training examples (0: all)", ">= 0")
    train_limit: int = opt(0, "train on only N examples of the training part, after the validation and test "
                              "parts are held out, so the test part stays the same; classes keep their share "
                              "(stratified: the first examples of each class) (0: all)", ">= 0")
    download: bool = opt(True, "download missing files from the official mirror into the cache")
    augment: str = opt("", "training augmentation: '', 'flip', 'shift' or 'flip+shift'; 'altflip' (or "
                             "'altflip+shift') mirrors a fixed random half of the images in even epochs and the "
                             "other half in odd ones (alternating flips, as airbench)")
    stream: bool = opt(False, "read batches from disk with a DataLoader instead of holding the data in "
                              "memory (for data larger than RAM: a data.name=npz folder whose x.npy is memory-mapped)")
    workers: int = opt(2, "with data.stream: DataLoader worker processes reading batches (0: in the training process)",
                       ">= 0")
    text_column: str = opt("text", "CSV/JSONL text data: name of the column holding the text")
    topics: list[str] = opt([], "fortunes: topic files to classify (empty: startrek, linux, definitions, zippy, songs-poems)")
    tokenizer: str = opt("word", "text: 'word' (vocabulary from the training split), 'char', or 'pretrained' "
                                 "(the tokenizer of model.pretrained, for model 'bert')")
    lowercase: bool = opt(True, "text: lower-case before tokenizing")
    min_freq: int = opt(2, "text: keep tokens seen at least this often in the training split (others: <unk>)", ">= 1")
    max_vocab: int = opt(20000, "text: keep at most this many most frequent tokens (0: no limit)", ">= 0")
    max_length: int = opt(256, "text: truncate to this many tokens and pad shorter texts (0: longest training text)",
                          ">= 0")

    def __post_init__(self):
        for name in ("val_split", "test_split"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise UserError(f"data.{name} = {v} is out of range: expected a fraction in [0, 1).")
        if self.tokenizer not in ("word", "char", "pretrained"):
            raise unknown("tokenizer", self.tokenizer, ("word", "char", "pretrained"))
        if self.train_limit < 0:
            raise UserError(f"data.train_limit = {self.train_limit} must be 0 (all) or a number of examples.")
        for name in ("min_freq", "max_vocab", "max_length"):
            if getattr(self, name) < (1 if name == "min_freq" else 0):
                raise UserError(f"data.{name} = {getattr(self, name)} must be at least {1 if name == 'min_freq' else 0}.")
        allowed = {"", "flip", "shift", "flip+shift", "shift+flip", "altflip", "altflip+shift", "shift+altflip"}
        if self.augment not in allowed:
            raise UserError(
                f"data.augment = '{self.augment}' is not valid: expected one of "
                f"{', '.join(repr(a) for a in sorted(allowed))}."
            )


@dataclass
class OptimConfig:
    name: str = opt("adam", "optimizer: sgd, adam, adamw, rmsprop")
    lr: float | str = opt(1e-3, "learning rate (the peak rate for one-cycle); 'auto': run the learning-rate "
                                "finder (`deepstep lr-find`) first and train with its suggestion", "> 0")
    weight_decay: float = opt(0.0, "L2 weight decay (decoupled for adamw)", ">= 0")
    momentum: float = opt(0.9, "momentum for sgd and rmsprop (sgd: 0 gives plain SGD)", "[0, 1)")
    nesterov: bool = opt(False, "Nesterov momentum for sgd")
    betas: list[float] = opt([0.9, 0.999], "Adam/AdamW betas", "[0, 1)")
    eps: float = opt(1e-8, "Adam/AdamW/RMSprop epsilon", "> 0")
    alpha: float = opt(0.99, "RMSprop smoothing constant", "[0, 1)")
    stage_lr_decay: float = opt(1.0, "discriminative learning rates: the head gets optim.lr and each earlier stage "
                                     "of a staged model (resnet18/34/50: layer4, ..., layer1, stem) this factor once "
                                     "more, e.g. 0.5; 1: one rate for all; models without stages: one rate",
                                "(0, 1]")
    lookahead: int = opt(0, "Lookahead weights (Zhang et al. 2019), as airbench: every this many steps the slow "
                            "weights (with the batch-norm statistics) move toward the trained ones by "
                            "1 - 0.95**k * progress**3 and the trained ones restart from them; the last step ends "
                            "on the slow weights (0: off)", ">= 0")

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise unknown("optimizer", self.name, OPTIMIZERS)
        if isinstance(self.lr, str):
            if self.lr != "auto":
                raise UserError(f"optim.lr = '{self.lr}' has the wrong type: expected float (e.g. 0.001) or 'auto' "
                                "(the learning-rate finder's suggestion).")
        elif self.lr <= 0:
            raise UserError(f"optim.lr = {self.lr} must be positive.")
        if not 0.0 < self.stage_lr_decay <= 1.0:
            raise UserError(f"optim.stage_lr_decay = {self.stage_lr_decay} must be in (0, 1]: the factor by which "
                            "each earlier stage's learning rate shrinks (1: off).")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise UserError(f"optim.betas = {self.betas} must be two numbers in [0, 1), e.g. [0.9, 0.999].")


OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "step", "cosine", "linear", "onecycle", "plateau")


@dataclass
class SchedConfig:
    name: str = opt("constant", "learning-rate schedule: constant, step, cosine, linear (decay to min_lr), onecycle, plateau")
    warmup_epochs: float = opt(0.0, "linear warm-up length in epochs (fractions allowed)", ">= 0")
    step_epochs: int = opt(10, "step: multiply the rate by `gamma` every this many epochs", ">= 1")
    gamma: float = opt(0.1, "step: factor applied every `step_epochs`", "> 0")
    min_lr: float = opt(0.0, "cosine/linear/onecycle: final learning rate", ">= 0")
    factor: float = opt(0.5, "plateau: factor applied when the monitored metric stalls", "(0, 1)")
    patience: int = opt(2, "plateau: epochs without improvement before reducing the rate", ">= 0")

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise unknown("schedule", self.name, SCHEDULES)


@dataclass
class TrainConfig:
    epochs: int = opt(10, "number of passes over the training data", ">= 1")
    batch_size: int = opt(64, "examples per optimizer step (per process when distributed)", ">= 1")
    eval_batch_size: int = opt(1024, "examples per forward pass during evaluation", ">= 1")
    grad_clip: float = opt(0.0, "clip the global gradient norm to this value (0: off)", ">= 0")
    grad_accum: int = opt(1, "accumulate gradients over this many batches per optimizer step", ">= 1")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing", "[0, 1]")
    tta: str = opt("", "test-time augmentation of image classifiers in evaluation and predict: '' or 'flip' "
                       "(the mean output of each image and its mirror image)")
    monitor: str = opt("val/acc", "metric watched by early stopping, best weights and plateau")
    early_stop: int = opt(0, "stop after this many epochs without improvement (0: never)", ">= 0")
    restore_best: bool = opt(True, "end with the weights of the best monitored epoch")
    checkpoint_every: int = opt(1, "write a resumable checkpoint every N epochs", ">= 1")
    log_every: int = opt(100, "log training loss every N steps (one host sync each)", ">= 1")
    seed: int = opt(0, "random seed for splits, initialization, shuffling and dropout", "[0, 4294967295]")
    deterministic: bool = opt(False, "use deterministic kernels only (slower on GPU)")
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: str = opt("auto", "auto (bf16 autocast for conv nets where the CPU or GPU runs bf16 natively, "
                                 "else fp32), fp32 or bf16")
    channels_last: bool | str = opt("auto", "channels-last memory format for conv nets: true, false or auto "
                                            "(on with bf16 for 2-D conv nets)")
    compile: bool = opt(False, "torch.compile the model's forward (the first steps compile; measured in docs/speed.md)")
    threads: int | str = opt("auto", "CPU threads for torch: a number, 0 (torch's default: every core) or auto "
                                     "(one thread for small models, every core for big ones; docs/speed.md)", "[0, 4096]")
    cache_features: bool = opt(False, "feature extraction: with a frozen backbone (model.freeze = 'backbone'), "
                                      "encode every split once and train only the head on the cached features")

    def __post_init__(self):
        if self.tta not in ("", "flip"):
            raise unknown("tta", self.tta, ("", "flip"))
        if self.precision not in ("auto", "fp32", "bf16"):
            raise unknown("precision", self.precision, ("auto", "fp32", "bf16"))
        if isinstance(self.channels_last, str) and self.channels_last != "auto":
            raise UserError(f"train.channels_last = '{self.channels_last}' must be true, false or 'auto'.")
        if isinstance(self.threads, str) and self.threads != "auto":
            raise UserError(f"train.threads = '{self.threads}' must be a number of threads (0: torch's default) "
                            "or 'auto'.")
        for name in ("epochs", "batch_size", "eval_batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name} = {getattr(self, name)} must be at least 1.")
        if self.monitor.split("/")[0] not in ("val", "train"):
            raise UserError(
                f"train.monitor = '{self.monitor}' must name a logged metric such as 'val/acc' or 'val/loss'."
            )


@dataclass
class PluginsConfig:
    use: list[str] = opt([], "plug-ins to add to the run's default ones (see `deepstep list plugins`; CLI: --with NAME)")
    skip: list[str] = opt([], "default plug-ins to leave out, e.g. [\"explanations\", \"report\"]")

    def __post_init__(self):
        for key in ("use", "skip"):
            for name in getattr(self, key):
                if not isinstance(name, str) or not name:
                    raise UserError(f"plugins.{key} = {getattr(self, key)!r} must be a list of plug-in names, "
                                    "e.g. [\"csv-log\"].")


@dataclass
class CardConfig:
    intended_use: str = opt("", "model card (RUN/MODEL_CARD.md): what the model is for; empty: a generic sentence")
    limitations: str = opt("", "model card: known limitations and caveats; empty: a generic sentence")


GENERIC_SECTIONS: dict[str, type] = {"data": DataConfig, "optim": OptimConfig, "sched": SchedConfig,
                                     "train": TrainConfig, "plugins": PluginsConfig, "card": CardConfig}


# --- task-specific sections: declared and registered by their owners ------------------------------

@dataclass(frozen=True)
class TaskSection:
    """A task-specific section: its dataclass and the tasks whose runs have it."""

    name: str
    cls: type
    tasks: tuple[str, ...]

    def owners(self) -> str:
        """'tasks dqn, ppo' or 'task forecast'."""
        return f"task{'s' if len(self.tasks) > 1 else ''} {', '.join(self.tasks)}"


_TASK_SECTIONS: dict[str, TaskSection] = {}


def register_section(name: str, cls: type, tasks: tuple[str, ...] | list[str]) -> type:
    """Declare `[name]`, a section of the runs of `tasks` only (read as `cfg.<name>`). Called by the
    module that owns the options, e.g. `register_section("rl", RLConfig, tasks=("dqn", "ppo"))` in
    tasks/rl/options.py; registering the same class again adds tasks (a new task reusing `[rl]`)."""
    if name in GENERIC_SECTIONS or name in _RUN_KEYS:
        raise ValueError(f"config section '{name}' is a generic section or a top-level key")
    if not (isinstance(cls, type) and is_dataclass(cls)) or not tasks or isinstance(tasks, str):
        raise ValueError(f"config section '{name}' needs a dataclass and a tuple of task names")
    old = _TASK_SECTIONS.get(name)
    if old is not None and old.cls is not cls:
        raise ValueError(f"config section '{name}' is registered twice ({old.cls.__qualname__}, {cls.__qualname__})")
    _TASK_SECTIONS[name] = TaskSection(name, cls, tuple(sorted({*(old.tasks if old else ()), *tasks})))
    return cls


def task_sections() -> dict[str, TaskSection]:
    """Every task-specific section by name (the task packages are imported first)."""
    load_all()
    return dict(_TASK_SECTIONS)


def sections_for(task: str) -> dict[str, type]:
    """The sections a run of `task` has: the generic ones, then the task's own."""
    return {**GENERIC_SECTIONS, **{n: s.cls for n, s in task_sections().items() if task in s.tasks}}


def all_sections() -> dict[str, type]:
    """Every section a config of some task may hold."""
    return {**GENERIC_SECTIONS, **{n: s.cls for n, s in task_sections().items()}}


class SectionError(UserError, AttributeError):
    """A task-specific section with a task it is not for: a UserError where a user wrote it, and an
    AttributeError for `cfg.<name>` (so `hasattr(cfg, "rl")` is False on a classify run)."""


def section_error(name: str, task: str, where: str = "") -> SectionError:
    """'Section 'gen' is for tasks autoencode, gan, vae; this run's task is 'classify' (where). ...'"""
    at = f" ({where})" if where else ""
    return SectionError(f"Section '{name}' is for {_TASK_SECTIONS[name].owners()}; this run's task is '{task}'{at}. "
                        f"`deepstep options --task {task}` lists the options of this run.")


@dataclass(init=False)
class RunConfig:
    """One run's configuration: the generic sections as fields, the task's own sections in
    `sections`, read as attributes (`cfg.rl`). Keyword arguments (and so `dataclasses.replace`)
    take sections by name, e.g. `RunConfig(task="ppo", rl=RLConfig(gamma=0.9))`; the task's
    sections not given get their defaults."""

    task: str = opt("classify", "what one training step means: classify, regress, ...")
    description: str = opt("", "one line shown by `deepstep list`")
    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=lambda: {"name": "mlp"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sections: dict = field(default_factory=dict)  # the task's own sections by name (not a TOML key)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    card: CardConfig = field(default_factory=CardConfig)
    expect: dict = field(default_factory=dict)
    recipe: str = opt("", "name of the recipe this run came from")

    def __init__(self, *, sections: dict | None = None, **kwargs):
        named = {k: kwargs.pop(k) for k in list(kwargs) if k not in _RUN_KEYS}
        for f in fields(self):
            if f.name != "sections":
                value = kwargs[f.name] if f.name in kwargs else (
                    f.default if f.default is not MISSING else f.default_factory())
                object.__setattr__(self, f.name, value)
        own = {n: s.cls for n, s in task_sections().items() if self.task in s.tasks}
        for name in named:
            if name not in _TASK_SECTIONS:
                raise TypeError(f"RunConfig() got an unexpected keyword argument '{name}'")
            if name not in own:
                raise section_error(name, self.task, f"RunConfig({name}=...)")
        # sections carried over (dataclasses.replace) that a changed task does not use are dropped
        given = {**{k: v for k, v in (sections or {}).items() if k in own}, **named}
        object.__setattr__(self, "sections", {n: _section(given.get(n), c, n) for n, c in own.items()})
        for name in [*GENERIC_SECTIONS, *self.sections]:  # sections made in Python skip `build`
            check_section(getattr(self, name), name)
        self.__post_init__()

    def __post_init__(self):
        if "name" not in self.model or not isinstance(self.model["name"], str):
            raise UserError("The [model] section needs a `name`, e.g. name = \"mlp\".")
        self.model = resolve_model_args(self.model)

    def __getattr__(self, name: str):  # only called for names that are not attributes
        sections = self.__dict__.get("sections")
        if sections is not None:
            if name in sections:
                return sections[name]
            if name in _TASK_SECTIONS:
                raise section_error(name, self.task, f"cfg.{name}")
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name: str, value) -> None:
        sections = self.__dict__.get("sections")
        if sections is not None and name in _TASK_SECTIONS:
            if name not in sections:
                raise section_error(name, self.task, f"cfg.{name}")
            sections[name] = value
        else:
            object.__setattr__(self, name, value)

    def __dir__(self):
        return [*super().__dir__(), *self.sections]

    def uses(self, section: str) -> bool:
        """Whether this run has `[section]` (every run has the generic ones)."""
        return section in GENERIC_SECTIONS or section in self.sections

    def to_dict(self) -> dict:
        """Plain values, as written to config.toml: the generic sections and the task's own only."""
        out = {}
        for key, value in asdict(self).items():
            if key == "sections":
                out.update(value)
            else:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, d: dict, where: str = "config", *, strict: bool = True) -> RunConfig:
        """Parse a config dict. strict (a recipe, --set, the API): a section of other tasks is an
        error. Not strict (a run directory's config.toml, possibly from a version that wrote every
        section): such sections are ignored."""
        return _build_run(d, where, strict)


_RUN_KEYS = frozenset(f.name for f in fields(RunConfig))


def _section(value, cls: type, name: str):
    if value is None:
        return cls()
    if isinstance(value, dict):
        return build(cls, value, name)
    if not isinstance(value, cls):
        raise TypeError(f"RunConfig section '{name}' must be a {cls.__qualname__}, got {type(value).__qualname__}")
    return value


def resolve_model_args(model: dict) -> dict:
    """Check `[model]` keys against the factory's signature and fill in its defaults."""
    name = model["name"]
    if name == "custom":  # an nn.Module handed to the Python API; nothing to resolve
        return dict(model)
    options = model_options(name)
    checks = MODELS.checks(name)  # declared with the factory: @MODELS.register(..., checks={...})
    out = {"name": name}
    for key in model:
        if key != "name" and key not in options:
            raise UserError(
                f"Model '{name}' has no option '{key}'.{suggest(key, options)} "
                f"Its options are: {', '.join(sorted(options)) or '(none)'}."
            )
    for key, p in options.items():
        hint = typing.get_type_hints(_factory(name)).get(key, Any)
        value = model.get(key, p.default)
        if value is p.empty:
            raise UserError(f"Model '{name}' needs option '{key}'.")
        out[key] = coerce(value, hint, f"model.{key}")
        check_value(out[key], checks.get(key), f"model.{key}", f"an option of model '{name}'")
    return out


def _factory(name):
    return MODELS.get(name)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type annotation, converting only int -> float. Raise UserError."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(hint) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} = {value!r} has the wrong type: expected a list, e.g. [128, 64].")
        return [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        for arg in typing.get_args(hint):
            try:
                return coerce(value, arg, where)
            except UserError:
                pass
        raise UserError(f"{where} = {value!r} has the wrong type: expected {hint}.")
    if hint is type(None):
        if value is None:
            return None
        raise UserError(f"{where} = {value!r}: expected nothing (None).")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is dict and isinstance(value, dict):
        return value
    if isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    name = getattr(hint, "__name__", str(hint))
    example = {"int": "3", "float": "0.001", "bool": "true or false", "str": "'text'"}.get(name, name)
    raise UserError(f"{where} = {value!r} has the wrong type: expected {name} (e.g. {example}).")


def build(cls, d: dict, where: str):
    """Instantiate dataclass `cls` from a dict, rejecting unknown keys and wrong types."""
    if cls is RunConfig:
        return _build_run(d, where, strict=True)
    if not isinstance(d, dict):
        raise UserError(f"{where} must be a table (section), got {d!r}.")
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in names:
            raise UserError(f"Unknown key '{where}.{key}' in {where}.{suggest(key, names)} "
                            f"Valid keys: {', '.join(sorted(names))}.")
        kwargs[key] = coerce(value, hints[key], f"{where}.{key}")
        check_value(kwargs[key], names[key].metadata.get("check"), f"{where}.{key}", names[key].metadata.get("help", ""))
    for f in fields(cls):
        if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING:
            raise UserError(f"{where} needs '{f.name}'.")
    return cls(**kwargs)


def _build_run(d: dict, where: str, strict: bool, origins: dict[str, str] | None = None) -> RunConfig:
    """RunConfig from a dict: the sections of its task built and checked; a section of other tasks
    is an error (strict; `origins` names the --set that brought it) or ignored (not strict)."""
    if not isinstance(d, dict):
        raise UserError(f"{where} must be a table (section), got {d!r}.")
    task = coerce(d.get("task", RunConfig.__dataclass_fields__["task"].default), str, "task")
    if strict and task not in TASKS:
        raise unknown("task", task, TASKS.names())
    own, every = sections_for(task), all_sections()
    keys = sorted(_RUN_KEYS - {"sections"} - set(GENERIC_SECTIONS))  # task, description, model, ...
    hints = typing.get_type_hints(RunConfig)
    kwargs, sections = {}, {}
    for key, value in d.items():
        if key in own:
            (kwargs if key in GENERIC_SECTIONS else sections)[key] = build(own[key], value, key)
        elif key in every:
            if strict:
                raise section_error(key, task, (origins or {}).get(key, where))
        elif key == "model":
            if not isinstance(value, dict):
                raise UserError(f"[model] must be a table, got {value!r}.")
            kwargs[key] = dict(value)
        elif key in keys:
            kwargs[key] = coerce(value, hints[key], key)
        else:  # a section's key given without its section, e.g. `lr` for `optim.lr`
            valid = sorted([*keys, *own])
            owners = [s for s, c in own.items() if key in {f.name for f in fields(c)}] or [
                s for s, c in every.items() if key in {f.name for f in fields(c)}][:1]
            dotted = " or ".join(f"'{s}.{key}'" for s in owners)
            hint = f" Did you mean {dotted}?" if owners else suggest(key, valid)
            raise UserError(f"Unknown key '{key}' in {where}.{hint} Valid keys: {', '.join(valid)}.")
    return RunConfig(**kwargs, sections=sections)


def parse_value(text: str) -> Any:
    """Parse the right-hand side of --set as a TOML value; a bare word stays a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """Apply `key=value` strings (dotted keys) to a nested dict, returning a new dict."""
    d = copy.deepcopy(d)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set '{item}' is not of the form key=value (e.g. optim.lr=3e-4).")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = d
        for part in parts[:-1]:
            if node is d and part not in (valid := [*all_sections(), "model", "expect"]):
                raise UserError(f"Unknown section '{part}' in --set {item}.{suggest(part, valid)} Valid sections: {', '.join(valid)}.")
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item}: '{part}' is a value, not a section, so it has no keys.")
        node[parts[-1]] = parse_value(text.strip())
        if parts == ["model", "name"]:
            # a new model starts from its own defaults
            d["model"] = {"name": node["name"]}
    return d


def read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise UserError(f"Cannot read config file '{path}': {e.strerror}.") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"Config file '{path}' is not valid TOML: {e}.") from None
    except UnicodeDecodeError:
        raise UserError(f"Config file '{path}' is not UTF-8 text (damaged, or not a TOML file).") from None


def load_config(recipe: str, overrides: list[str] = ()) -> RunConfig:
    """Resolve a recipe name (or TOML path) plus `--set` overrides into a RunConfig."""
    path = recipe_path(recipe)
    raw = read_toml(path)
    raw.pop("tune", None)  # a recipe's default search space, read by `deepstep tune` (tune.py)
    d = apply_overrides(raw, list(overrides))
    d.setdefault("recipe", path.stem)
    # a section the run's task does not use is blamed on the --set that brought it, if one did
    origins = {}
    for item in overrides:
        section = item.split("=", 1)[0].strip().split(".")[0]
        if section not in raw:
            origins.setdefault(section, f"--set {item}")
    return _build_run(d, f"recipe '{path.stem}'", strict=True, origins=origins)


def help_lines(task: str | None = None) -> list[str]:
    """`section.key (type, default ...): help` lines of every section, or of those a run of `task` has."""
    sections = all_sections() if task is None else sections_for(task)
    return [line for name, cls in sections.items() for line in section_help(name, cls)]


def section_help(section: str, cls: type) -> list[str]:
    """`section.key (type, default ...): help` lines of one section."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()
        tname = getattr(hints[f.name], "__name__", str(hints[f.name]))
        lines.append(f"{section}.{f.name} ({tname}, default {default!r}): {f.metadata['help']}")
    return lines
