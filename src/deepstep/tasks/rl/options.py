"""The `[env]` and `[rl]` sections of the reinforcement-learning tasks (dqn, ppo): declared here,
beside the tasks that read them, and registered with them (config.register_section), so a run of
another task has neither (`deepstep options --task ppo`)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import opt, register_section
from ...errors import UserError


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
    ent_coef: float = opt(0.0, "ppo: weight of the entropy bonus", ">= 0")
    vf_coef: float = opt(0.5, "ppo: weight of the value loss", ">= 0")
    norm_adv: bool = opt(True, "ppo: normalize advantages in each minibatch")
    buffer_size: int = opt(100000, "dqn: replay buffer capacity (transitions)")
    learning_starts: int = opt(1000, "dqn: transitions in the buffer before the first update", ">= 0")
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


register_section("env", EnvConfig, tasks=("dqn", "ppo"))
register_section("rl", RLConfig, tasks=("dqn", "ppo"))
