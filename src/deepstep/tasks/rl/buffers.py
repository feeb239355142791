"""Experience storage: the replay buffer of DQN and generalized advantage estimation for PPO's
rollouts."""

from __future__ import annotations

import numpy as np
import torch


class ReplayBuffer:
    """A ring buffer of transitions (obs, action, reward, next_obs, terminated).

    `next_obs` is the true next observation, also when the episode ended (the environment's last
    observation, not the reset one), and `terminated` is 1 only for a real terminal state: a
    time-limit truncation stores 0, so its target still bootstraps from `next_obs`.
    Storage is torch tensors (CPU) with NumPy views for cheap writes from the environments.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...]):
        self.capacity, self.pos, self.size = capacity, 0, 0
        self.t = {"obs": torch.zeros(capacity, *obs_shape), "next_obs": torch.zeros(capacity, *obs_shape),
                  "actions": torch.zeros(capacity, dtype=torch.int64), "rewards": torch.zeros(capacity),
                  "terminated": torch.zeros(capacity)}
        self.np = {k: v.numpy() for k, v in self.t.items()}

    def __len__(self) -> int:
        return self.size

    def add(self, obs, actions, rewards, next_obs, terminated) -> None:
        """Append a batch of n transitions (arrays with a leading dimension n)."""
        n = len(actions)
        idx = (self.pos + np.arange(n)) % self.capacity
        for key, value in (("obs", obs), ("actions", actions), ("rewards", rewards), ("next_obs", next_obs),
                           ("terminated", terminated)):
            self.np[key][idx] = value
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """A uniform batch with replacement (torch's global generator, so it is checkpointed)."""
        idx = torch.randint(self.size, (batch,))
        return {k: v[idx].to(device) for k, v in self.t.items()}

    def state_dict(self) -> dict:
        return {"pos": self.pos, "size": self.size, **{k: v[:self.size].clone() for k, v in self.t.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = state["pos"], state["size"]
        for k, v in self.t.items():
            v[:self.size] = state[k]


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016), backwards over time.

    Args:
        rewards, values, dones: (T, N); dones[t] = 1 when the episode ended at step t, so the
            observation after it starts a new episode (a time-limit truncation is done too: its
            bootstrap value is already folded into rewards[t]).
        last_value: (N,) value of the observation after the last step.
    Returns:
        advantages (T, N) and returns = advantages + values (the value targets).
    """
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    next_value = last_value
    for t in range(rewards.shape[0] - 1, -1, -1):
        live = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * live - values[t]  # one-step TD error
        running = delta + gamma * lam * live * running
        adv[t] = running
        next_value = values[t]
    return adv, adv + values
