"""RUN/MODEL_CARD.md: a model card (Mitchell et al. 2019, "Model Cards for Model Reporting") in
the Hugging Face format — YAML front matter with `model-index` that `huggingface_hub.ModelCard`
parses — written from the run's config, meta, summary and (classification) RUN/classes.json."""

from __future__ import annotations

import json
import math

from ..engine.plugin import Plugin
from ..engine.runtime import unwrap
from ..registry import PLUGINS
from .classes import CLASSES_FILE

CARD_FILE = "MODEL_CARD.md"

# what a metric key's last part means, and its Hugging Face metric type
METRICS = {
    "acc": ("accuracy", "fraction of examples whose most probable class is the true one"),
    "macro_f1": ("f1", "F1 per class averaged over the classes the split holds (macro)"),
    "loss": ("loss", "the training objective on the split"),
    "ece": ("ece", "expected calibration error: the gap between accuracy and mean confidence in 15 equal-width confidence bins, weighted by their share"),
    "worst_class_f1": ("f1", "the lowest F1 of any class"),
    "rmse": ("rmse", "root mean squared error"),
    "mae": ("mae", "mean absolute error"),
    "return_mean": ("mean_reward", "mean undiscounted return of deterministic (greedy) episodes"),
}

TASK_TYPES = {"regress": "tabular-regression", "forecast": "time-series-forecasting",
              "autoencode": "image-to-image", "vae": "image-to-image", "gan": "unconditional-image-generation",
              "dqn": "reinforcement-learning", "ppo": "reinforcement-learning"}
NOUNS = {"classify": "classification", "regress": "regression", "forecast": "forecasting",
         "autoencode": "autoencoder", "vae": "variational autoencoder", "gan": "generative adversarial",
         "dqn": "reinforcement-learning (DQN)", "ppo": "reinforcement-learning (PPO)"}
CLASSIFY_TYPES = {"image": "image-classification", "text": "text-classification", "table": "tabular-classification",
                  "series": "time-series-classification"}


def task_type(cfg, meta) -> str:
    """The Hugging Face task type of a run (model-index `task.type`)."""
    if cfg.task == "classify":
        return CLASSIFY_TYPES.get(meta.kind, "classification")
    return TASK_TYPES.get(cfg.task, cfg.task)


def dataset_name(cfg) -> str:
    """The data set (or, for RL, the environment) a run learned from."""
    return cfg.env.id if cfg.uses("env") else cfg.data.name


def test_metrics(summary: dict) -> dict:
    """The run's own final metrics: test/* keys, and eval/* (RL; not the episode count), numbers only."""
    return {k: v for k, v in summary.items()
            if k.startswith(("test/", "eval/")) and k != "eval/episodes" and _number(v)}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def parameter_count(task) -> int:
    seen, n = set(), 0
    for m in task.modules().values():
        for p in unwrap(m).parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
    return n


def card_data(cfg, meta, summary: dict):
    """The front matter: a huggingface_hub.ModelCardData with eval_results (-> model-index)."""
    from huggingface_hub import EvalResult, ModelCardData

    data, ttype = dataset_name(cfg), task_type(cfg, meta)
    metrics = test_metrics(summary)
    results = [EvalResult(task_type=ttype, task_name=cfg.task, dataset_type=data, dataset_name=data,
                          dataset_split="test", metric_type=METRICS.get(k.split("/", 1)[1], (k.split("/", 1)[1],))[0],
                          metric_name=k, metric_value=float(v)) for k, v in metrics.items()]
    return ModelCardData(library_name="deepstep", tags=list(dict.fromkeys([cfg.task, cfg.model["name"], "deepstep"])),
                         datasets=[data], metrics=list(dict.fromkeys(r.metric_type for r in results)),
                         model_name=cfg.recipe or f"deepstep-{cfg.task}", eval_results=results or None)


