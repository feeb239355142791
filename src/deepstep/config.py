"""Typed run configuration. Presets are TOML files (`recipes/*.toml`); the CLI's repeatable
`--set key=value` maps 1:1 onto these dataclasses (dotted keys for sections: `optim.lr=3e-4`).
Each field's `help` is the text shown by `deepstep train --help-config`.

Model options are not a dataclass here: a model factory's keyword-only signature *is* its typed
config (see `registry.model_options`), so `[model]` holds `name` plus that factory's arguments.
"""

from __future__ import annotations

import copy
import tomllib
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import UserError, suggest, unknown


def opt(default: Any, help: str):
    """A dataclass field with a one-line help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    name: str = opt("digits", "data set (see `deepstep list`)")
    path: str = opt("", "file or folder holding the data; empty: the data set's default place")
    val_split: float = opt(0.1, "fraction of the training split held out for validation (fixed by seed)")
    test_split: float = opt(0.2, "fraction held out for testing when the data set has no test split")
    normalize: bool = opt(True, "standardize inputs with statistics of the training split only")
    label_column: str = opt("label", "CSV tables: name of the label column")
    image_size: int = opt(0, "image data: resize images to this square size (antialiased bilinear; 0: keep "
                              "the size; image folders: the first image's size), e.g. 8 to train on "
                              "Fashion-MNIST at the 8x8 resolution of the digits")
    grayscale: bool = opt(False, "image folders: convert images to one channel")
    limit: int = opt(0, "use only the first N training examples (0: all)")
    train_limit: int = opt(0, "train on only N examples of the training part, after the validation and test "
                              "parts are held out, so the test part stays the same; classes keep their share "
                              "(stratified: the first examples of each class) (0: all)")
    download: bool = opt(True, "download missing files from the official mirror into the cache")
    augment: str = opt("", "training augmentation: '', 'flip', 'shift' or 'flip+shift'")
    stream: bool = opt(False, "read batches from disk with a DataLoader instead of holding the data in "
                              "memory (for data larger than RAM: a data.name=npz folder whose x.npy is memory-mapped)")
    workers: int = opt(2, "with data.stream: DataLoader worker processes reading batches (0: in the training process)")
    text_column: str = opt("text", "CSV/JSONL text data: name of the column holding the text")
    topics: list[str] = opt([], "fortunes: topic files to classify (empty: startrek, linux, definitions, zippy, songs-poems)")
    tokenizer: str = opt("word", "text: 'word' (vocabulary from the training split), 'char', or 'pretrained' "
                                 "(the tokenizer of model.pretrained, for model 'bert')")
    lowercase: bool = opt(True, "text: lower-case before tokenizing")
    min_freq: int = opt(2, "text: keep tokens seen at least this often in the training split (others: <unk>)")
    max_vocab: int = opt(20000, "text: keep at most this many most frequent tokens (0: no limit)")
    max_length: int = opt(256, "text: truncate to this many tokens and pad shorter texts (0: longest training text)")

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
        allowed = {"", "flip", "shift", "flip+shift", "shift+flip"}
        if self.augment not in allowed:
            raise UserError(
                f"data.augment = '{self.augment}' is not valid: expected one of "
                f"{', '.join(repr(a) for a in sorted(allowed))}."
            )


@dataclass
class OptimConfig:
    name: str = opt("adam", "optimizer: sgd, adam, adamw, rmsprop")
    lr: float = opt(1e-3, "learning rate (the peak rate for one-cycle)")
    weight_decay: float = opt(0.0, "L2 weight decay (decoupled for adamw)")
    momentum: float = opt(0.9, "momentum for sgd and rmsprop (sgd: 0 gives plain SGD)")
    nesterov: bool = opt(False, "Nesterov momentum for sgd")
    betas: list[float] = opt([0.9, 0.999], "Adam/AdamW betas")
    eps: float = opt(1e-8, "Adam/AdamW/RMSprop epsilon")
    alpha: float = opt(0.99, "RMSprop smoothing constant")
    stage_lr_decay: float = opt(1.0, "discriminative learning rates: the head gets optim.lr and each earlier stage "
                                     "of a staged model (resnet18/34/50: layer4, ..., layer1, stem) this factor once "
                                     "more, e.g. 0.5; 1: one rate for all; models without stages: one rate")

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise unknown("optimizer", self.name, OPTIMIZERS)
        if self.lr <= 0:
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
    warmup_epochs: float = opt(0.0, "linear warm-up length in epochs (fractions allowed)")
    step_epochs: int = opt(10, "step: multiply the rate by `gamma` every this many epochs")
    gamma: float = opt(0.1, "step: factor applied every `step_epochs`")
    min_lr: float = opt(0.0, "cosine/linear/onecycle: final learning rate")
    factor: float = opt(0.5, "plateau: factor applied when the monitored metric stalls")
    patience: int = opt(2, "plateau: epochs without improvement before reducing the rate")

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise unknown("schedule", self.name, SCHEDULES)


@dataclass
class TrainConfig:
    epochs: int = opt(10, "number of passes over the training data")
    batch_size: int = opt(64, "examples per optimizer step (per process when distributed)")
    eval_batch_size: int = opt(1024, "examples per forward pass during evaluation")
    grad_clip: float = opt(0.0, "clip the global gradient norm to this value (0: off)")
    grad_accum: int = opt(1, "accumulate gradients over this many batches per optimizer step")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing")
    monitor: str = opt("val/acc", "metric watched by early stopping, best weights and plateau")
    early_stop: int = opt(0, "stop after this many epochs without improvement (0: never)")
    restore_best: bool = opt(True, "end with the weights of the best monitored epoch")
    checkpoint_every: int = opt(1, "write a resumable checkpoint every N epochs")
    log_every: int = opt(100, "log training loss every N steps (one host sync each)")
    seed: int = opt(0, "random seed for splits, initialization, shuffling and dropout")
    deterministic: bool = opt(False, "use deterministic kernels only (slower on GPU)")
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: str = opt("fp32", "fp32 or bf16 (autocast)")
    channels_last: bool = opt(False, "use channels-last memory format for conv nets")
    threads: int = opt(0, "CPU threads for torch (0: torch's default)")
    cache_features: bool = opt(False, "feature extraction: with a frozen backbone (model.freeze = 'backbone'), "
                                      "encode every split once and train only the head on the cached features")

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16"):
            raise unknown("precision", self.precision, ("fp32", "bf16"))
        for name in ("epochs", "batch_size", "eval_batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name} = {getattr(self, name)} must be at least 1.")
        if self.monitor.split("/")[0] not in ("val", "train"):
            raise UserError(
                f"train.monitor = '{self.monitor}' must name a logged metric such as 'val/acc' or 'val/loss'."
            )


@dataclass
class ForecastConfig:
    window: int = opt(24, "forecast: past time steps the model reads")
    horizon: int = opt(1, "forecast: future time steps predicted from each window")
    stride: int = opt(1, "forecast: step between training windows (validation/test windows use every step)")
    test_size: int = opt(0, "forecast: final time steps held out for testing (0: data.test_split of the series)")
    val_size: int = opt(0, "forecast: time steps before the test part for validation (0: data.val_split of the series)")
    columns: list[str] = opt([], "forecast: input columns of a series table (empty: every numeric column but the date)")
    target: list[str] = opt([], "forecast: columns to predict (empty: all input columns)")
    date_column: str = opt("", "forecast: time column of a series table, for labels (empty: found by name)")
    arima_order: list[int] = opt([2, 0, 1], "forecast: (p, d, q) of the ARIMA baseline fitted on the training part")

    def __post_init__(self):
        for name in ("window", "horizon", "stride"):
            if getattr(self, name) < 1:
                raise UserError(f"forecast.{name} = {getattr(self, name)} must be at least 1.")
        for name in ("test_size", "val_size"):
            if getattr(self, name) < 0:
                raise UserError(f"forecast.{name} = {getattr(self, name)} must be 0 (use the data.*_split fraction) or more.")
        if len(self.arima_order) != 3 or min(self.arima_order) < 0:
            raise UserError(f"forecast.arima_order = {self.arima_order} must be three non-negative integers (p, d, q), "
                            f"e.g. [2, 0, 1].")


@dataclass
class EnvConfig:
    id: str = opt("CartPole-v1", "rl: Gymnasium environment id with discrete actions, e.g. Acrobot-v1")
    num_envs: int = opt(8, "rl: environments stepped together (gymnasium.vector.SyncVectorEnv)")
    steps_per_epoch: int = opt(10000, "rl: environment steps (all envs together) per epoch, rounded up to whole "
                                      "rollouts/updates; envs are re-seeded and episodes restart at each epoch")
    val_episodes: int = opt(10, "rl: deterministic episodes scored after every epoch as val/return_mean (0: none)")
    eval_episodes: int = opt(20, "rl: deterministic episodes of the final eval/return_mean, in a fresh env with another seed")
    normalize_obs: bool = opt(False, "rl: normalize observations by running mean/std (saved with the model)")

    def __post_init__(self):
        for name in ("num_envs", "steps_per_epoch", "eval_episodes"):
            if getattr(self, name) < 1:
                raise UserError(f"env.{name} = {getattr(self, name)} must be at least 1.")
        if self.val_episodes < 0:
            raise UserError(f"env.val_episodes = {self.val_episodes} must be 0 (no per-epoch score) or more.")


@dataclass
class RLConfig:
    gamma: float = opt(0.99, "rl: discount factor")
    n_steps: int = opt(128, "ppo: steps per environment in each rollout")
    gae_lambda: float = opt(0.95, "ppo: GAE lambda (1: Monte-Carlo returns, 0: one-step TD)")
    update_epochs: int = opt(4, "ppo: passes over each rollout, in minibatches of train.batch_size")
    clip_range: float = opt(0.2, "ppo: clip the probability ratio to [1 - c, 1 + c]")
    value_clip: float = opt(0.0, "ppo: clip the value change to +-this around the rollout's value (0: unclipped loss)")
    ent_coef: float = opt(0.0, "ppo: weight of the entropy bonus")
    vf_coef: float = opt(0.5, "ppo: weight of the value loss")
    norm_adv: bool = opt(True, "ppo: normalize advantages in each minibatch")
    buffer_size: int = opt(100000, "dqn: replay buffer capacity (transitions)")
    learning_starts: int = opt(1000, "dqn: transitions in the buffer before the first update")
    train_freq: int = opt(4, "dqn: environment steps between updates (rounded up to whole vector steps)")
    gradient_steps: int = opt(1, "dqn: gradient steps per update (batches of train.batch_size)")
    target_update: int = opt(500, "dqn: update the target network every N gradient steps")
    tau: float = opt(1.0, "dqn: target update weight (1: hard copy, < 1: Polyak averaging)")
    eps_start: float = opt(1.0, "dqn: initial epsilon of epsilon-greedy exploration")
    eps_end: float = opt(0.05, "dqn: final epsilon")
    eps_fraction: float = opt(0.1, "dqn: fraction of all training steps over which epsilon decays linearly")
    double: bool = opt(True, "dqn: Double DQN targets (online net picks the action, target net scores it)")
    save_buffer: bool = opt(True, "dqn: keep the replay buffer in checkpoints (exact resume; bigger files)")

    def __post_init__(self):
        for name in ("gamma", "gae_lambda", "tau", "eps_start", "eps_end", "eps_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"rl.{name} = {getattr(self, name)} must be in [0, 1].")
        for name in ("n_steps", "update_epochs", "buffer_size", "train_freq", "gradient_steps", "target_update"):
            if getattr(self, name) < 1:
                raise UserError(f"rl.{name} = {getattr(self, name)} must be at least 1.")
        if self.clip_range <= 0 or self.value_clip < 0:
            raise UserError(f"rl.clip_range = {self.clip_range} must be positive and rl.value_clip = "
                            f"{self.value_clip} at least 0.")


@dataclass
class GenConfig:
    noise: str = opt("", "autoencode: denoising training noise: '' (none), 'gaussian' (add N(0, level^2), clip to [0, 1]) or 'masking' (zero each pixel with probability level)")
    noise_level: float = opt(0.3, "autoencode: standard deviation (gaussian) or drop probability (masking) of the training noise")
    beta: float = opt(1.0, "vae: weight of the KL term (1: the ELBO; the logged test/neg_elbo always uses 1)")
    decoder: str = opt("bernoulli", "vae: p(x|z), 'bernoulli' or 'gaussian' (mean sigmoid(output), fixed standard deviation gen.sigma)")
    sigma: float = opt(0.1, "vae with gen.decoder = 'gaussian': standard deviation of the decoder")
    nll_samples: int = opt(100, "vae: importance samples per test example for the test/nll estimate (0: skip it)")
    real_label: float = opt(1.0, "gan: discriminator target for real images (0.9: one-sided label smoothing)")
    d_steps: int = opt(1, "gan: discriminator updates per generator update")
    eval_samples: int = opt(2000, "gan, vae: generated images for the per-epoch val/frechet (0: skip it)")
    test_samples: int = opt(10000, "gan, vae: generated images for samples/frechet and samples/class_coverage, against as many real test images (at most the test split; 0: skip)")

    def __post_init__(self):
        if self.noise not in ("", "gaussian", "masking"):
            raise unknown("noise", self.noise, ("gaussian", "masking"))
        if self.noise_level < 0 or (self.noise == "masking" and self.noise_level >= 1):
            raise UserError(f"gen.noise_level = {self.noise_level} must be at least 0 (and below 1 for masking).")
        if self.decoder not in ("bernoulli", "gaussian"):
            raise unknown("decoder", self.decoder, ("bernoulli", "gaussian"))
        if self.sigma <= 0:
            raise UserError(f"gen.sigma = {self.sigma} must be positive.")
        if not 0.5 < self.real_label <= 1.0:
            raise UserError(f"gen.real_label = {self.real_label} must be in (0.5, 1] (0.9 is the usual smoothing).")
        if self.d_steps < 1 or self.eval_samples < 0 or self.test_samples < 0:
            raise UserError(f"gen.d_steps = {self.d_steps} must be at least 1, and gen.eval_samples = "
                            f"{self.eval_samples} and gen.test_samples = {self.test_samples} at least 0.")
        if self.beta < 0 or self.nll_samples < 0:
            raise UserError(f"gen.beta = {self.beta} and gen.nll_samples = {self.nll_samples} must be at least 0.")


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


@dataclass
class RunConfig:
    task: str = opt("classify", "what one training step means: classify, regress, ...")
    description: str = opt("", "one line shown by `deepstep list`")
    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=lambda: {"name": "mlp"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    forecast: ForecastConfig = field(default_factory=ForecastConfig)
    gen: GenConfig = field(default_factory=GenConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    expect: dict = field(default_factory=dict)
    recipe: str = opt("", "name of the recipe this run came from")

    def __post_init__(self):
        if "name" not in self.model or not isinstance(self.model["name"], str):
            raise UserError("The [model] section needs a `name`, e.g. name = \"mlp\".")
        self.model = resolve_model_args(self.model)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> RunConfig:
        return build(cls, d, where)


SECTIONS = {"data": DataConfig, "optim": OptimConfig, "sched": SchedConfig, "train": TrainConfig, "env": EnvConfig, "rl": RLConfig,
            "forecast": ForecastConfig, "gen": GenConfig, "transfer": TransferConfig}


def resolve_model_args(model: dict) -> dict:
    """Check `[model]` keys against the factory's signature and fill in its defaults."""
    from .registry import model_options

    name = model["name"]
    if name == "custom":  # an nn.Module handed to the Python API; nothing to resolve
        return dict(model)
    options = model_options(name)
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
    return out


