"""The run as the hub: one `fit`, one `Run` handle live and reopened, registered plug-ins chosen
by recipe or `--with`, plug-in state in checkpoints, and a runtime that owns every forward."""

from __future__ import annotations

import csv
import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

from conftest import KillAt, Killed
from deepstep.config import load_config
from deepstep.engine.fit import fit, resume
from deepstep.engine.plugin import Plugin
from deepstep.engine.run import Run
from deepstep.engine.runtime import Runtime, unwrap
from deepstep.errors import UserError
from deepstep.registry import PLUGINS, TASKS

# one tiny configuration per task: (recipe, overrides, the plug-ins that must apply with a run directory)
TINY = {
    "classify": ("digits-mlp", ["train.epochs=2"], {"metrics", "best-weights", "class-report", "class-balance"}),
    "forecast": ("sunspots-lstm", ["train.epochs=2"], {"metrics", "best-weights", "forecast-baselines"}),
    "autoencode": ("digits-ae", ["train.epochs=2"], {"metrics", "best-weights", "ae-pictures"}),
    "vae": ("digits-vae", ["train.epochs=2", "gen.eval_samples=0", "gen.test_samples=0", "gen.nll_samples=2"],
            {"metrics", "best-weights", "ae-pictures"}),
    "gan": ("digits-gan", ["train.epochs=2", "gen.eval_samples=0", "gen.test_samples=0"],
            {"metrics", "best-weights", "gan-pictures"}),
    "ppo": ("cartpole-ppo", ["train.epochs=2", "env.steps_per_epoch=512", "env.val_episodes=1", "env.eval_episodes=1"],
            {"metrics", "best-weights"}),
    "dqn": ("cartpole-dqn", ["train.epochs=2", "env.steps_per_epoch=512", "rl.learning_starts=100", "env.val_episodes=1",
                             "env.eval_episodes=1"], {"metrics", "best-weights"}),
}
TASK_SPECIFIC = {"forecast-baselines", "ae-pictures", "gan-pictures", "tokenizer-files", "tfidf-baseline",
                 "scratch-baseline", "class-report", "class-balance"}
ALWAYS_FILES = ("config.toml", "metrics.jsonl", "meta.json", "summary.json", "model.safetensors", "checkpoint.pt")


def tiny(task: str, *more: str):
    recipe, over, _ = TINY[task]
    return load_config(recipe, [*over, "train.threads=1", *more])


@pytest.mark.parametrize("task", list(TINY))
def test_every_task_runs_through_fit_with_its_plugins_and_reopens(task, tmp_path):
    if task in ("ppo", "dqn"):
        pytest.importorskip("gymnasium")
    run = fit(tiny(task), run_dir=tmp_path / "run", verbose=0)
    names = {p.name for p in run.plugins}
    # the task's own plug-ins run, and no other task's (plug-ins for every run may come and go)
    assert TINY[task][2] <= names and not (TASK_SPECIFIC - TINY[task][2]) & names, names
    for f in ALWAYS_FILES:
        assert (tmp_path / "run" / f).is_file(), f
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines if '"epoch"' in line] == [1, 2]
    again = Run.open(tmp_path / "run")
    assert again.summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert again.meta.task == task and again.metrics() == run.metrics()
    assert isinstance(again.model(), torch.nn.Module) and not again.model().training


def test_reopened_run_predicts_raw_inputs_and_evaluates_to_the_summary(tmp_path):
    from sklearn.datasets import load_digits

    live = fit(tiny("classify"), run_dir=tmp_path / "run", verbose=0)
    run = Run.open(tmp_path / "run")
    assert run.evaluate()["test/acc"] == live.summary["test/acc"]
    d = load_digits()
    p = run.predict(d.images[:, None].astype(np.float32))  # raw pixels 0..16: the run normalizes
    assert p.shape == (len(d.target), 10) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert (p.argmax(1) == d.target).mean() > 0.85
    assert run["test/acc"] == run.summary["test/acc"] and run.run_dir == run.path


def test_an_unfinished_run_says_what_is_missing(tmp_path):
    with pytest.raises(Killed):
        fit(tiny("classify"), run_dir=tmp_path / "run", verbose=0, plugins=[KillAt(3)])
    with pytest.raises(UserError, match="no trained weights.*deepstep resume"):
        Run.open(tmp_path / "run").predict(np.zeros((1, 1, 8, 8), np.float32))


