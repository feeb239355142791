"""Reinforcement learning (tasks/rl, models/policy.py): oracle tests for the maths (GAE against a
naive forward sum, TD targets with terminal vs truncated episodes, the PPO clipped objective on
hand-made numbers), the environment plumbing on a tiny chain environment whose truncation and
termination we control, exact resume, and CLI smoke runs of every RL recipe (train, eval, play)
plus bad environment ids (exit 2)."""

from __future__ import annotations

import json

import gymnasium as gym  # the test extra installs it (pyproject: test, rl)
import numpy as np
import pytest
import torch

from conftest import interrupted_and_resumed
from deepstep import run as run_mod
from deepstep.config import RunConfig, load_config
from deepstep.engine.checkpoint import load_weights
from deepstep.engine.rundir import RunDir
from deepstep.engine.runtime import Runtime
from deepstep.models.policy import ObsNorm
from deepstep.registry import TASKS
from deepstep.tasks.rl.buffers import ReplayBuffer, gae
from deepstep.tasks.rl.dqn import td_target
from deepstep.tasks.rl.ppo import clipped_surrogate, value_loss

# --- a chain whose episodes we control ---------------------------------------------------------


class Chain(gym.Env):
    """obs = [position, steps taken]; action 1 moves right, 0 stays. Reaching position 2 terminates
    with reward 1 (else reward 0); the registration's time limit truncates after 3 steps."""

    observation_space = gym.spaces.Box(0.0, 100.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t = 0, 0
        return self._obs(), {}

    def step(self, action):
        self.pos, self.t = self.pos + int(action), self.t + 1
        done = self.pos >= 2
        return self._obs(), float(done), done, False, {}

    def _obs(self):
        return np.array([self.pos, self.t], dtype=np.float32)


CHAIN = "DeepstepChain-v0"
if CHAIN not in gym.registry:
    gym.register(CHAIN, entry_point=Chain, max_episode_steps=3)


def chain_task(task: str, action: int, **rl):
    """A task on the chain whose network always prefers `action` (a linear layer: zero weights,
    bias 1 on that action), for exact checks of what collection stores."""
    cfg = RunConfig.from_dict({"task": task, "env": {"id": CHAIN, "num_envs": 2, "steps_per_epoch": 8,
                                                     "val_episodes": 0},
                               "model": {"name": "linear"}, "rl": rl, "train": {"device": "cpu"}})
    t = TASKS.get(task)(cfg, Runtime(device="cpu", seed=0))
    net = t.q.net if task == "dqn" else t.policy.actor
    lin = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([10.0, -10.0] if action == 0 else [-10.0, 10.0]))
    if task == "dqn":
        t.target.load_state_dict(t.q.state_dict())
    return t


# --- oracles -----------------------------------------------------------------------------------