def _factory(name):
    from .registry import MODELS

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
    if not isinstance(d, dict):
        raise UserError(f"{where} must be a table (section), got {d!r}.")
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in names:
            label = key if cls is RunConfig else f"{where}.{key}"
            hint = suggest(key, names)
            if cls is RunConfig:  # a section's key given without its section, e.g. `lr` for `optim.lr`
                owners = [s for s, c in SECTIONS.items() if key in {f.name for f in fields(c)}]
                hint = f" Did you mean '{owners[0]}.{key}'?" if owners else hint
            raise UserError(f"Unknown key '{label}' in {where}.{hint} Valid keys: {', '.join(sorted(names))}.")
        sub = SECTIONS.get(key) if cls is RunConfig else None
        if sub is not None:
            kwargs[key] = build(sub, value, key)
        elif key == "model" and cls is RunConfig:
            if not isinstance(value, dict):
                raise UserError(f"[model] must be a table, got {value!r}.")
            kwargs[key] = dict(value)
        else:
            label = key if cls is RunConfig else f"{where}.{key}"
            kwargs[key] = coerce(value, hints[key], label)
    for f in fields(cls):
        if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING:
            raise UserError(f"{where} needs '{f.name}'.")
    return cls(**kwargs)


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
            if part not in SECTIONS and part not in ("model", "expect") and node is d:
                valid = list(SECTIONS) + ["model", "expect"]
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


def load_config(recipe: str, overrides: list[str] = ()) -> RunConfig:
    """Resolve a recipe name (or TOML path) plus `--set` overrides into a RunConfig."""
    from .registry import recipe_path

    path = recipe_path(recipe)
    d = read_toml(path)
    d = apply_overrides(d, list(overrides))
    d.setdefault("recipe", path.stem)
    return RunConfig.from_dict(d, where=f"recipe '{path.stem}'")


def help_lines() -> list[str]:
    """`section.key  (type, default)  help` lines for every configurable field."""
    lines = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            default = f.default if f.default is not MISSING else f.default_factory()
            tname = getattr(hints[f.name], "__name__", str(hints[f.name]))
            lines.append(f"{section}.{f.name} ({tname}, default {default!r}): {f.metadata['help']}")
    return lines
