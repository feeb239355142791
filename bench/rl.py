"""PPO on CartPole-v1: deepstep's `cartpole-ppo` recipe against Stable-Baselines3's PPO with the
RL Baselines3 Zoo hyperparameters for CartPole-v1 (8 envs, n_steps 32, batch 256, gae_lambda 0.8,
gamma 0.98, n_epochs 20, ent_coef 0, learning rate linear from 1e-3, clip range linear from 0.2,
1e5 steps; MlpPolicy = 64-64 tanh, separate actor and critic, Adam eps 1e-5, max grad norm 0.5).

The measure is the training wall time until the greedy policy's mean return over 20 evaluation
episodes reaches 475. Both are evaluated by the same function (bench-owned environments with
their own seeds, greedy actions) at the first rollout boundary after every `--eval-every`
environment steps, right after an update; the evaluation time is excluded from both clocks and
training stops at the threshold (or after `--steps`). Both use one torch thread. deepstep runs its
recipe through the engine's Loop with its own per-epoch validation switched off
(env.val_episodes=0), since the bench's evaluation plays that role for both.

Seeds alternate the order (SB3 first, then deepstep first, ...) so that load from other
processes hits both alike. The table shows seconds and environment steps to 475 per seed and the
ratio deepstep / SB3 of the median times (< 1: deepstep is faster), and the training speed in
milliseconds per 1000 environment steps (which does not depend on how many steps learning took).

    pip install 'deepstep[bench-rl]'         # stable-baselines3
    python bench/rl.py                       # seeds 0 1 2
    python bench/rl.py --seeds 0 --eval-every 2048
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from deepstep.config import load_config
from deepstep.engine.fit import fit
from deepstep.engine.plugin import Plugin
from deepstep.tasks.rl.common import make_vec, run_episodes, seeds

ENV, TARGET, EPISODES = "CartPole-v1", 475.0, 20


class Reached(Exception):
    """Raised inside training to stop it once the target is reached."""


class Clock:
    """Training wall time to the target, evaluation excluded. `check(steps, act)` is called at
    rollout boundaries."""

    def __init__(self, eval_every: int, seed: int):
        self.eval_every, self.next_eval = eval_every, eval_every
        self.envs = make_vec(ENV, EPISODES)
        self.seeds = seeds(seed, 7, 0, EPISODES)  # a stream neither trainer uses
        self.t0 = 0.0
        self.excluded = 0.0
        self.result = {"seconds": float("inf"), "steps": None, "evals": []}

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def check(self, steps: int, act) -> None:
        if steps < self.next_eval:
            return
        t = time.perf_counter()
        trained = t - self.t0 - self.excluded  # training time so far
        rets, _ = run_episodes(act, self.envs, self.seeds)
        self.excluded += time.perf_counter() - t
        while self.next_eval <= steps:
            self.next_eval += self.eval_every
        self.result["evals"].append((steps, float(rets.mean())))
        if rets.mean() >= TARGET:
            self.result.update(seconds=trained, steps=steps)
            raise Reached


def run_deepstep(seed: int, steps: int, eval_every: int) -> dict:
    clock = Clock(eval_every, seed)
    clock.start()  # set-up counts, as for SB3
    cfg = load_config("cartpole-ppo", [f"train.seed={seed}", "env.val_episodes=0"])
    rollout = cfg.rl.n_steps * cfg.env.num_envs
    per_epoch = -(-cfg.env.steps_per_epoch // rollout) * rollout
    epochs = min(-(-steps // per_epoch), cfg.train.epochs)
    cfg = load_config("cartpole-ppo", [f"train.seed={seed}", "env.val_episodes=0", f"train.epochs={epochs}"])

    class Check(Plugin):
        rank0_only = False

        def on_batch_end(self, run, step):
            clock.check(run.loop.state.samples, run.task.act)

    try:
        fit(cfg, plugins=[Check()], verbose=0)  # in memory, like SB3's learn()
    except Reached:
        pass
    return clock.result


def run_sb3(seed: int, steps: int, eval_every: int) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    clock = Clock(eval_every, seed)

    def act(obs):
        return model.predict(obs, deterministic=True)[0]

    class Check(BaseCallback):
        def _on_rollout_start(self) -> None:  # after the previous update
            clock.check(self.num_timesteps, act)

        def _on_training_end(self) -> None:
            try:
                clock.check(self.num_timesteps, act)
            except Reached:
                pass

        def _on_step(self) -> bool:
            return True

    def linear(start):
        return lambda progress_remaining: progress_remaining * start

    clock.start()
    env = make_vec_env(ENV, n_envs=8, seed=seed)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
                learning_rate=linear(1e-3), clip_range=linear(0.2), seed=seed, device="cpu", verbose=0)
    try:
        model.learn(total_timesteps=steps, callback=Check())
    except Reached:
        pass
    return clock.result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=100_000, help="environment steps at most")
    p.add_argument("--eval-every", type=int, default=4096, help="environment steps between evaluations")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for i, seed in enumerate(args.seeds):
        order = [("sb3", run_sb3), ("deepstep", run_deepstep)]
        out = {}
        for name, fn in order if i % 2 == 0 else order[::-1]:
            out[name] = fn(seed, args.steps, args.eval_every)
            r = out[name]
            print(f"seed {seed} {name:8s}: {r['seconds']:7.2f} s, {r['steps']} steps to {TARGET:g}; "
                  f"evals {[(s, round(v)) for s, v in r['evals']]}", flush=True)
        rows.append(out)
    print(f"\nPPO CartPole-v1, wall time to mean greedy return >= {TARGET:g} over {EPISODES} episodes "
          f"(evaluation excluded; 1 torch thread)")
    print(f"{'seed':>4}  {'SB3 s':>8}  {'deepstep s':>10}  {'SB3 steps':>9}  {'deepstep steps':>14}  "
          f"{'SB3 ms/1k steps':>15}  {'deepstep ms/1k steps':>20}")

    def per_k(r):  # training speed, independent of how many steps learning took
        return f"{1e6 * r['seconds'] / r['steps']:.0f}" if r["steps"] else "-"

    for seed, r in zip(args.seeds, rows):
        print(f"{seed:>4}  {r['sb3']['seconds']:8.2f}  {r['deepstep']['seconds']:10.2f}  {str(r['sb3']['steps']):>9}  "
              f"{str(r['deepstep']['steps']):>14}  {per_k(r['sb3']):>15}  {per_k(r['deepstep']):>20}")
    sb3 = statistics.median(r["sb3"]["seconds"] for r in rows)
    ds = statistics.median(r["deepstep"]["seconds"] for r in rows)
    ratio = ds / sb3 if np.isfinite(sb3) and sb3 > 0 else float("nan")
    print(f"median  SB3 {sb3:.2f} s  deepstep {ds:.2f} s  ratio deepstep/SB3 {ratio:.2f}")


if __name__ == "__main__":
    main()