def card_text(cfg, meta, summary: dict, classes: dict | None, params: int | None) -> str:
    """The whole MODEL_CARD.md (front matter and sections)."""
    data = dataset_name(cfg)
    name = cfg.recipe or f"deepstep-{cfg.task}"
    metrics = test_metrics(summary)
    sizes = dict(getattr(meta, "sizes", {}) or {})
    v = summary.get("versions", {})
    options = ", ".join(f"{k}={val!r}" for k, val in cfg.model.items() if k != "name")
    out = [f"---\n{card_data(cfg, meta, summary).to_yaml()}\n---\n", f"# Model card: {name}\n"]
    if cfg.description:
        out.append(f"{cfg.description}\n")

    out.append("## Model details\n")
    out += [f"- Architecture: `{cfg.model['name']}`" + (f" ({options})" if options else ""),
            f"- Parameters: {params:,}" if params is not None else "- Parameters: unknown",
            f"- Recipe: `{name}` (task `{cfg.task}`; config.toml in this folder holds every option)",
            f"- Optimizer: {cfg.optim.name}, learning rate {cfg.optim.lr:g}; schedule {cfg.sched.name}",
            f"- Training: {summary.get('epochs', '?')} epochs in {_fmt(summary.get('train_seconds', '?'))} s "
            f"({summary.get('samples_per_second', '?'):,} samples/s)",
            f"- Device: {summary.get('device', '?')}; processes: {summary.get('world_size', 1)}",
            f"- Seed: {summary.get('seed', cfg.train.seed)}",
            f"- Versions: deepstep {v.get('deepstep', '?')}, torch {v.get('torch', '?')}"
            + (f", numpy {v['numpy']}, scikit-learn {v['sklearn']}, Python {v['python']}"
               if {"numpy", "sklearn", "python"} <= set(v) else ""),
            "- Weights: `model.safetensors` in this folder (safetensors; `deepstep predict` reads them)", ""]

    out.append("## Intended use\n")
    out.append((cfg.card.intended_use.strip() or
                f"A {NOUNS.get(cfg.task, cfg.task)} model trained on `{data}` with deepstep, for learning and experimenting with "
                "deep learning. It has been evaluated on the test split described below only; it is not "
                "meant for decisions about people or for any use beyond that data's distribution.") + "\n")

    out.append("## Factors\n")
    if classes:
        out.append("The factor evaluated is the class: results are reported per class below. No other "
                   "groups (who or what produced an example, how it was recorded) are known to deepstep, "
                   "so performance across them is unmeasured.\n")
    else:
        out.append("No subgroups were evaluated: the metrics are over the whole test split. Groups within "
                   "the data (sources, periods, conditions) are unknown to deepstep and unmeasured.\n")

    out.append("## Metrics\n")
    if metrics:
        out += ["| metric | value | meaning |", "|---|---|---|"]
        out += [f"| {k} | {_fmt(val)} | {METRICS.get(k.split('/', 1)[1], ('', ''))[1]} |" for k, val in metrics.items()]
    baselines = {k: val for k, val in summary.items() if k.startswith("baseline/") and _number(val)}
    if baselines:
        out += ["", "Baselines on the same split, for comparison:", "",
                "| baseline | value |", "|---|---|"] + [f"| {k} | {_fmt(val)} |" for k, val in baselines.items()]
    out.append("")

    out.append("## Evaluation data\n")
    if cfg.uses("env"):
        out.append(f"Greedy episodes in a fresh `{data}` environment with another seed "
                   f"({cfg.env.eval_episodes} episodes).\n")
    else:
        out.append(f"The test split of `{data}`" + (f" ({meta.source})" if getattr(meta, "source", "") else "")
                   + (f": {sizes['test']:,} examples" if "test" in sizes else "")
                   + ", held out from training and from the choice of weights"
                   + (f" (a data set without a test split of its own has data.test_split = {cfg.data.test_split:g} "
                      "of it held out, stratified by class for classifiers and fixed by the seed)"
                      if cfg.task in ("classify", "regress") else "")
                   + (" (the end of the series)" if cfg.uses("forecast") else "")
                   + ".\n")

    out.append("## Training data\n")
    if cfg.uses("env"):
        out.append(f"Experience collected in `{data}` during training (no fixed data set).\n")
    else:
        parts = ", ".join(f"{k} {n:,}" for k, n in sizes.items())
        out.append(f"`{data}`" + (f", split into {parts} examples" if parts else "")
                   + (f"; inputs of shape {tuple(meta.in_shape)} ({meta.kind})" if getattr(meta, "in_shape", None) else "")
                   + (", standardized with statistics of the training split only." if cfg.data.normalize else ".") + "\n")
    if classes:
        bal = classes["train_balance"]
        out += ["Class balance of the training split:", "", "| class | training examples |", "|---|---|"]
        out += [f"| {c} | {n:,} |" for c, n in bal.items()]
        out.append("")

    out.append("## Quantitative analyses\n")
    if classes:
        out += ["Per class, on the test split:", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        out += [f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
                for r in classes["per_class"]]
        w = classes["worst_class"]
        out += ["", f"Worst class: '{w['class']}' with F1 {w['f1']:.3f}, {w['gap_to_mean']:.3f} below the mean F1 "
                f"of the classes. Expected calibration error: {classes['calibration']['ece']:.4f} "
                "(15 bins; the bins are in classes.json for a reliability diagram).", ""]
    else:
        out.append("The metrics above are over the whole test split; this task has no per-class analysis.\n")

    out.append("## Ethical considerations\n")
    if classes:
        bal = classes["train_balance"]
        big = max(bal, key=bal.get)
        small = [c for c, n in bal.items() if 3 * n < bal[big]]
        lo = min(bal, key=bal.get)
        out.append(f"Class balance: the smallest training class is '{lo}' ({bal[lo]:,}), the largest '{big}' "
                   f"({bal[big]:,})" + (f"; {', '.join(repr(c) for c in small)} ha{'s' if len(small) == 1 else 've'} "
                                        "less than a third of the largest class's examples, so expect weaker results there."
                                        if small else "; no class has less than a third of the largest one's examples.")
                   + "\n")
        pairs = classes["most_confused"]
        if pairs:
            out.append("Failure modes the confusion matrix shows (the most frequent errors on the test split):\n")
            out += [f"- '{p['true']}' predicted as '{p['predicted']}': {_times(p['count'])}" for p in pairs]
            out.append("")
        else:
            out.append("The test split shows no confusions.\n")
    out.append("deepstep records nothing about who produced the data or whether it holds personal "
               "information: check the data set's own documentation before using the model on anything "
               "that concerns people.\n")

    out.append("## Caveats and recommendations\n")
    out.append((cfg.card.limitations.strip() or
                f"These results come from one seed ({summary.get('seed', cfg.train.seed)}) and one split; "
                "other seeds and splits will differ. Measure the model on your own data before relying on it.") + "\n")
    return "\n".join(out)


@PLUGINS.register("model-card", tags=("default",))
class ModelCard(Plugin):
    """Writes RUN/MODEL_CARD.md, a model card (Mitchell et al. 2019) in the Hugging Face format:
    front matter with model-index (the test metrics), then model details, intended use, factors,
    metrics, evaluation and training data, per-class analyses, ethical considerations, caveats.
    The recipe's [card] intended_use and limitations replace the generic sentences."""

    name = "model-card"
    order = 60  # after class-report (30), whose classes.json it reads

    def applies_to(self, run) -> bool:
        return run.dir is not None

    def on_finish(self, run, summary: dict) -> None:
        from huggingface_hub import ModelCard as HFCard

        f = run.path / CLASSES_FILE
        classes = json.loads(f.read_text()) if f.is_file() else None
        try:
            params = parameter_count(run.task)
        except (AttributeError, TypeError):
            params = None
        text = card_text(run.cfg, run.meta, summary, classes, params)
        HFCard(text).save(run.path / CARD_FILE)
