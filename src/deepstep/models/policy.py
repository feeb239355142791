"""Policies and value functions for reinforcement learning (CURRICULUM row 12). Plain nn.Modules
that know nothing about training: DQN and PPO live in tasks/rl/.

Their bodies are registered models (`[model]` of a recipe, e.g. `mlp` with hidden [64, 64] and
tanh), built with the number of actions (or 1, for a state value) as output size, so any model
of the registry that reads the observation shape can serve. Observation normalization is a
module here (buffers), so it is saved with the weights and applied by `act` at evaluation.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ObsNorm(nn.Module):
    """Running mean and variance of observations (parallel-variance merge of Chan et al., 1979);
    `update` while collecting experience, `forward` normalizes and clips to +-`clip`. Disabled,
    it is the identity (its buffers are still saved, so weights files always have one layout)."""

    def __init__(self, shape: tuple[int, ...], enabled: bool = False, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.enabled, self.clip, self.eps = enabled, clip, eps
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(eps, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:  # x: (B, *shape)
        if not self.enabled:
            return
        x = x.double()
        n, mean, var = x.shape[0], x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + var * n + delta.pow(2) * self.count * n / total) / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        z = (x - self.mean.float()) / (self.var.float() + self.eps).sqrt()
        return z.clamp(-self.clip, self.clip)


def orthogonal_init(net: nn.Module, last_gain: float) -> None:
    """Orthogonal weights (gain sqrt(2), last layer `last_gain`) and zero biases, as in the PPO
    implementation studies (Engstrom et al. 2020, Andrychowicz et al. 2021)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    for i, m in enumerate(linears):
        nn.init.orthogonal_(m.weight, last_gain if i == len(linears) - 1 else math.sqrt(2))
        nn.init.zeros_(m.bias)


class ActorCritic(nn.Module):
    """A categorical policy and a state-value function with separate bodies (PPO, Schulman et al.
    2017). Methods on raw observations: `act`, `value`; the task's fast paths use `normalize` once
    and then `heads` on normalized inputs (PPO stores normalized observations in its rollouts).

    Args:
        actor: observations (B, *obs) -> action logits (B, A).
        critic: observations (B, *obs) -> values (B, 1).
        obs_norm: observation normalizer shared by both.
    """

    def __init__(self, actor: nn.Module, critic: nn.Module, obs_norm: ObsNorm, ortho_init: bool = True):
        super().__init__()
        self.actor, self.critic, self.obs_norm = actor, critic, obs_norm
        if ortho_init:
            orthogonal_init(actor, 0.01)  # near-uniform first policy
            orthogonal_init(critic, 1.0)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return self.obs_norm(obs)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized observations (B, *obs) -> logits (B, A), values (B,)."""
        return self.actor(x), self.critic(x).squeeze(-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(self.obs_norm(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Actions (B,) for raw observations: the most likely action, or a sample."""
        logits = self.actor(self.obs_norm(obs))
        if deterministic:
            return logits.argmax(-1)
        return torch.multinomial(logits.softmax(-1), 1).squeeze(1)

    @torch.no_grad()
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """State values (B,) for raw observations."""
        return self.critic(self.obs_norm(obs)).squeeze(-1)


class QNetwork(nn.Module):
    """Action values Q(s, .) for a discrete action space (DQN, Mnih et al. 2015).

    Args:
        net: observations (B, *obs) -> Q values (B, A).
        obs_norm: observation normalizer applied first.
    """

    def __init__(self, net: nn.Module, obs_norm: ObsNorm):
        super().__init__()
        self.net, self.obs_norm = net, obs_norm

    def forward(self, obs: torch.Tensor) -> torch.Tensor:  # (B, *obs) -> (B, A)
        return self.net(self.obs_norm(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Greedy actions (B,); exploration (epsilon-greedy) is the algorithm's business."""
        return self.forward(obs).argmax(-1)
