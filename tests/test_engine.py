"""The engine's contract, shown with toy tasks that are not supervised learning: a GAN-like task
(two models, two Optimization objects, alternating updates inside one step) and an on-policy
bandit whose `batches(epoch)` is a generator of rollouts. Both run through the same Loop, RunDir
and checkpoints as `deepstep train`; an interrupted and resumed run must equal an uninterrupted one.
Also: early stopping and best-weight restore, non-finite losses, and DDP with torchrun on CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import cli_env
from deepstep.config import OptimConfig, RunConfig, SchedConfig, load_config
from deepstep.data.arrays import TensorData
from deepstep.engine.checkpoint import load_checkpoint
from deepstep.engine.loop import Loop
from deepstep.engine.optim import Optimization
from deepstep.engine.plugin import Plugin
from deepstep.engine.run import Run
from deepstep.engine.rundir import RunDir
from deepstep.engine.runtime import Runtime
from deepstep.errors import NonFiniteLoss
from deepstep.plugins.best import BestWeights
from deepstep.plugins.metrics import MetricsLog
from deepstep.run import train

# --- toy tasks ----------------------------------------------------------------------------------


class ToyGAN:
    """1-D GAN: G maps noise (B, 2) to samples (B, 1); D tells them from N(3, 0.5^2). The step
    alternates a D update and a G update, each through its own Optimization."""

    steps_per_epoch = 6

    def __init__(self, epochs: int, batch: int = 32):
        self.batch = batch
        self.g = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
        self.d = nn.Sequential(nn.Linear(1, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        self.opt_d = Optimization(self.d.parameters(), OptimConfig(name="adam", lr=2e-3, betas=[0.5, 0.999]),
                                  SchedConfig(name="cosine"), self.steps_per_epoch, epochs)
        self.opt_g = Optimization(self.g.parameters(), OptimConfig(name="sgd", lr=2e-2, momentum=0.9),
                                  SchedConfig(name="step", step_epochs=2, gamma=0.5), self.steps_per_epoch, epochs)

    def modules(self):
        return {"g": self.g, "d": self.d}

    def train(self, mode=True):
        self.g.train(mode)
        self.d.train(mode)

    def batches(self, epoch):
        for _ in range(self.steps_per_epoch):
            yield 3.0 + 0.5 * torch.randn(self.batch, 1)  # real samples, from the global RNG

    def samples_in(self, real):
        return real.shape[0]

    def train_step(self, real):
        fake = self.g(torch.randn(real.shape[0], 2))
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        d_loss = (F.binary_cross_entropy_with_logits(self.d(real), ones)
                  + F.binary_cross_entropy_with_logits(self.d(fake.detach()), zeros))
        self.opt_d.step(d_loss)
        self.d.requires_grad_(False)  # G's loss must not leave gradients in D
        g_loss = F.binary_cross_entropy_with_logits(self.d(fake), ones)
        self.opt_g.step(g_loss)
        self.d.requires_grad_(True)
        return {"gan/d_loss": d_loss, "gan/g_loss": g_loss}

    @torch.no_grad()
    def evaluate(self, split):
        z = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
        return {f"{split}/mean_gap": abs(self.g(z).mean().item() - 3.0)}

    def end_epoch(self, logs):
        self.opt_d.end_epoch()
        self.opt_g.end_epoch()
        logs["lr_g"] = self.opt_g.lr

    def state_dict(self):
        return {"g": self.g.state_dict(), "d": self.d.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state):
        self.g.load_state_dict(state["g"])
        self.d.load_state_dict(state["d"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])


class ToyBandit:
    """Contextual 3-armed bandit: an observation (4,) pays 1 (+ noise) for the arm argmax(obs @ W).
    `batches` is a generator that *collects rollouts* with the current policy (on-policy), and the
    step is REINFORCE with a mean baseline."""

    steps_per_epoch = 5

    def __init__(self, epochs: int, batch: int = 64):
        self.batch = batch
        self.w_true = torch.randn(4, 3, generator=torch.Generator().manual_seed(7))
        self.policy = nn.Linear(4, 3)
        self.opt = Optimization(self.policy.parameters(), OptimConfig(name="adam", lr=5e-2),
                                SchedConfig(name="constant", warmup_epochs=0.5), self.steps_per_epoch, epochs,
                                grad_clip=1.0)

    def modules(self):
        return {"policy": self.policy}

    def train(self, mode=True):
        self.policy.train(mode)

    def batches(self, epoch):
        for _ in range(self.steps_per_epoch):
            obs = torch.randn(self.batch, 4)
            with torch.no_grad():
                action = torch.distributions.Categorical(logits=self.policy(obs)).sample()
            best = (obs @ self.w_true).argmax(1)
            reward = (action == best).float() + 0.1 * torch.randn(self.batch)
            yield obs, action, reward

    def samples_in(self, rollout):
        return rollout[0].shape[0]

    def train_step(self, rollout):
        obs, action, reward = rollout
        logp = torch.log_softmax(self.policy(obs), -1).gather(1, action[:, None]).squeeze(1)
        loss = -(logp * (reward - reward.mean())).mean()
        self.opt.step(loss)
        return {"train/loss": loss, "rollout/return": reward.mean()}

    @torch.no_grad()
    def evaluate(self, split):
        obs = torch.randn(512, 4, generator=torch.Generator().manual_seed(11))
        hit = self.policy(obs).argmax(1) == (obs @ self.w_true).argmax(1)
        return {f"{split}/acc": hit.float().mean().item()}

    def end_epoch(self, logs):
        self.opt.end_epoch()

    def state_dict(self):
        return {"policy": self.policy.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state):
        self.policy.load_state_dict(state["policy"])
        self.opt.load_state_dict(state["opt"])


class Killed(Exception):
    """Stands in for the process dying between two epochs."""


class KillAt(Plugin):
    """Dies at a global step, mid-epoch: metrics.jsonl then holds interval lines newer than the
    checkpoint, which the resume must drop."""

    def __init__(self, step: int):
        self.step = step

    def on_batch_end(self, run, step: int) -> None:
        if step == self.step:
            raise Killed


def run_loop(make_task, path, epochs, seed=0, resume=False, callbacks=()):
    """Build runtime + task + Loop on a run directory as `engine.fit.fit` does (the metrics.jsonl
    writer is a plug-in); resume from its checkpoint."""
    runtime = Runtime(device="cpu", seed=seed)
    task = make_task(epochs)
    run = RunDir.open(path) if resume else RunDir.create(path, {"task": "toy"})
    live = Run(RunConfig(), run, task=task, runtime=runtime)
    loop = Loop(task, runtime, epochs, live, [MetricsLog(), *callbacks], log_every=4)
    if resume:
        loop.load_state_dict(load_checkpoint(run.checkpoint))
    final = loop.fit()
    return task, loop, run, final


def params(task) -> dict:
    return {f"{n}.{k}": v.detach().clone() for n, m in task.modules().items() for k, v in m.state_dict().items()}


def assert_same_params(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


def check_resume_equals_uninterrupted(make_task, tmp_path, epochs=5, kill_at=2):
    ref_task, _, ref_run, _ = run_loop(make_task, tmp_path / "ref", epochs)
    spe = make_task.steps_per_epoch
    with pytest.raises(Killed):
        run_loop(make_task, tmp_path / "cut", epochs, callbacks=[KillAt(kill_at * spe + spe - 1)])
    cut = RunDir(tmp_path / "cut")
    assert load_checkpoint(cut.checkpoint)["loop"]["epoch"] == kill_at
    assert len(cut.read_metrics()) > load_checkpoint(cut.checkpoint)["plugins"]["metrics"]["lines"]  # lines to drop
    # a fresh process: different seed, new task objects; everything must come from the checkpoint
    task, loop, run, _ = run_loop(make_task, tmp_path / "cut", epochs, seed=123, resume=True)
    assert loop.state.epoch == epochs
    assert_same_params(params(task), params(ref_task))
    # the metric history is identical too: no duplicated or missing lines
    assert run.read_metrics() == ref_run.read_metrics()
    return ref_task, ref_run


# --- 1. engine contract ------------------------------------------------------------------------------


def test_gan_two_optimizers_resume_equals_uninterrupted(tmp_path):
    torch.manual_seed(0)
    init = params(ToyGAN(5))  # Runtime(seed=0) seeds the same way before the task is built
    ref_task, ref_run = check_resume_equals_uninterrupted(ToyGAN, tmp_path)
    after = params(ref_task)
    for name in ("g", "d"):
        changed = [k for k in init if k.startswith(name + ".") and not torch.equal(init[k], after[k])]
        assert changed, f"model {name} did not train"
    ckpt = load_checkpoint(ref_run.checkpoint)["task"]
    assert ckpt["opt_d"]["optimizer"]["state"] and ckpt["opt_g"]["optimizer"]["state"]
    assert "exp_avg" in ckpt["opt_d"]["optimizer"]["state"][0]  # Adam's moments for D
    assert "momentum_buffer" in ckpt["opt_g"]["optimizer"]["state"][0]  # SGD's momentum for G
    assert ckpt["opt_g"]["steps"] == ckpt["opt_d"]["steps"] == 5 * ToyGAN.steps_per_epoch
    logs = ref_run.read_metrics()
    epochs = [r for r in logs if "val/mean_gap" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5]
    assert {"gan/d_loss", "gan/g_loss"} <= epochs[0].keys()
    assert epochs[-1]["lr_g"] == pytest.approx(2e-2 * 0.5**2)  # step schedule: halved at epochs 2 and 4


def test_rollout_generator_task_resume_equals_uninterrupted(tmp_path):
    ref_task, ref_run = check_resume_equals_uninterrupted(ToyBandit, tmp_path, epochs=6, kill_at=3)
    epochs = [r for r in ref_run.read_metrics() if "val/acc" in r]
    assert epochs[-1]["step"] == 6 * ToyBandit.steps_per_epoch
    # the policy learned from its own rollouts (chance is 1/3)
    assert epochs[-1]["val/acc"] > 0.7 and epochs[-1]["val/acc"] > epochs[0]["val/acc"] + 0.1
    assert epochs[-1]["rollout/return"] > epochs[0]["rollout/return"]
    # interval logs (log_every=4) went to metrics.jsonl between epoch records
    assert any("epoch" not in r and "rollout/return" in r for r in ref_run.read_metrics())


# --- 4. early stopping and best weights ------------------------------------------------------------


class Scripted:
    """Its one weight equals the number of the epoch that last trained it; val metrics are scripted."""

    steps_per_epoch = 1

    def __init__(self, scores, key="val/acc", nan_at=None):
        self.net = nn.Linear(1, 1, bias=False)
        self.scores, self.key, self.nan_at, self.epoch = scores, key, nan_at, 0

    def modules(self):
        return {"net": self.net}

    def train(self, mode=True):
        pass

    def batches(self, epoch):
        self.epoch = epoch
        yield torch.zeros(1)

    def samples_in(self, item):
        return 1

    def train_step(self, item):
        with torch.no_grad():
            self.net.weight.fill_(self.epoch + 1)
        return {"train/loss": torch.tensor(float("nan") if self.epoch == self.nan_at else 1.0)}

    def evaluate(self, split):
        return {self.key: self.scores[self.epoch]}

    def end_epoch(self, logs):
        pass

    def state_dict(self):
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["net"])


def scripted_loop(tmp_path, task, epochs, patience, restore=True, monitor="val/acc"):
    best = BestWeights(monitor, patience, restore)
    run = RunDir.create(tmp_path / "run", {"task": "scripted"})
    rt = Runtime(device="cpu")
    return Loop(task, rt, epochs, Run(RunConfig(), run, task=task, runtime=rt), [MetricsLog(), best]), run


def test_early_stop_after_patience_restores_best(tmp_path):
    task = Scripted([0.5, 0.7, 0.6, 0.65, 0.69, 0.9, 0.95])
    loop, run = scripted_loop(tmp_path, task, 7, patience=3)
    final = loop.fit()
    assert loop.state.epoch == 5  # best at epoch 2, then 3 epochs without improvement
    assert task.net.weight.item() == 2.0  # the weights of epoch 2
    assert final["best_epoch"] == 2 and final["best/val/acc"] == 0.7
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3, 4, 5]
    # resuming an early-stopped run does not train on
    task2 = Scripted(task.scores)
    rt = Runtime(device="cpu")
    loop2 = Loop(task2, rt, 7, Run(RunConfig(), run, task=task2, runtime=rt), [MetricsLog(), BestWeights("val/acc", 3)])
    loop2.load_state_dict(load_checkpoint(run.checkpoint))
    loop2.fit()
    assert loop2.state.epoch == 5 and task2.net.weight.item() == 2.0


def test_loss_monitor_is_minimized(tmp_path):
    task = Scripted([0.9, 0.5, 0.4, 0.45, 0.41], key="val/loss")
    loop, _ = scripted_loop(tmp_path, task, 5, patience=2, monitor="val/loss")
    final = loop.fit()
    assert loop.state.epoch == 5 and final["best_epoch"] == 3 and task.net.weight.item() == 3.0


def test_patience_zero_runs_to_end_and_restores_best(tmp_path):
    task = Scripted([0.5, 0.9, 0.6, 0.7])
    loop, _ = scripted_loop(tmp_path, task, 4, patience=0)
    loop.fit()
    assert loop.state.epoch == 4 and task.net.weight.item() == 2.0
    task = Scripted([0.5, 0.9, 0.6, 0.7])
    loop, _ = scripted_loop(tmp_path / "keep", task, 4, patience=0, restore=False)
    loop.fit()
    assert task.net.weight.item() == 4.0  # restore_best off: the last weights stay


def test_restore_best_through_train(tmp_path):
    """The real pipeline: with patience 0 the summary's val metrics are those of the best epoch.
    The rate is high enough that validation loss bounces, so the best epoch is not the last."""
    cfg = load_config("digits-mlp", ["train.epochs=6", "model.hidden=[16]", "model.dropout=0.0",
                                     "optim.lr=0.1", "sched.name=constant", "train.monitor=val/loss",
                                     "train.threads=1", "train.restore_best=true"])
    s = train(cfg, tmp_path / "run", verbose=0).summary
    logged = [r for r in RunDir(tmp_path / "run").read_metrics() if "val/loss" in r]
    best = min(logged, key=lambda r: r["val/loss"])
    assert s["epochs"] == 6 and s["best_epoch"] == best["epoch"] < 6
    assert logged[-1]["val/loss"] > best["val/loss"]
    assert s["val/loss"] == pytest.approx(best["val/loss"], abs=1e-9)
    assert s["val/acc"] == pytest.approx(best["val/acc"], abs=1e-9)
    assert s["best/val/loss"] == s["val/loss"]


# --- 5. non-finite loss ------------------------------------------------------------------------------


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path):
    task = Scripted([0.1, 0.2, 0.3, 0.4], nan_at=2)
    loop, run = scripted_loop(tmp_path, task, 4, patience=0)
    with pytest.raises(NonFiniteLoss, match=r"diverged at epoch 3: train/loss became nan.*checkpoint \(epoch 2\)"):
        loop.fit()
    ckpt = load_checkpoint(run.checkpoint)
    assert ckpt["loop"]["epoch"] == 2 and ckpt["task"]["net"]["weight"].item() == 2.0
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]


def test_nan_in_first_epoch_says_no_checkpoint(tmp_path):
    loop, run = scripted_loop(tmp_path, Scripted([0.1, 0.2], nan_at=0), 2, patience=0)
    with pytest.raises(NonFiniteLoss, match="No checkpoint was written yet"):
        loop.fit()
    assert not run.checkpoint.exists()


# --- 7. distributed ----------------------------------------------------------------------------------


def test_shards_are_equal_and_disjoint():
    data = TensorData(torch.arange(11.0), torch.arange(11), "cpu")
    shards = [list(data.batches(3, seed=5, rank=r, world=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 2  # 5 examples each, not 6 and 5
    ys = [torch.cat([y for _, y in s]) for s in shards]
    assert len(set(ys[0].tolist()) | set(ys[1].tolist())) == 10


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path):
    # 799 training examples, batch 57: rank 0 would get 400 (8 steps) and rank 1 399 (7 steps)
    # without equal shards, and DDP would hang on the step rank 1 never takes.
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "deepstep", "train", "digits-mlp", "--quiet", "--run-dir", str(run_dir),
           "--set", "train.epochs=2", "--set", "data.val_split=0.11", "--set", "train.batch_size=57",
           "--set", "model.hidden=[32]", "--set", "train.threads=1", "--set", "optim.lr=0.01"]
    p = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["world_size"] == 2 and s["epochs"] == 2
    assert s["test/acc"] > 0.7  # 2 epochs; each rank has its own dropout masks (seed + rank)
    logs = RunDir(run_dir).read_metrics()
    assert [r["epoch"] for r in logs if "epoch" in r] == [1, 2]  # only rank 0 wrote
    assert logs[-1]["step"] == 2 * 7  # 399 examples per rank in batches of 57
