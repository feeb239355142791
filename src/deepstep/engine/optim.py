"""Optimizers and learning-rate schedules from config, behind one `Optimization` object that a
task's step calls: backward, gradient accumulation, clipping, the optimizer step and the
per-step schedule. A GAN step simply owns two of them."""

from __future__ import annotations

import math

import torch

from ..config import OptimConfig, SchedConfig
from ..errors import UserError


def stage_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    """Parameter groups with discriminative learning rates. A model with stages exposes
    `param_groups()` -> [(name, params), ...] ordered from the input to the head; the head gets
    `cfg.lr` and each earlier stage `cfg.stage_lr_decay` once more (lr * decay**k, k stages before
    the head). Frozen parameters are left out, and a stage with none left has no group. Any other
    model, or stage_lr_decay = 1, is one group at `cfg.lr` (as before stages existed, so older
    checkpoints still resume)."""
    staged = hasattr(model, "param_groups") and cfg.stage_lr_decay != 1.0
    named = model.param_groups() if staged else [("all", list(model.parameters()))]
    n = len(named)
    groups = []
    for i, (name, params) in enumerate(named):
        params = [p for p in params if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": cfg.lr * cfg.stage_lr_decay ** (n - 1 - i), "name": name})
    return groups


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """An optimizer over `params`: parameters, or groups (dicts with `params` and `lr`, e.g. from
    `stage_groups`); frozen parameters are skipped."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
        params = [g for g in params if g["params"]]
    else:
        params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
    raise AssertionError(cfg.name)  # OptimConfig validated the name


def lr_multiplier(cfg: SchedConfig, base_lr: float, steps_per_epoch: int, epochs: int):
    """Step -> factor on the base rate, for constant, step, cosine and linear decay, each after a
    linear warm-up. cosine and linear head for min_lr, reached after the last step (linear: BERT's
    schedule, as Hugging Face's get_linear_schedule_with_warmup)."""
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    total = max(1, epochs * steps_per_epoch)
    floor = cfg.min_lr / base_lr

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.name == "step":
            return cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch))
        if cfg.name == "cosine":
            t = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        if cfg.name == "linear":
            t = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * (1 - t)
        return 1.0

    return factor, warm


class Optimization:
    """One optimizer with its schedule, accumulation and clipping.

    Args:
        params: parameters to optimize (frozen ones are skipped), or parameter groups with their
            own base rates (`stage_groups`); every schedule scales each group's rate by the same
            factor (one-cycle peaks at each group's rate).
        optim, sched: config sections.
        steps_per_epoch, epochs: for schedules measured in epochs.
        grad_clip: max global grad norm (0: off).
        grad_accum: batches per optimizer step.
        monitor_mode: 'max' or 'min', for the plateau schedule.
        buffers: the model's buffers, averaged with the parameters by `optim.lookahead`.
    """

    def __init__(self, params, optim: OptimConfig, sched: SchedConfig, steps_per_epoch: int, epochs: int,
                 grad_clip: float = 0.0, grad_accum: int = 1, monitor_mode: str = "max", buffers=()):
        self.optimizer = build_optimizer(params, optim)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.grad_clip = grad_clip
        self.grad_accum = grad_accum
        self.micro = 0
        opt_steps = math.ceil(steps_per_epoch / grad_accum)
        self.per_step = None  # scheduler stepped after every optimizer step
        self.per_epoch = None  # scheduler stepped with the monitored metric
        if sched.name == "onecycle":
            self.per_step = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=[g["lr"] for g in self.optimizer.param_groups], total_steps=max(2, opt_steps * epochs),
                pct_start=(sched.warmup_epochs / epochs) if sched.warmup_epochs else 0.3,
                final_div_factor=(optim.lr / 25 / sched.min_lr) if sched.min_lr else 1e4,
            )
        elif sched.name != "constant" or sched.warmup_epochs:
            factor, warm = lr_multiplier(sched, optim.lr, opt_steps, epochs)
            if sched.name == "plateau":
                self.warm_steps = warm
            self.per_step = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        if sched.name == "plateau":
            self.per_epoch = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode=monitor_mode, factor=sched.factor, patience=sched.patience)
        self.steps = 0
        self.total_steps = opt_steps * epochs
        self.lookahead = optim.lookahead
        # Lookahead averages the model's float buffers too (batch-norm statistics), as airbench does:
        # the run must not end on slow weights with the statistics of the fast ones
        self.averaged = [*self.params, *(b for b in buffers if b.is_floating_point())] if self.lookahead else []
        self.slow = [t.detach().clone() for t in self.averaged]

    def step(self, loss: torch.Tensor) -> None:
        """Backward `loss`; every `grad_accum` calls clip, step, zero grads and advance the schedule."""
        (loss / self.grad_accum if self.grad_accum > 1 else loss).backward()
        self.micro += 1
        if self.micro == self.grad_accum:
            self._update()

    def _update(self) -> None:
        self.micro = 0
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        if self.per_step is not None and (self.per_epoch is None or self.steps <= self.warm_steps):
            self.per_step.step()
        if self.lookahead:
            self._look_ahead()

    @torch.no_grad()
    def _look_ahead(self) -> None:
        """airbench's Lookahead: every k steps slow <- slow + (1 - d) (fast - slow) and fast <- slow,
        with d = 0.95**k * progress**3 (no averaging early on, strong late); after the last step
        of the run the trained weights become the slow ones."""
        k, last = self.lookahead, self.steps == self.total_steps
        if self.steps % k and not last:
            return
        fast = [t.detach() for t in self.averaged]
        if self.steps % k == 0:
            d = 0.95 ** k * min(1.0, self.steps / max(1, self.total_steps)) ** 3
            torch._foreach_lerp_(self.slow, fast, 1.0 - d)
        torch._foreach_copy_(fast, self.slow)

    def end_epoch(self, metric: float | None = None) -> None:
        """Apply gradients still accumulating from the epoch's last batches (as a mean over those
        batches), so that every epoch makes ceil(steps / grad_accum) optimizer steps as the schedule
        assumes; then step the plateau schedule with the monitored metric."""
        if self.micro:
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(self.grad_accum / self.micro)
            self._update()
        if self.per_epoch is not None and metric is not None:
            self.per_epoch.step(metric)

    @property
    def lr(self) -> float:
        """The current rate of the last group: the head's, with discriminative rates."""
        return self.optimizer.param_groups[-1]["lr"]

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "per_step": self.per_step.state_dict() if self.per_step is not None else {},
            "per_epoch": self.per_epoch.state_dict() if self.per_epoch is not None else {},
            "micro": self.micro,
            "steps": self.steps,
            **({"lookahead": [t.clone() for t in self.slow]} if self.lookahead else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.per_step is not None:
            self.per_step.load_state_dict(state["per_step"])
        if self.per_epoch is not None:
            self.per_epoch.load_state_dict(state["per_epoch"])
        self.micro, self.steps = state["micro"], state["steps"]
        if self.lookahead:
            if "lookahead" not in state:
                raise UserError("This checkpoint was written without optim.lookahead: resume it with optim.lookahead = 0.")
            for t, v in zip(self.slow, state["lookahead"]):
                t.copy_(v)