def naive_gae(rewards, values, dones, last_value, gamma, lam):
    """Forward sums A_t = sum_l (gamma lam)^l delta_{t+l}, stopping after the step that ends the episode."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            total, weight = 0.0, 1.0
            for k in range(t, T):
                next_v = last_value[n] if k == T - 1 else values[k + 1, n]
                delta = rewards[k, n] + (0.0 if dones[k, n] else gamma * next_v) - values[k, n]
                total += weight * delta
                if dones[k, n]:
                    break
                weight *= gamma * lam
            adv[t, n] = total
    return adv


def test_gae_matches_naive_forward_sums():
    g = torch.Generator().manual_seed(0)
    T, N = 9, 3
    rewards, values = torch.randn(T, N, generator=g), torch.randn(T, N, generator=g)
    dones = (torch.rand(T, N, generator=g) < 0.25).float()
    dones[4, 0] = 1.0  # at least one episode boundary inside the rollout
    last = torch.randn(N, generator=g)
    for gamma, lam in ((0.99, 0.95), (0.9, 0.0), (0.98, 1.0)):
        adv, ret = gae(rewards, values, dones, last, gamma, lam)
        want = naive_gae(rewards.numpy(), values.numpy(), dones.numpy(), last.numpy(), gamma, lam)
        np.testing.assert_allclose(adv.numpy(), want, rtol=1e-5, atol=1e-5)
        assert torch.allclose(ret, adv + values)


def test_td_target_terminal_stops_bootstrap_and_double_dqn_uses_online_argmax():
    r = torch.tensor([1.0, 1.0, 0.5])
    term = torch.tensor([1.0, 0.0, 0.0])
    q_target = torch.tensor([[5.0, 3.0], [2.0, 4.0], [6.0, 1.0]])
    assert torch.allclose(td_target(r, term, q_target, 0.9), torch.tensor([1.0, 1 + 0.9 * 4, 0.5 + 0.9 * 6]))
    q_online = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 9.0]])  # picks actions 1, 0, 1
    assert torch.allclose(td_target(r, term, q_target, 0.9, q_online), torch.tensor([1.0, 1 + 0.9 * 2, 0.5 + 0.9 * 1]))


def test_dqn_stores_truncation_as_bootstrapped_and_termination_as_terminal():
    gamma = 0.9
    # always "stay": the time limit truncates every episode after 3 steps
    task = chain_task("dqn", 0, gamma=gamma, eps_start=0.0, eps_end=0.0, learning_starts=10**6)
    obs = task.reset_envs(0)
    for _ in range(4):
        obs = task.explore(obs)
    b = {k: v[:len(task.buffer)] for k, v in task.buffer.t.items()}
    assert len(task.buffer) == 8 and b["actions"].eq(0).all()
    # step 3 (rows 4, 5) truncated: the stored next obs is the true last one [0, 3], not the reset [0, 0]
    assert torch.equal(b["next_obs"][4:6], torch.tensor([[0.0, 3.0], [0.0, 3.0]]))
    assert b["terminated"].eq(0).all()
    assert torch.equal(torch.as_tensor(obs), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))  # a new episode goes on
    y = td_target(b["rewards"], b["terminated"], task.target(b["next_obs"]), gamma)
    assert torch.allclose(y[4:6], torch.full((2,), gamma * 10.0))  # bootstraps from Q(last obs) = 10
    assert task.stats.lengths == [3, 3] and task.stats.returns == [0.0, 0.0]

    # always "move": position 2 is reached at step 2, a real terminal state
    task = chain_task("dqn", 1, gamma=gamma, eps_start=0.0, eps_end=0.0, learning_starts=10**6)
    obs = task.reset_envs(0)
    for _ in range(2):
        obs = task.explore(obs)
    b = {k: v[:len(task.buffer)] for k, v in task.buffer.t.items()}
    assert torch.equal(b["terminated"], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.equal(b["next_obs"][2:], torch.tensor([[2.0, 2.0], [2.0, 2.0]]))
    y = td_target(b["rewards"], b["terminated"], task.target(b["next_obs"]), gamma)
    assert torch.allclose(y[2:], torch.ones(2))  # reward only, no bootstrap
    assert torch.allclose(y[:2], torch.full((2,), gamma * 10.0))


@pytest.mark.parametrize("action,expected", [(0, "truncated"), (1, "terminated")])
def test_ppo_bootstraps_truncation_but_not_termination(action, expected):
    gamma, c = 0.9, 2.0
    task = chain_task("ppo", action, gamma=gamma, gae_lambda=0.0, n_steps=4)
    critic = [m for m in task.policy.critic.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        critic.weight.zero_()
        critic.bias.fill_(c)  # V = c everywhere
    _, ro = task.collect(task.reset_envs(0))
    adv = ro.advantages.reshape(4, 2)[:, 0]  # lambda 0: A_t = r_t + gamma V(s') (1 - done) - V(s)
    continuing = gamma * c - c
    if expected == "truncated":  # steps 0, 1, 2 (cut by the time limit) and 3 all look like a continuing episode
        assert torch.allclose(adv, torch.full((4,), continuing))
    else:  # step 1 reaches the goal: reward 1 and nothing after it
        assert torch.allclose(adv, torch.tensor([continuing, 1.0 - c, continuing, 1.0 - c]))


def test_ppo_clipped_objective_on_hand_made_numbers():
    ratio = torch.tensor([1.5, 0.5, 1.1, 0.7])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    logp = ratio.log().requires_grad_(True)
    loss, r = clipped_surrogate(logp, torch.zeros(4), adv, clip=0.2)
    # min(r A, clip(r) A) = [1.2 (clipped), 0.5, -1.1, -0.8 (clipped)] -> loss = -mean = 0.05
    assert loss.item() == pytest.approx(0.05, abs=1e-6)
    assert torch.allclose(r, ratio)
    loss.backward()
    # clipped terms give no gradient; the others d(-r A / 4)/d logp = -r A / 4
    assert torch.allclose(logp.grad, torch.tensor([0.0, -0.125, 0.275, 0.0]), atol=1e-6)


def test_value_loss_clipped_and_unclipped():
    v, old, ret = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]), torch.zeros(2)
    assert value_loss(v, old, ret).item() == pytest.approx((1 + 9) / 2)
    # clipped values [1.5, 2.5] -> errors [2.25, 6.25]; the maxima [2.25, 9] average to 5.625
    assert value_loss(v, old, ret, clip=0.5).item() == pytest.approx(5.625)


def test_obs_norm_matches_numpy_over_all_batches_and_is_saved():
    g = np.random.default_rng(0)
    batches = [g.normal(3.0, 2.0, size=(n, 3)) for n in (5, 17, 1, 40)]
    norm = ObsNorm((3,), enabled=True)
    for b in batches:
        norm.update(torch.as_tensor(b))
    allx = np.concatenate(batches)
    np.testing.assert_allclose(norm.mean.numpy(), allx.mean(0), rtol=1e-6)
    np.testing.assert_allclose(norm.var.numpy(), allx.var(0), rtol=1e-6)
    z = norm(torch.as_tensor(allx, dtype=torch.float32))
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-4)
    assert {"mean", "var", "count"} <= set(norm.state_dict())
    off = ObsNorm((3,), enabled=False)
    off.update(torch.ones(4, 3))
    assert torch.equal(off(torch.ones(2, 3)), torch.ones(2, 3)) and off.count.item() < 1


def test_replay_buffer_wraps_and_round_trips():
    buf = ReplayBuffer(5, (2,))
    for i in range(3):  # 6 transitions into 5 slots
        buf.add(np.full((2, 2), i), np.array([i, i]), np.array([1.0, 2.0]), np.zeros((2, 2)), np.array([0.0, 1.0]))
    assert len(buf) == 5 and buf.pos == 1
    assert buf.t["obs"][0, 0] == 2  # the oldest transition was overwritten
    copy = ReplayBuffer(5, (2,))
    copy.load_state_dict(buf.state_dict())
    for k in buf.t:
        assert torch.equal(copy.t[k], buf.t[k])
    assert set(buf.sample(7)) == set(buf.t) and buf.sample(7)["obs"].shape == (7, 2)


# --- the engine: exact resume -------------------------------------------------------------------




TINY = {
    "ppo": ["env.num_envs=2", "env.steps_per_epoch=64", "rl.n_steps=16", "rl.update_epochs=2",
            "train.batch_size=16"],
    "dqn": ["env.num_envs=2", "env.steps_per_epoch=64", "rl.learning_starts=40", "rl.train_freq=8",
            "rl.gradient_steps=2", "rl.target_update=3", "train.batch_size=16", "rl.buffer_size=1000"],
}


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_resume_equals_uninterrupted(algo, tmp_path, monkeypatch):
    cfg = load_config(f"cartpole-{algo}", TINY[algo] + ["train.epochs=3", "env.val_episodes=1", "env.eval_episodes=2",
                                                         "train.log_every=1"])
    per_epoch = TASKS.get(algo)(cfg, Runtime(device="cpu")).steps_per_epoch
    # dies in the second epoch, after the first checkpoint
    ref, resumed = interrupted_and_resumed(cfg, tmp_path, monkeypatch, per_epoch + 1)
    a, b = load_weights(ref.run_dir / "model.safetensors"), load_weights(resumed.run_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def lines(path):  # everything but wall-clock figures
        return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in RunDir(path).read_metrics()]

    assert lines(ref.run_dir) == lines(resumed.run_dir)
    assert ref["eval/return_mean"] == resumed["eval/return_mean"]
    epochs = [r for r in RunDir(ref.run_dir).read_metrics() if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert {"rollout/episodes", "perf/sps", "val/return_mean"} <= epochs[0].keys()
    assert any(k.startswith("train/") for k in epochs[-1])


# --- CLI ---------------------------------------------------------------------------------------

SMOKE = {
    "cartpole-ppo": TINY["ppo"],
    "cartpole-dqn": TINY["dqn"],
    "acrobot-ppo": TINY["ppo"] + ["rl.n_steps=32"],
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(SMOKE))
def test_recipe_smoke_train_eval_play(recipe, run_cli, tmp_path):
    sets = [a for s in SMOKE[recipe] + ["train.epochs=2", "env.val_episodes=1", "env.eval_episodes=2"]
            for a in ("--set", s)]
    r = run_cli("train", recipe, *sets, "--run-dir", "run", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "eval/return_mean" in r.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["eval/episodes"] == 2 and "eval/return_std" in summary
    assert summary["expect"]["eval/return_mean"]["value"] == summary["eval/return_mean"]
    assert summary["samples_per_second"] > 0 and summary["epochs"] == 2
    epochs = [m for m in RunDir(tmp_path / "run").read_metrics() if "epoch" in m]
    for m in epochs:  # episodic statistics exactly when episodes finished (Acrobot's take 500 steps at first)
        assert ("rollout/return" in m) == (m["rollout/episodes"] > 0)
    assert recipe.startswith("acrobot") or epochs[-1]["rollout/episodes"] > 0
    r = run_cli("eval", "run", "--episodes", "3", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["eval/episodes"] == 3 and m["eval/return_mean"] == pytest.approx(m["eval/return_mean"])
    if recipe == "cartpole-ppo":  # a GIF of one episode, from rgb_array frames
        r = run_cli("play", "run", "--gif", "episode.gif", "--max-steps", "30")
        assert r.returncode == 0, r.stderr
        from PIL import Image

        steps = int(r.stdout.split(" in ")[1].split()[0])
        with Image.open(tmp_path / "episode.gif") as im:
            assert im.n_frames >= 2 and im.size[0] > 0
            total = 0  # PIL merges repeated frames, so count their durations (20 ms each at CartPole's 50 fps)
            for i in range(im.n_frames):
                im.seek(i)
                total += im.info["duration"]
        assert total == 20 * (steps + 1)  # the first frame plus one per step


@pytest.mark.parametrize("env_id,needles", [
    ("CartPol-v1", ["Unknown environment 'CartPol-v1'", "Did you mean 'CartPole-v1'", "Acrobot-v1", "discrete"]),
    ("Pendulum-v1", ["Pendulum-v1", "Box action space", "Discrete", "CartPole-v1"]),
])
def test_bad_environment_exit_2_listing_what_works(env_id, needles, run_cli):
    r = run_cli("train", "cartpole-ppo", "--set", f"env.id={env_id}", "--run-dir", "run")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr


def test_eval_episodes_and_play_need_an_rl_run(tmp_path, capsys):
    from deepstep.cli import main

    cfg = load_config("cartpole-ppo", TINY["ppo"] + ["train.epochs=1", "env.val_episodes=0", "env.eval_episodes=1"])
    run_mod.train(cfg, tmp_path / "rl", verbose=0)
    assert main(["eval", str(tmp_path / "rl"), "--episodes", "0"]) == 2
    assert "--episodes 0 must be at least 1" in capsys.readouterr().err
    assert main(["play", str(tmp_path / "rl"), "--gif", "x.png"]) == 2
    assert "must end in .gif" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "rl"), "x.npy"]) == 2
    assert "reinforcement-learning run" in capsys.readouterr().err
