"""Proximal Policy Optimization (Schulman et al. 2017, arXiv:1707.06347), discrete actions.

One item of the loop is one rollout: `rl.n_steps` steps of each of `env.num_envs` environments
with the current policy (collected lazily by the `batches` generator, so always on-policy), with
GAE advantages. Its `train_step` makes `rl.update_epochs` passes over the rollout in shuffled
minibatches of `train.batch_size`: clipped surrogate objective, clipped or unclipped value loss,
entropy bonus, per-minibatch advantage normalization; the learning-rate schedule (`[sched]`,
e.g. cosine to 0) and gradient-norm clipping (`train.grad_clip`) come from the engine's
`Optimization`. A time-limit truncation bootstraps: gamma * V(last observation) is added to
the last reward before GAE treats the step as the end of the episode.

Value loss is the mean squared error without a 1/2 (so `rl.vf_coef` = 0.5 means what it means in
Stable-Baselines3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ...config import RunConfig
from ...engine.optim import Optimization
from ...engine.runtime import Runtime, unwrap
from ...models.policy import ActorCritic, ObsNorm
from ...registry import TASKS
from .buffers import gae
from .common import RLTask, final_obs


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip: float):
    """PPO's policy loss -E[min(r A, clip(r, 1-c, 1+c) A)] with r = exp(logp - old_logp).
    Returns (loss, ratio)."""
    ratio = (logp - old_logp).exp()
    return -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean(), ratio


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float = 0.0):
    """Squared error to the returns; with clip > 0 the pessimistic maximum of the plain and the
    clipped (old value +- clip) errors, as in the PPO reference implementation."""
    err = (values - returns).pow(2)
    if clip > 0:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        err = torch.max(err, (clipped - returns).pow(2))
    return err.mean()


@dataclass
class Rollout:
    """One rollout flattened to B = n_steps * num_envs samples (observations already normalized)."""

    x: torch.Tensor  # (B, *obs)
    actions: torch.Tensor  # (B,)
    logp: torch.Tensor  # (B,)
    values: torch.Tensor  # (B,)
    advantages: torch.Tensor  # (B,)
    returns: torch.Tensor  # (B,)
    steps: int


@TASKS.register("ppo", tags=("play",))
class PPO(RLTask):
    """Proximal Policy Optimization on a Gymnasium environment with discrete actions (env.id)."""

    def __init__(self, cfg: RunConfig, runtime: Runtime):
        super().__init__(cfg, runtime)
        norm = ObsNorm(self.obs_shape, cfg.env.normalize_obs)
        # every forward (heads, normalize, act) under the runtime's precision
        self.policy = runtime.module(ActorCritic(self.build(self.n_actions), self.build(1), norm))
        n = cfg.env.num_envs
        self.rollout_size = cfg.rl.n_steps * n
        self.steps_per_epoch = math.ceil(cfg.env.steps_per_epoch / self.rollout_size)  # rollouts
        self.minibatch = min(cfg.train.batch_size, self.rollout_size)
        updates = self.steps_per_epoch * cfg.rl.update_epochs * math.ceil(self.rollout_size / self.minibatch)
        self.opt = Optimization(self.policy.parameters(), cfg.optim, cfg.sched, updates, cfg.train.epochs,
                                cfg.train.grad_clip, cfg.train.grad_accum)

    def modules(self) -> dict:
        return {"policy": unwrap(self.policy)}

    def batches(self, epoch: int):
        obs = self.reset_envs(epoch)
        for _ in range(self.steps_per_epoch):
            obs, rollout = self.collect(obs)
            yield rollout
        self.done_collecting()

    @torch.no_grad()
    def collect(self, obs: np.ndarray) -> tuple[np.ndarray, Rollout]:
        rl, p, dev = self.rl, self.policy, self.rt.device
        T, N = rl.n_steps, self.envs.num_envs
        xs = torch.zeros(T, N, *self.obs_shape, device=dev)
        actions = torch.zeros(T, N, dtype=torch.int64, device=dev)
        logps, values, rewards, dones = (torch.zeros(T, N, device=dev) for _ in range(4))
        for t in range(T):
            o = self.obs_tensor(obs)
            p.obs_norm.update(o)
            x = p.normalize(o)
            logits, v = (t.float() for t in p.heads(x))  # float32 losses under bf16 autocast
            logp_all = logits.log_softmax(-1)
            a = torch.multinomial(logp_all.exp(), 1)  # (N, 1)
            obs, r, term, trunc, info = self.envs.step(a.squeeze(1).cpu().numpy() + self.action_start)
            self.stats.track(r, term | trunc)
            cut = trunc & ~term
            if cut.any():  # time limit: the episode goes on in principle, so bootstrap its value
                last = self.obs_tensor(final_obs(obs, info, cut)[cut])
                r = r.astype(np.float64)  # a copy: the statistics above saw the raw reward
                r[cut] += rl.gamma * p.heads(p.normalize(last))[1].float().cpu().numpy()
            xs[t], actions[t], logps[t] = x, a.squeeze(1), logp_all.gather(1, a).squeeze(1)
            values[t], rewards[t] = v, torch.as_tensor(r, dtype=torch.float32)
            dones[t] = torch.as_tensor(term | trunc, dtype=torch.float32)
        last_value = p.heads(p.normalize(self.obs_tensor(obs)))[1].float()
        adv, ret = gae(rewards, values, dones, last_value, rl.gamma, rl.gae_lambda)
        self._steps += T * N
        flat = lambda t: t.reshape(T * N, *t.shape[2:])  # noqa: E731
        return obs, Rollout(flat(xs), flat(actions), flat(logps), flat(values), flat(adv), flat(ret), T * N)

    def train_step(self, ro: Rollout) -> dict:
        rl, p, mb = self.rl, self.policy, self.minibatch
        sums = torch.zeros(5)
        n = 0
        for _ in range(rl.update_epochs):
            perm = torch.randperm(ro.steps, device=ro.x.device)
            for i in range(0, ro.steps, mb):
                idx = perm[i:i + mb]
                logits, v = (t.float() for t in p.heads(ro.x[idx]))
                logp_all = logits.log_softmax(-1)
                logp = logp_all.gather(1, ro.actions[idx, None]).squeeze(1)
                entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
                adv = ro.advantages[idx]
                if rl.norm_adv and len(idx) > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg, ratio = clipped_surrogate(logp, ro.logp[idx], adv, rl.clip_range)
                vl = value_loss(v, ro.values[idx], ro.returns[idx], rl.value_clip)
                self.opt.step(pg + rl.vf_coef * vl - rl.ent_coef * entropy)
                with torch.no_grad():
                    log_ratio = logp - ro.logp[idx]
                    kl = ((ratio - 1) - log_ratio).mean()  # the low-variance estimator (Schulman, 2020)
                    clipped = ((ratio - 1).abs() > rl.clip_range).float().mean()
                    sums += torch.stack([pg, vl, entropy, kl, clipped]).detach().cpu()
                n += 1
        m = sums / n
        return {"train/policy_loss": m[0], "train/value_loss": m[1], "train/entropy": m[2],
                "train/approx_kl": m[3], "train/clip_frac": m[4]}

    def state_dict(self) -> dict:
        return {"policy": unwrap(self.policy).state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.policy).load_state_dict(state["policy"])
        self.opt.load_state_dict(state["opt"])

