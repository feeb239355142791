"""Optimizers, learning-rate schedules, gradient accumulation and clipping (engine/optim.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deepstep.config import OptimConfig, SchedConfig
from deepstep.engine.optim import Optimization, build_optimizer
from deepstep.errors import UserError

BASE = 0.1


def test_optimizers_build_with_their_settings():
    w = [nn.Parameter(torch.zeros(3))]
    sgd = build_optimizer(w, OptimConfig(name="sgd", lr=0.5, momentum=0.8, nesterov=True, weight_decay=1e-3))
    assert isinstance(sgd, torch.optim.SGD)
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.5, 0.8, True, 1e-3)
    plain = build_optimizer(w, OptimConfig(name="sgd", momentum=0.0, nesterov=True))  # nesterov needs momentum
    assert plain.param_groups[0]["nesterov"] is False
    adam = build_optimizer(w, OptimConfig(name="adam", betas=[0.5, 0.9], eps=1e-6))
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["betas"] == (0.5, 0.9)
    adamw = build_optimizer(w, OptimConfig(name="adamw", weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.05
    rms = build_optimizer(w, OptimConfig(name="rmsprop", alpha=0.9, momentum=0.5))
    assert isinstance(rms, torch.optim.RMSprop)
    assert (rms.param_groups[0]["alpha"], rms.param_groups[0]["momentum"]) == (0.9, 0.5)


def test_frozen_parameters_are_skipped():
    net = nn.Linear(2, 2)
    net.bias.requires_grad_(False)
    opt = build_optimizer(net.parameters(), OptimConfig())
    assert [p for g in opt.param_groups for p in g["params"]] == [net.weight]


def test_unknown_optimizer_and_schedule_are_user_errors():
    with pytest.raises(UserError, match="Unknown optimizer 'adma'.*'adam'"):
        OptimConfig(name="adma")
    with pytest.raises(UserError, match="Unknown schedule 'cosin'.*'cosine'"):
        SchedConfig(name="cosin")


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_every_optimizer_reduces_a_quadratic(name):
    w = nn.Parameter(torch.tensor([3.0, -2.0]))
    opt = Optimization([w], OptimConfig(name=name, lr=0.05), SchedConfig(), 1, 1)
    for _ in range(50):
        opt.step((w ** 2).sum())
    assert (w ** 2).sum().item() < 0.5 * 13.0


def lr_trace(sched: SchedConfig, spe=10, epochs=5, metrics=None, accum=1, name="sgd"):
    """The rate used by each optimizer step, plus the rate left after the last one."""
    w = nn.Parameter(torch.zeros(1))
    opt = Optimization([w], OptimConfig(name=name, lr=BASE), sched, spe, epochs, grad_accum=accum,
                       monitor_mode="max")
    used = []
    for e in range(epochs):
        for _ in range(spe):
            if opt.micro == 0:
                used.append(opt.lr)
            opt.step((w - 1).pow(2).sum())
        opt.end_epoch(None if metrics is None else metrics[e])
    return used, opt.lr


def test_constant_with_warmup_ramps_linearly():
    used, last = lr_trace(SchedConfig(name="constant", warmup_epochs=1))
    assert used[:10] == pytest.approx([BASE * (i + 1) / 10 for i in range(10)])
    assert used[10:] == pytest.approx([BASE] * 40) and last == pytest.approx(BASE)
    assert lr_trace(SchedConfig())[0] == [BASE] * 50  # no schedule at all


def test_step_multiplies_by_gamma():
    used, _ = lr_trace(SchedConfig(name="step", step_epochs=2, gamma=0.1))
    assert used[0] == used[19] == pytest.approx(BASE)
    assert used[20] == used[39] == pytest.approx(BASE * 0.1)
    assert used[40] == pytest.approx(BASE * 0.01)


def test_cosine_ends_at_min_lr():
    used, last = lr_trace(SchedConfig(name="cosine", min_lr=1e-3))
    assert used[0] == pytest.approx(BASE)
    assert used[25] == pytest.approx(1e-3 + (BASE - 1e-3) * 0.5)  # half way: the mean of peak and floor
    assert all(a > b for a, b in zip(used, used[1:]))
    assert last == pytest.approx(1e-3)


def test_cosine_after_warmup():
    used, last = lr_trace(SchedConfig(name="cosine", warmup_epochs=1))
    assert used[0] == pytest.approx(BASE / 10) and used[9] == pytest.approx(BASE)
    assert used[10] == pytest.approx(BASE)  # the decay starts after the warm-up
    assert used[30] == pytest.approx(BASE * 0.5 * (1 + math.cos(math.pi * 20 / 40)))
    assert last == pytest.approx(0.0, abs=1e-12)


def test_onecycle_peaks_after_warmup_and_ends_at_min_lr():
    used, _ = lr_trace(SchedConfig(name="onecycle", warmup_epochs=1, min_lr=1e-4))
    assert used[0] == pytest.approx(BASE / 25)
    peak = max(range(len(used)), key=used.__getitem__)
    assert used[peak] == pytest.approx(BASE) and 8 <= peak <= 10  # warm-up: 1 of 5 epochs
    assert all(a > b for a, b in zip(used[peak:], used[peak + 1:]))
    assert used[-1] == pytest.approx(1e-4, rel=1e-3)  # the last step runs at min_lr


def test_plateau_reduces_after_patience():
    # val/acc improves for 2 epochs, then stalls; patience 2 allows 2 stalled epochs (torch's rule)
    scores = [0.5, 0.6, 0.6, 0.55, 0.6, 0.6, 0.6, 0.6]
    used, last = lr_trace(SchedConfig(name="plateau", patience=2, factor=0.5), spe=2, epochs=8, metrics=scores)
    per_epoch = used[::2]
    assert per_epoch[:5] == pytest.approx([BASE] * 5)
    assert per_epoch[5:] == pytest.approx([BASE / 2] * 3)  # cut after the 3rd stalled epoch (epoch 5)
    assert last == pytest.approx(BASE / 4)  # and again after 3 more


def test_plateau_warmup_then_reduction():
    used, last = lr_trace(SchedConfig(name="plateau", warmup_epochs=1, patience=0, factor=0.1), spe=4, epochs=3,
                          metrics=[0.5, 0.4, 0.3])
    assert used[:4] == pytest.approx([BASE / 4, BASE / 2, BASE * 3 / 4, BASE])
    assert used[4:8] == pytest.approx([BASE] * 4)  # epoch 1 set the first best: no cut
    assert used[8:] == pytest.approx([BASE / 10] * 4)  # epoch 2 was worse: cut at once (patience 0)
    assert last == pytest.approx(BASE / 100)


@pytest.mark.parametrize("sched", [
    SchedConfig(name="step", step_epochs=1, gamma=0.5, warmup_epochs=0.5),
    SchedConfig(name="cosine", warmup_epochs=1, min_lr=1e-3),
    SchedConfig(name="onecycle"),
    SchedConfig(name="plateau", patience=0, warmup_epochs=1),
])
def test_schedule_state_round_trips(sched):
    """An Optimization rebuilt from its state_dict continues with the same rates and updates."""
    def make():
        torch.manual_seed(0)
        net = nn.Linear(3, 1)
        return net, Optimization(net.parameters(), OptimConfig(name="adam", lr=BASE), sched, 4, 4, grad_accum=3)

    x, y = torch.randn(8, 3), torch.randn(8, 1)

    def epoch(net, opt, metric):
        for _ in range(4):
            opt.step(nn.functional.mse_loss(net(x), y))
        opt.end_epoch(metric)
        return opt.lr

    a_net, a = make()
    b_net, b = make()
    for e in range(2):
        epoch(a_net, a, 0.5 - 0.1 * e)
        epoch(b_net, b, 0.5 - 0.1 * e)
    c_net, c = make()
    c_net.load_state_dict(b_net.state_dict())
    c.load_state_dict(b.state_dict())
    for _ in range(2):
        assert epoch(a_net, a, 0.5) == epoch(c_net, c, 0.5)
    for pa, pc in zip(a_net.parameters(), c_net.parameters()):
        assert torch.equal(pa, pc)


def test_grad_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    k, b = 4, 8
    x, y = torch.randn(3, k * b, 5), torch.randn(3, k * b, 1)  # 3 optimizer steps' worth of data

    def trained(accum: int):
        torch.manual_seed(1)
        net = nn.Linear(5, 1)
        opt = Optimization(net.parameters(), OptimConfig(name="sgd", lr=0.1, momentum=0.9), SchedConfig(),
                           3 * accum, 1, grad_accum=accum)
        for s in range(3):
            before = net.weight.detach().clone()
            for xb, yb in zip(x[s].split(k * b // accum), y[s].split(k * b // accum)):
                opt.step(nn.functional.mse_loss(net(xb), yb))
                if opt.micro:  # mid-accumulation: no update yet
                    assert torch.equal(net.weight, before)
        assert opt.steps == 3
        return net

    big, small = trained(1), trained(k)
    for p, q in zip(big.parameters(), small.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_partial_accumulation_is_applied_at_epoch_end():
    """5 batches with grad_accum 2 make 3 optimizer steps per epoch: the last one averages 1 batch."""
    torch.manual_seed(0)
    x, y = torch.randn(5, 4, 3), torch.randn(5, 4, 1)

    def make(accum: int, sched: SchedConfig | None = None):
        torch.manual_seed(1)
        net = nn.Linear(3, 1)
        return net, Optimization(net.parameters(), OptimConfig(name="sgd", lr=0.1, momentum=0.0),
                                 sched or SchedConfig(), 5, 2,
                                 grad_accum=accum)

    net, opt = make(2)
    ref, ref_opt = make(1)
    for _ in range(2):  # the leftover batch must not leak into the next epoch's first step
        for i in range(5):
            opt.step(nn.functional.mse_loss(net(x[i]), y[i]))
        opt.end_epoch()
        assert opt.micro == 0
        for g in ([0, 1], [2, 3], [4]):  # the same updates by hand
            ref_opt.step(nn.functional.mse_loss(ref(x[g].flatten(0, 1)), y[g].flatten(0, 1)))
    assert opt.steps == 6
    for p, q in zip(net.parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    # schedules count ceil(5 / 2) = 3 optimizer steps per epoch: cosine ends exactly at the end
    net, opt = make(2, SchedConfig(name="cosine", min_lr=1e-3))
    for _ in range(2):
        for i in range(5):
            opt.step(nn.functional.mse_loss(net(x[i]), y[i]))
        opt.end_epoch()
    assert opt.lr == pytest.approx(1e-3)


def test_clipping_bounds_the_global_norm():
    torch.manual_seed(0)
    x, y = torch.randn(16, 4) * 10, torch.randn(16, 2) * 10

    def update(clip: float):
        torch.manual_seed(1)
        net = nn.Linear(4, 2)
        before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
        # plain SGD with lr 1: the update is minus the (clipped) gradient
        opt = Optimization(net.parameters(), OptimConfig(name="sgd", lr=1.0, momentum=0.0), SchedConfig(), 1, 1,
                           grad_clip=clip)
        opt.step(nn.functional.mse_loss(net(x), y))
        return before - torch.cat([p.detach().flatten() for p in net.parameters()])

    raw = update(0.0)
    assert raw.norm() > 5  # a large gradient
    clipped = update(1.0)
    assert clipped.norm().item() == pytest.approx(1.0, rel=1e-4)
    assert torch.allclose(clipped, raw / raw.norm(), atol=1e-5)  # same direction
    assert torch.allclose(update(raw.norm().item() * 2), raw, atol=1e-5)  # under the bound: untouched


def _quadratic_run(lookahead: int, steps: int, start=None):
    """SGD on a noisy quadratic; `start` = (step, optimizer state, weights, RNG state) resumes there
    with a fresh optimizer. Returns the weights, the optimizer and the RNG state after `steps`."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.tensor([3.0, -2.0]))
    opt = Optimization([w], OptimConfig(name="sgd", lr=0.1, momentum=0.9, lookahead=lookahead), SchedConfig(), 10, 2)
    first = 0
    if start is not None:
        first, state, weights, rng = start
        opt.load_state_dict(state)
        w.data.copy_(weights)
        torch.set_rng_state(rng)
    for _ in range(first, steps):
        opt.step(((w - 1) ** 2).sum() + 0.1 * torch.randn(()) * w.sum())
    return w, opt, torch.get_rng_state()