def test_with_csv_log_from_the_cli_and_list_plugins(run_cli, tmp_path):
    r = run_cli("train", "digits-mlp", "--set", "train.epochs=3", "--with", "csv-log", "--run-dir", "r", "--quiet")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "r" / "metrics.csv")))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3] and "val/acc" in rows[0]
    assert 'use = [\n    "csv-log",\n]' in (tmp_path / "r" / "config.toml").read_text() or \
        'use = ["csv-log"]' in (tmp_path / "r" / "config.toml").read_text()
    r = run_cli("list", "plugins")
    assert r.returncode == 0 and all(n in r.stdout for n in ("metrics", "best-weights", "csv-log", "default"))
    r = run_cli("train", "digits-mlp", "--with", "csv-lgo", "--run-dir", "bad")
    assert r.returncode == 2 and "csv-lgo" in r.stderr and "csv-log" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad").exists()


def test_plugin_state_is_in_the_checkpoint_so_resume_is_exact(tmp_path):
    cfg = tiny("classify", "train.epochs=4", "plugins.use=['csv-log']")
    spe = fit(cfg, run_dir=tmp_path / "ref", verbose=0).task.steps_per_epoch
    with pytest.raises(Killed):  # mid-epoch 3: two epochs in the checkpoint, rows and lines after it to drop
        fit(cfg, run_dir=tmp_path / "cut", verbose=0, plugins=[KillAt(2 * spe + spe // 2)])
    resumed = resume(tmp_path / "cut", verbose=0)
    ref = Run.open(tmp_path / "ref")
    assert resumed.summary["test/acc"] == ref.summary["test/acc"]
    for f in ("metrics.csv", "metrics.jsonl"):
        assert (tmp_path / "cut" / f).read_text() == (tmp_path / "ref" / f).read_text(), f


@pytest.mark.slow
@pytest.mark.parametrize("compiled,more", [(False, []), (True, []), (False, ["data.augment=altflip", "optim.lookahead=5"])],
                         ids=["bf16-channels-last", "bf16-channels-last-compile", "altflip-lookahead"])
def test_resume_is_exact_on_the_fast_path(tmp_path, compiled, more):
    """A conv net under bf16 autocast and channels_last (forced, so any CPU takes this path), eager,
    compiled, and with the speedrun's alternating flips and Lookahead weights: killed mid-epoch and
    resumed, it ends with the uninterrupted run's weights and logs."""
    from safetensors.torch import load_file

    cfg = load_config("digits-cnn", ["train.epochs=3", "train.threads=1", "train.precision=bf16",
                                     "train.channels_last=true", f"train.compile={str(compiled).lower()}",
                                     "plugins.skip=['explanations', 'report', 'model-card']", *more])
    ref = fit(cfg, run_dir=tmp_path / "ref", verbose=0)
    assert ref.summary["precision"] == "bf16" and ref.summary["channels_last"] is True
    spe = ref.task.steps_per_epoch
    with pytest.raises(Killed):
        fit(cfg, run_dir=tmp_path / "cut", verbose=0, plugins=[KillAt(spe + spe // 2)])
    resumed = resume(tmp_path / "cut", verbose=0)
    assert resumed.summary["test/loss"] == ref.summary["test/loss"]
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()


class Recorder(Plugin):
    """Records the events it sees, in order (a plug-in in a test, no registration needed)."""

    rank0_only = False

    def __init__(self):
        self.events = []

    def on_start(self, run):
        self.events.append("start")

    def on_log(self, run, record):
        self.events.append("epoch-log" if "epoch" in record else "step-log")

    def on_epoch_end(self, run, logs):
        self.events.append("epoch-end")
        return logs["epoch"] == 2  # requests a stop

    def on_train_end(self, run, logs):
        self.events.append("train-end")

    def on_finish(self, run, summary):
        summary["recorder/events"] = len(self.events)


def test_hooks_run_in_order_a_plugin_can_stop_and_add_summary_keys(tmp_path):
    rec = Recorder()
    run = fit(tiny("classify", "train.epochs=5", "train.log_every=5"), run_dir=tmp_path / "r", plugins=[rec], verbose=0)
    assert run.summary["epochs"] == 2  # stopped by the plug-in
    assert rec.events[0] == "start" and rec.events[-1] == "train-end"
    assert "step-log" in rec.events and rec.events.count("epoch-end") == 2
    assert run.summary["recorder/events"] == len(rec.events)
    step_lines = [r for r in run.metrics() if "epoch" not in r]
    assert step_lines and all("train/loss" in r for r in step_lines)


def test_every_registered_plugin_is_described_and_has_its_name():
    for name in PLUGINS.names():
        cls = PLUGINS.get(name)
        assert cls.name == name and PLUGINS.about(name).endswith("."), name


def test_keras_style_callback_objects_are_plugins(tmp_path):
    class Stopper:
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, epoch, logs):
            self.seen.append(epoch)
            self.stop_training = epoch >= 1

    s = Stopper()
    run = fit(tiny("classify", "train.epochs=6"), plugins=[s], verbose=0)
    assert s.seen == [0, 1] and run.summary["epochs"] == 2 and run.dir is None


# --- the runtime owns every forward ------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classify", "forecast", "autoencode", "vae", "gan", "ppo", "dqn"])
def test_bf16_autocast_reaches_every_tasks_forward(task):
    if task in ("ppo", "dqn"):
        pytest.importorskip("gymnasium")
    cfg = tiny(task, "train.precision=bf16")
    rt = Runtime.from_config(cfg.train)
    t = TASKS.get(cfg.task)(TASKS.get(cfg.task).prepare(cfg, False, 0), rt)
    dtypes = set()
    for m in t.modules().values():
        for layer in m.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.register_forward_hook(lambda mod, i, out: dtypes.add(out.dtype))
    item = next(iter(t.batches(0)))
    t.train_step(item)
    assert dtypes == {torch.bfloat16}, dtypes


def test_runtime_module_wraps_methods_and_submodules_and_unwraps():
    rt = Runtime(device="cpu", precision="bf16")
    net = torch.nn.Sequential(OrderedDict(first=torch.nn.Linear(3, 4), act=torch.nn.ReLU(), last=torch.nn.Linear(4, 2)))
    w = rt.module(net)
    x = torch.randn(5, 3)
    assert w(x).dtype == torch.bfloat16 and w.first(x).dtype == torch.bfloat16  # a sub-module, wrapped
    assert net(x).dtype == torch.float32  # outside the wrapper: no autocast
    assert unwrap(w) is net and unwrap(w.first) is net.first
    assert set(w.state_dict()) == {"module." + k for k in net.state_dict()}
    w.eval()
    assert not net.training and not net.first.training


def test_compile_trains_to_the_same_result_as_eager(tmp_path):
    eager = fit(tiny("classify", "train.epochs=3"), verbose=0).summary
    compiled = fit(tiny("classify", "train.epochs=3", "train.compile=true"), verbose=0).summary
    assert compiled["test/acc"] == pytest.approx(eager["test/acc"], abs=0.01)


def test_a_plugin_named_twice_runs_once_and_an_instance_replaces_the_default(tmp_path):
    from deepstep.plugins.best import BestWeights

    cfg = tiny("classify", "train.epochs=6", "plugins.use=['metrics', 'csv-log', 'csv-log']")
    run = fit(cfg, run_dir=tmp_path / "r", plugins=[BestWeights(patience=1)], verbose=0)
    names = [p.name for p in run.plugins]
    assert len(names) == len(set(names)) and {"best-weights", "csv-log", "metrics"} <= set(names)
    assert [p for p in run.plugins if p.name == "best-weights"][0].patience == 1
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"epoch"' in line]) == run.summary["epochs"]  # written once each
    assert run.summary["epochs"] < 6  # the given instance's patience, not train.early_stop = 0


def test_reconstruction_predict_refuses_inputs_outside_the_unit_range(run_cli, tmp_path):
    """A Bernoulli decoder scores inputs outside [0, 1] as nonsense (negative 'nats'): a clear error."""
    from sklearn.datasets import load_digits

    r = run_cli("train", "digits-ae", "--set", "train.epochs=1", "--run-dir", "ae", "--quiet")
    assert r.returncode == 0, r.stderr
    raw = load_digits().images[:2, None].astype(np.float32)  # pixel values 0..16
    np.save(tmp_path / "raw.npy", raw)
    np.save(tmp_path / "unit.npy", raw / 16)
    r = run_cli("predict", "ae", "raw.npy")
    assert r.returncode == 2 and "[0, 16]" in r.stderr and "/16" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("predict", "ae", "unit.npy", "--json")
    assert r.returncode == 0, r.stderr
    assert all(json.loads(line)["anomaly_score"] > 0 for line in r.stdout.splitlines())


def test_a_checkpoint_from_before_plugins_resumes_without_losing_metric_lines(tmp_path):
    """Checkpoints of the callback era held `metric_lines` and a list of callback states."""
    from deepstep.engine.checkpoint import load_checkpoint, save_checkpoint

    cfg = tiny("classify", "train.epochs=4")
    spe = fit(cfg, run_dir=tmp_path / "ref", verbose=0).task.steps_per_epoch
    with pytest.raises(Killed):
        fit(cfg, run_dir=tmp_path / "cut", verbose=0, plugins=[KillAt(2 * spe + 1)])
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    plugins = state.pop("plugins")
    state["metric_lines"] = plugins["metrics"]["lines"]
    state["callbacks"] = [plugins["best-weights"], {}]  # BestWeights, then Progress (stateless)
    save_checkpoint(state, ckpt)
    resume(tmp_path / "cut", verbose=0)
    a = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert a == b
    ra, rb = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("ref", "cut"))
    assert ra["test/acc"] == rb["test/acc"] and ra.get("best_epoch") == rb.get("best_epoch")
