"""Deep Q-Network (Mnih et al. 2015, Nature 518:529) with the Double DQN target (van Hasselt et al.
2016, arXiv:1509.06461) as an option.

One item of the loop is `rl.train_freq` environment steps with epsilon-greedy actions (epsilon
decays linearly from `rl.eps_start` to `rl.eps_end` over `rl.eps_fraction` of all training
steps), stored in a replay buffer; its `train_step` then makes `rl.gradient_steps` updates on
uniform batches of `train.batch_size`: Huber loss between Q(s, a) and the TD target computed with
the target network, which is updated every `rl.target_update` gradient steps (a hard copy, or
Polyak averaging with `rl.tau` < 1). No update happens before the buffer holds
`rl.learning_starts` transitions; those warm-up steps count towards the next item.

The buffer is part of the checkpoint when `rl.save_buffer` is true (exact resume); otherwise a
resumed run refills it from scratch before updating again.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...config import RunConfig
from ...engine.optim import Optimization
from ...engine.runtime import Runtime, unwrap
from ...models.policy import ObsNorm, QNetwork
from ...registry import TASKS
from .buffers import ReplayBuffer
from .common import RLTask, final_obs


def td_target(rewards: torch.Tensor, terminated: torch.Tensor, next_q_target: torch.Tensor, gamma: float,
              next_q_online: torch.Tensor | None = None) -> torch.Tensor:
    """r + gamma * (1 - terminated) * Q_target(s', a'), a' = argmax Q_target(s') (DQN) or
    argmax Q_online(s') when `next_q_online` is given (Double DQN). Shapes: (B,), (B,), (B, A)."""
    pick = next_q_target if next_q_online is None else next_q_online
    next_v = next_q_target.gather(1, pick.argmax(1, keepdim=True)).squeeze(1)
    return rewards + gamma * (1.0 - terminated) * next_v


@dataclass
class Collected:
    """What `batches` yields: environment steps collected since the previous item."""

    steps: int


@TASKS.register("dqn", tags=("play",))
class DQN(RLTask):
    """Deep Q-Network (optionally Double DQN) on a Gymnasium environment with discrete actions (env.id)."""

    def __init__(self, cfg: RunConfig, runtime: Runtime):
        super().__init__(cfg, runtime)
        rl, n = cfg.rl, cfg.env.num_envs
        q = QNetwork(self.build(self.n_actions), ObsNorm(self.obs_shape, cfg.env.normalize_obs))
        self.q = runtime.module(q)  # every forward under the runtime's precision
        self.policy = self.q
        self.target = runtime.module(copy.deepcopy(q).requires_grad_(False).eval(), ddp=False)
        self.buffer = ReplayBuffer(rl.buffer_size, self.obs_shape)
        self.vec_steps = math.ceil(rl.train_freq / n)  # vector steps per item
        self.steps_per_epoch = math.ceil(cfg.env.steps_per_epoch / (self.vec_steps * n))  # items
        self.total_steps = cfg.train.epochs * self.steps_per_epoch * self.vec_steps * n
        self.opt = Optimization(self.q.parameters(), cfg.optim, cfg.sched, self.steps_per_epoch * rl.gradient_steps,
                                cfg.train.epochs, cfg.train.grad_clip, cfg.train.grad_accum)
        self.env_steps = 0  # over the whole run: drives epsilon
        self.grad_steps = 0

    def modules(self) -> dict:
        return {"q": unwrap(self.q)}

    def epsilon(self) -> float:
        rl = self.rl
        frac = min(1.0, self.env_steps / max(1.0, rl.eps_fraction * self.total_steps))
        return rl.eps_start + frac * (rl.eps_end - rl.eps_start)

    def batches(self, epoch: int):
        obs = self.reset_envs(epoch)
        pending = 0
        for _ in range(self.steps_per_epoch):
            for _ in range(self.vec_steps):
                obs = self.explore(obs)
            pending += self.vec_steps * self.envs.num_envs
            if len(self.buffer) >= self.rl.learning_starts:
                yield Collected(pending)
                pending = 0
        if pending:  # an epoch of warm-up only: count its steps
            yield Collected(pending)
        self.done_collecting()

    @torch.no_grad()
    def explore(self, obs: np.ndarray) -> np.ndarray:
        """One epsilon-greedy vector step; store its transitions. Returns the next observations."""
        n = self.envs.num_envs
        o = self.obs_tensor(obs)
        self.q.obs_norm.update(o)
        rand = np.random.random(n) < self.epsilon()  # NumPy's global generator: checkpointed
        if rand.all():
            actions = np.random.randint(self.n_actions, size=n)
        else:
            actions = self.q(o).argmax(1).cpu().numpy()
            if rand.any():
                actions[rand] = np.random.randint(self.n_actions, size=int(rand.sum()))
        next_obs, r, term, trunc, info = self.envs.step(actions + self.action_start)
        ended = term | trunc
        # store the true last observation of finished episodes; only termination stops bootstrapping
        real_next = final_obs(next_obs, info, ended) if ended.any() else next_obs
        self.buffer.add(obs, actions, r, real_next, term)
        self.stats.track(r, ended)
        self.env_steps += n
        self._steps += n
        return next_obs

    def train_step(self, item: Collected) -> dict:
        rl = self.rl
        if len(self.buffer) < rl.learning_starts:
            return {}
        loss_sum, q_sum = torch.zeros(()), torch.zeros(())
        for _ in range(rl.gradient_steps):
            b = self.buffer.sample(self.cfg.train.batch_size, self.rt.device)
            with torch.no_grad():
                online = self.q(b["next_obs"]).float() if rl.double else None
                y = td_target(b["rewards"], b["terminated"], self.target(b["next_obs"]).float(), rl.gamma, online)
            q = self.q(b["obs"]).float().gather(1, b["actions"][:, None]).squeeze(1)
            loss = F.smooth_l1_loss(q, y)  # Huber
            self.opt.step(loss)
            self.grad_steps += 1
            if self.grad_steps % rl.target_update == 0:
                self.update_target()
            loss_sum += loss.detach().cpu()
            q_sum += q.detach().mean().cpu()
        return {"train/loss": loss_sum / rl.gradient_steps, "train/q": q_sum / rl.gradient_steps}

    @torch.no_grad()
    def update_target(self) -> None:
        tau = self.rl.tau
        for t, s in zip(unwrap(self.target).state_dict().values(), unwrap(self.q).state_dict().values()):
            if tau >= 1.0 or not t.is_floating_point() or t.dtype == torch.float64:
                t.copy_(s)  # hard copy; observation statistics are always copied
            else:
                t.lerp_(s, tau)

    def end_epoch(self, logs: dict) -> None:
        super().end_epoch(logs)
        logs["rollout/epsilon"] = round(self.epsilon(), 4)

    def state_dict(self) -> dict:
        return {"q": unwrap(self.q).state_dict(), "target": unwrap(self.target).state_dict(), "opt": self.opt.state_dict(),
                "env_steps": self.env_steps, "grad_steps": self.grad_steps,
                "buffer": self.buffer.state_dict() if self.rl.save_buffer else {}}

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.q).load_state_dict(state["q"])
        unwrap(self.target).load_state_dict(state["target"])
        self.opt.load_state_dict(state["opt"])
        self.env_steps, self.grad_steps = state["env_steps"], state["grad_steps"]
        if state["buffer"]:
            self.buffer.load_state_dict(state["buffer"])

