"""What DQN and PPO share: Gymnasium environments (checked, flattened, vectorized), seeds,
episode statistics, deterministic evaluation, recording a GIF, and `RLTask`, the loop protocol's
plumbing for both.

An RL *epoch* is a fixed number of environment steps (`env.steps_per_epoch`, counted over all
parallel environments, rounded up to whole rollouts or updates). At the start of epoch e every
environment is reset with seeds derived from (train.seed, e), so episodes still running at the end
of an epoch are cut there (they count as neither finished nor terminal; PPO bootstraps them like a
time limit). That is what makes resume exact: environment state cannot be checkpointed in general,
but it need not be, because an epoch depends only on the checkpointed weights, optimizer, replay
buffer, counters and random generators plus (seed, epoch). Keep epochs much longer than episodes.

Evaluation is deterministic (greedy actions) in separate environments: `val` episodes after every
epoch (the monitor of best-weights restore) and `eval` episodes at the end, each with seeds of its
own stream, never the training seeds.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ...config import RunConfig
from ...engine.run import Inference, Run
from ...engine.runtime import Runtime, evaluating, unwrap
from ...errors import UserError, suggest
from ...models.layers import check_fits, create_model

# seed streams: SeedSequence([train.seed, STREAM, index]) gives each environment its seed
TRAIN, VAL, TEST, PLAY = 0, 1, 2, 3
EXAMPLES = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "LunarLander-v3", "FrozenLake-v1", "Taxi-v3",
            "CliffWalking-v1", "Blackjack-v1")
MAX_EPISODE_STEPS = 100_000  # evaluation guard for environments without a time limit


def gym():
    """The gymnasium module, or a UserError saying how to install it."""
    try:
        import gymnasium
    except ImportError:
        raise UserError("Reinforcement learning needs Gymnasium: pip install 'deepstep[rl]' "
                        "(or pip install 'gymnasium[classic-control]').") from None
    return gymnasium


def examples() -> str:
    g = gym()
    return ", ".join(e for e in EXAMPLES if e in g.registry)


def make_env(env_id: str, render_mode: str | None = None):
    """One environment with a discrete action space and a flat float observation (Discrete, Tuple
    and Dict observations are one-hot encoded / concatenated by FlattenObservation)."""
    g = gym()
    if env_id not in g.registry:
        raise UserError(
            f"Unknown environment '{env_id}'.{suggest(env_id, list(g.registry))} Supported: any registered "
            f"Gymnasium environment with a discrete action space, e.g. {examples()} "
            f"({len(g.registry)} ids are registered; gymnasium.pprint_registry() lists them)."
        )
    try:
        env = g.make(env_id, **({"render_mode": render_mode} if render_mode else {}))
    except g.error.Error as e:  # missing optional dependency (box2d, mujoco, ...), bad render mode
        raise UserError(f"Environment '{env_id}' cannot be created: {e}") from None
    if not isinstance(env.action_space, g.spaces.Discrete):
        kind = type(env.action_space).__name__
        env.close()
        raise UserError(
            f"Environment '{env_id}' has a {kind} action space ({env.action_space}); dqn and ppo support "
            f"Discrete action spaces only, e.g. {examples()}."
        )
    space = env.observation_space
    if not (isinstance(space, g.spaces.Box) and len(space.shape) == 1):
        try:
            g.spaces.flatdim(space)
        except (NotImplementedError, ValueError, TypeError):
            env.close()
            raise UserError(f"Environment '{env_id}' has an observation space ({space}) that cannot be "
                            f"flattened into a vector; use a Box, Discrete, Tuple or Dict space.") from None
        env = g.wrappers.FlattenObservation(env)
    return env


def env_spaces(env_id: str) -> tuple[tuple[int, ...], int, int]:
    """(observation shape, number of actions, first action index) of an environment id."""
    env = make_env(env_id)
    out = tuple(env.observation_space.shape), int(env.action_space.n), int(env.action_space.start)
    env.close()
    return out


def make_vec(env_id: str, n: int):
    """n environments stepped together; a finished episode resets in the same step, and its last
    observation is in info['final_obs'] (needed to bootstrap time-limit truncations)."""
    g = gym()
    return g.vector.SyncVectorEnv([functools.partial(make_env, env_id) for _ in range(n)],
                                  autoreset_mode=g.vector.AutoresetMode.SAME_STEP)


def seeds(seed: int, stream: int, index: int, n: int) -> list[int]:
    """n environment seeds for (train.seed, stream, index), independent across streams."""
    return [int(s) for s in np.random.SeedSequence([seed, stream, index]).generate_state(n)]


def final_obs(next_obs: np.ndarray, info: dict, mask: np.ndarray) -> np.ndarray:
    """`next_obs` with rows in `mask` replaced by the episode's true last observation (the vector
    env has already reset those environments)."""
    out = next_obs.copy()
    out[mask] = np.stack(info["final_obs"][mask])
    return out


class EpisodeStats:
    """Returns and lengths of the episodes that finish while collecting (per epoch)."""

    def __init__(self, n: int):
        self.ret, self.len = np.zeros(n), np.zeros(n, dtype=np.int64)
        self.returns: list[float] = []
        self.lengths: list[int] = []

    def reset(self) -> None:
        self.ret[:], self.len[:] = 0, 0
        self.returns, self.lengths = [], []

    def track(self, rewards: np.ndarray, done: np.ndarray) -> None:
        self.ret += rewards
        self.len += 1
        if done.any():
            self.returns += self.ret[done].tolist()
            self.lengths += self.len[done].tolist()
            self.ret[done], self.len[done] = 0, 0


def run_episodes(act: Callable[[np.ndarray], np.ndarray], envs, env_seeds: list[int], start: int = 0):
    """Play one episode per seed with `act` (observations (B, *obs) -> action indices (B,)) on
    the vector env `envs` (in chunks of its size). Returns (returns, lengths) as arrays."""
    rets, lens = [], []
    for i in range(0, len(env_seeds), envs.num_envs):
        chunk = env_seeds[i:i + envs.num_envs]
        obs, _ = envs.reset(seed=chunk + chunk[-1:] * (envs.num_envs - len(chunk)))
        ret, length = np.zeros(envs.num_envs), np.zeros(envs.num_envs, dtype=np.int64)
        active = np.arange(envs.num_envs) < len(chunk)
        while active.any() and length.max() < MAX_EPISODE_STEPS:
            obs, r, term, trunc, _ = envs.step(act(obs) + start)
            ret += np.where(active, r, 0.0)
            length += active
            active &= ~(term | trunc)
        rets += ret[:len(chunk)].tolist()
        lens += length[:len(chunk)].tolist()
    return np.array(rets), np.array(lens)


def save_gif(frames: list[np.ndarray], path: Path | str, fps: float) -> None:
    """RGB frames (H, W, 3) -> an animated GIF that loops."""
    from PIL import Image

    # a 64-colour palette per frame (fast octree, no dithering): ~5x faster than PIL's default
    images = [Image.fromarray(f).quantize(colors=64, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
              for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(20, round(1000 / fps)), loop=0)


class RLTask:
    """The loop protocol for DQN and PPO: environments, seeds, evaluation, per-epoch statistics.
    Subclasses set `self.policy` (a module with `act`, wrapped by `runtime.module`) and
    `steps_per_epoch`, and implement `batches`, `train_step`, `modules`, `state_dict` and
    `load_state_dict`."""

    @classmethod
    def prepare(cls, cfg: RunConfig, resuming: bool, verbose: int = 1) -> RunConfig:
        """Nothing to resolve before an RL task is built."""
        return cfg

    @classmethod
    def inference(cls, run: Run) -> Inference:
        """The greedy policy of a finished run: observations (B, *obs) -> action ids."""
        task = run.rebuild()
        policy = unwrap(task.policy)
        return Inference(policy, task.obs_tensor,
                         lambda out: out.argmax(-1).numpy() + task.action_start)

    def __init__(self, cfg: RunConfig, runtime: Runtime):
        if runtime.distributed:
            raise UserError(f"Task '{cfg.task}' runs in one process; start it without torchrun.")
        self.cfg, self.rt, self.env_cfg, self.rl = cfg, runtime, cfg.env, cfg.rl
        self.obs_shape, self.n_actions, self.action_start = env_spaces(cfg.env.id)
        self.envs = make_vec(cfg.env.id, cfg.env.num_envs)
        self._eval_envs = None
        self.stats = EpisodeStats(cfg.env.num_envs)
        self.has_val = cfg.env.val_episodes > 0
        self.meta = {"task": cfg.task, "kind": "env", "env_id": cfg.env.id, "obs_shape": list(self.obs_shape),
                     "num_actions": self.n_actions}
        self.sps = 0.0

    def build(self, out_features: int) -> torch.nn.Module:
        """A network from `[model]` mapping observations to `out_features` outputs."""
        kw = {k: v for k, v in self.cfg.model.items() if k != "name"}
        net = create_model(self.cfg.model["name"], self.obs_shape, out_features, **kw)
        check_fits(net, torch.zeros(2, *self.obs_shape), self.cfg.env.id)
        return net

    def obs_tensor(self, obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(obs, dtype=torch.float32, device=self.rt.device)

    def reset_envs(self, epoch: int) -> np.ndarray:
        """Start epoch `epoch`: fresh episodes from seeds of (train.seed, epoch); clear statistics."""
        self.stats.reset()
        self._t0, self._steps = time.perf_counter(), 0
        obs, _ = self.envs.reset(seed=seeds(self.cfg.train.seed, TRAIN, epoch, self.envs.num_envs))
        return obs

    def done_collecting(self) -> None:
        self.sps = self._steps / max(1e-9, time.perf_counter() - self._t0)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Greedy action indices for raw observations (B, *obs)."""
        return self.policy.act(self.obs_tensor(obs)).cpu().numpy()

    # --- the loop's protocol ---------------------------------------------------------------
    def train(self, mode: bool = True) -> None:
        for m in self.modules().values():
            m.train(mode)

    def samples_in(self, item) -> int:
        return item.steps

    def evaluate(self, split: str, episodes: int | None = None) -> dict:
        """`val`: env.val_episodes greedy episodes (val/*); `test`: env.eval_episodes (or `episodes`)
        in fresh environments with another seed stream (eval/*)."""
        if split == "val" and self.has_val:
            n, stream, prefix = self.env_cfg.val_episodes, VAL, "val"
        elif split == "test":
            n, stream, prefix = episodes or self.env_cfg.eval_episodes, TEST, "eval"
        else:
            return {}
        if self._eval_envs is None:
            self._eval_envs = make_vec(self.env_cfg.id, min(16, max(self.env_cfg.val_episodes, self.env_cfg.eval_episodes)))
        with evaluating(*self.modules().values()):
            rets, lens = run_episodes(self.act, self._eval_envs, seeds(self.cfg.train.seed, stream, 0, n),
                                      self.action_start)
        return {f"{prefix}/return_mean": float(rets.mean()), f"{prefix}/return_std": float(rets.std()),
                f"{prefix}/length_mean": float(lens.mean()), f"{prefix}/episodes": n}

    def end_epoch(self, logs: dict) -> None:
        self.opt.end_epoch()
        if self.stats.returns:
            logs["rollout/return"] = float(np.mean(self.stats.returns))
            logs["rollout/length"] = float(np.mean(self.stats.lengths))
        logs["rollout/episodes"] = len(self.stats.returns)
        logs["perf/sps"] = round(self.sps, 1)
        logs["lr"] = self.opt.lr

    def play(self, path: Path | str | None = None, seed: int = 0, max_steps: int = 10_000) -> dict:
        """One greedy episode in an environment rendering RGB frames; write them as a GIF to
        `path` (if given). Returns {return, length, frames}."""
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # off-screen frames; no display needed
        env = make_env(self.env_cfg.id, render_mode="rgb_array")
        obs, _ = env.reset(seed=seeds(seed, PLAY, 0, 1)[0])
        frames, ret, length = [env.render()], 0.0, 0
        if frames[0] is None:
            raise UserError(f"Environment '{self.env_cfg.id}' does not render RGB frames.")
        self.train(False)
        for _ in range(max_steps):
            action = int(self.act(np.asarray(obs)[None])[0]) + self.action_start
            obs, r, term, trunc, _ = env.step(action)
            ret, length = ret + float(r), length + 1
            frames.append(env.render())
            if term or trunc:
                break
        fps = env.metadata.get("render_fps") or 30
        env.close()
        if path is not None:
            save_gif(frames, path, fps)
        return {"return": ret, "length": length, "frames": len(frames)}