def test_lookahead_follows_airbench_and_ends_on_the_slow_weights():
    # by hand: every 5 steps slow <- slow + (1 - d)(fast - slow), d = 0.95**5 * (t / T)**3, fast <- slow
    torch.manual_seed(0)
    w = nn.Parameter(torch.tensor([3.0, -2.0]))
    sgd = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    slow = w.detach().clone()
    for t in range(1, 21):
        loss = ((w - 1) ** 2).sum() + 0.1 * torch.randn(()) * w.sum()
        loss.backward()
        sgd.step()
        sgd.zero_grad()
        if t % 5 == 0:
            d = 0.95 ** 5 * (t / 20) ** 3
            slow += (1 - d) * (w.detach() - slow)
            w.data.copy_(slow)
    w_la, opt, _ = _quadratic_run(5, 20)
    assert torch.allclose(w_la, w, atol=1e-6)
    assert torch.equal(w_la.detach(), opt.slow[0])  # the run ends on the slow weights
    plain, _, _ = _quadratic_run(0, 20)
    assert not torch.allclose(plain, w_la)  # it changed something


def test_lookahead_resumes_exactly():
    whole, _, _ = _quadratic_run(5, 20)
    w7, half, rng = _quadratic_run(5, 7)  # stopped between two Lookahead updates
    state = half.state_dict()
    assert "lookahead" in state
    resumed, _, _ = _quadratic_run(5, 20, start=(7, state, w7.detach().clone(), rng))
    assert torch.equal(resumed, whole)
    state["lookahead"] = [t + 1 for t in state["lookahead"]]  # the slow weights are part of the state
    other, _, _ = _quadratic_run(5, 20, start=(7, state, w7.detach().clone(), rng))
    assert not torch.equal(other, whole)

def test_lookahead_needs_its_state_to_resume():
    w = [nn.Parameter(torch.zeros(2))]
    plain = Optimization(w, OptimConfig(name="sgd", lr=0.1), SchedConfig(), 10, 1)
    la = Optimization(w, OptimConfig(name="sgd", lr=0.1, lookahead=5), SchedConfig(), 10, 1)
    with pytest.raises(UserError, match="optim.lookahead"):
        la.load_state_dict(plain.state_dict())


def test_lookahead_averages_batch_norm_statistics_with_the_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = Optimization(net.parameters(), OptimConfig(name="sgd", lr=0.1, lookahead=5), SchedConfig(), 10, 1,
                       buffers=net.buffers())
    assert len(opt.slow) == 4 + 2  # weight, bias, BN weight and bias; running mean and variance
    for _ in range(9):  # stops after a Lookahead update and 4 fast steps: the statistics moved on
        opt.step(net(torch.randn(8, 3) + 2).pow(2).mean())
    bn = net[1]
    assert not torch.equal(bn.running_mean, opt.slow[4])
    opt.step(net(torch.randn(8, 3) + 2).pow(2).mean())  # the last step: everything ends on the slow copy
    assert torch.equal(bn.running_mean, opt.slow[4]) and torch.equal(bn.running_var, opt.slow[5])
