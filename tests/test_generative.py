"""Autoencoders and the VAE: every generative model's forward/backward/shape (the registry
promise, which tests/test_models.py leaves to this file), oracle tests of the Gaussian KL and the
ELBO against independent computations, the task's guards, and 1-epoch CLI runs of each recipe."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

import deepstep
from conftest import interrupted_and_resumed, write_idx_set
from deepstep import run as run_mod
from deepstep.config import load_config
from deepstep.engine.checkpoint import load_weights
from deepstep.engine.runtime import Runtime
from deepstep.errors import UserError
from deepstep.models.autoencoder import VAE, is_generative
from deepstep.models.gan import is_gan  # GANs are tested in tests/test_gan.py
from deepstep.models.layers import create_model
from deepstep.registry import MODELS, TASKS
from deepstep.tasks.generative import corrupt, gaussian_kl, neg_elbo_terms

GENERATIVE = [n for n in MODELS.names() if is_generative(n) and not is_gan(n)]
SHAPES = [(1, 28, 28), (1, 8, 8)]
SMALL = {"ae-mlp": {"hidden": [16], "latent_dim": 4}, "ae-conv": {"channels": [4, 8], "latent_dim": 4},
         "vae-mlp": {"hidden": [16], "latent_dim": 3}, "vae-conv": {"channels": [4, 8], "latent_dim": 3}}


def test_the_generative_models_are_registered_and_marked():
    assert {"ae-mlp", "ae-conv", "vae-mlp", "vae-conv"} <= set(GENERATIVE)
    assert not is_generative("mlp")


@pytest.mark.parametrize("name", GENERATIVE)
@pytest.mark.parametrize("shape", SHAPES)
def test_generative_model_forward_backward_shapes(name, shape):
    torch.manual_seed(0)
    model = create_model(name, shape, 7, **SMALL.get(name, {}))  # 7: the ignored class count
    x = torch.rand(4, *shape)
    if isinstance(model, VAE):
        logits, mu, logvar = model(x)
        assert mu.shape == logvar.shape == (4, model.latent_dim)
        assert model.encode(x)[0].shape == (4, model.latent_dim)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, x) + gaussian_kl(mu, logvar).mean()
        out = logits
    else:
        out = model(x)
        assert ((out >= 0) & (out <= 1)).all(), "autoencoder outputs are sigmoid probabilities"
        z = model.encode(x)
        assert z.ndim == 2 and z.shape[0] == 4
        assert torch.equal(model.decode(z), out)
        loss = nn.functional.binary_cross_entropy(out, x)
    assert out.shape == x.shape
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"parameter {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_guide_autoencoder_is_784_256_64_mirrored():
    model = create_model("ae-mlp", (1, 28, 28), 10)
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert shapes == [(784, 256), (256, 64), (64, 256), (256, 784)]


def test_vae_sample_is_images_in_unit_interval():
    model = create_model("vae-mlp", (1, 8, 8), 10, hidden=[16], latent_dim=3)
    g = torch.Generator().manual_seed(0)
    s = model.sample(5, generator=g)
    assert s.shape == (5, 1, 8, 8) and ((s > 0) & (s < 1)).all()
    assert torch.equal(s, model.sample(5, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("name", ["ae-conv", "vae-conv"])
def test_conv_models_reject_sizes_they_cannot_rebuild(name):
    with pytest.raises(UserError, match=rf"'{name}'.*divisible by 4.*10x10"):
        create_model(name, (1, 10, 10), 10)


def test_gaussian_kl_matches_torch_distributions_and_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    std = torch.exp(0.5 * logvar)
    ours = gaussian_kl(mu, logvar)
    ref = kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    # Monte Carlo: E_q[log q(z) - log p(z)] with 200,000 samples
    q = Normal(mu.double(), std.double())
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1).mean(0)
    assert torch.allclose(ours.double(), mc, atol=0.03), (ours, mc)
    assert torch.allclose(gaussian_kl(torch.zeros(2, 4), torch.zeros(2, 4)), torch.zeros(2))


def test_elbo_of_a_tiny_vae_matches_a_direct_computation():
    torch.manual_seed(0)
    model = create_model("vae-mlp", (1, 2, 2), 0, hidden=[], latent_dim=2).double()
    x = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]], [[[1.0, 1.0], [0.0, 0.25]]]], dtype=torch.double)
    eps = torch.randn(2, 2, dtype=torch.double)
    recon, kl = neg_elbo_terms(model, x, eps)
    # by hand: the weights read directly, distributions from torch.distributions
    flat = x.reshape(2, 4)
    mu = flat @ model.mu.weight.T + model.mu.bias
    std = torch.exp(0.5 * (flat @ model.logvar.weight.T + model.logvar.bias))
    z = mu + std * eps
    (dec,) = [m for m in model.decoder if isinstance(m, nn.Linear)]
    logits = z @ dec.weight.T + dec.bias
    p = torch.sigmoid(logits)
    direct_recon = -(flat * torch.log(p) + (1 - flat) * torch.log(1 - p)).sum(1)
    torch.testing.assert_close(recon, direct_recon)
    torch.testing.assert_close(kl, kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(1))
    # and -ELBO = E_q[-log p(x|z) - log p(z) + log q(z|x)], estimated with 100,000 samples
    q = Normal(mu, std)
    zs = q.sample((100_000,))  # (S, B, D)
    lz = zs @ dec.weight.T + dec.bias  # (S, B, 4) logits
    log_px = (flat * nn.functional.logsigmoid(lz) + (1 - flat) * nn.functional.logsigmoid(-lz)).sum(-1)
    mc = (-log_px - Normal(0.0, 1.0).log_prob(zs).sum(-1) + q.log_prob(zs).sum(-1)).mean(0)
    # our terms averaged over 20,000 draws of eps per example (x repeated along the batch)
    recon_s, kl_s = neg_elbo_terms(model, x.repeat(20_000, 1, 1, 1), torch.randn(40_000, 2, dtype=torch.double))
    ours = (recon_s + kl_s).reshape(20_000, 2).mean(0)
    torch.testing.assert_close(ours, mc, atol=0.05, rtol=0.0)


def test_corrupt_gaussian_and_masking():
    torch.manual_seed(0)
    x = torch.full((200, 1, 8, 8), 0.5)
    assert torch.equal(corrupt(x, "", 0.3), x)
    g = corrupt(x, "gaussian", 0.2)
    assert ((g >= 0) & (g <= 1)).all() and abs((g - x).std().item() - 0.2) < 0.02
    m = corrupt(x, "masking", 0.3)
    dropped = (m == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.03 and torch.equal(m[m != 0], x[m != 0])


def _task(recipe, *overrides):
    cfg = load_config(recipe, ["data.limit=200", *overrides])
    return TASKS.get(cfg.task)(cfg, Runtime(device="cpu", seed=0))


def test_vae_evaluation_is_repeatable_and_leaves_the_global_rng_alone():
    task = _task("digits-vae")
    state = torch.get_rng_state()
    first = task.evaluate("val")
    assert torch.equal(state, torch.get_rng_state())
    assert first == task.evaluate("val")
    assert first["val/neg_elbo"] == pytest.approx(first["val/recon"] + first["val/kl"])
    assert first["val/kl"] > 0
    test = task.evaluate("test")
    assert 0 < test["test/nll"] < test["test/neg_elbo"]


@pytest.mark.parametrize("overrides,needles", [
    (["model.name=mlp"], ["needs an autoencoder or VAE model", "'mlp'", "vae-mlp"]),
    (["data.normalize=true"], ["data.normalize = false"]),
    (["data.name=mnist1d", "model.name=ae-conv"], ["(C, H, W)"]),
])
def test_task_guards_give_user_errors(overrides, needles):
    with pytest.raises(UserError) as e:
        _task("digits-ae", *overrides)
    for needle in needles:
        assert needle in str(e.value)


def test_bad_noise_is_a_user_error():
    with pytest.raises(UserError, match="Unknown noise 'salt'"):
        load_config("digits-ae", ["gen.noise=salt"])


SRC = str(Path(deepstep.__file__).resolve().parents[1])


@pytest.mark.parametrize("recipe,extra,metric", [
    ("digits-ae", ["gen.noise=masking"], "test/recon_loss"),
    ("digits-vae", ["gen.beta=0.5"], "test/neg_elbo"),
    ("fashion-ae", ["model.name=ae-conv"], "test/recon_loss"),
    ("fashion-dae", [], "test/recon_loss"),
    ("fashion-vae", ["model.name=vae-conv"], "test/neg_elbo"),
])
def test_recipe_trains_one_epoch_from_the_cli(recipe, extra, metric, tmp_path):
    sets = ["data.limit=300", "train.epochs=1", *extra]
    if recipe.startswith("fashion"):  # small random 28x28 IDX files: no dependence on the data package
        write_idx_set(tmp_path / "idx", n_train=200, n_test=20, size=28)
        sets.append(f"data.path={tmp_path / 'idx'}")
    args = [sys.executable, "-m", "deepstep", "train", recipe, "--run-dir", str(tmp_path / "run"), "--quiet"]
    for s in sets:
        args += ["--set", s]
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert math.isfinite(summary[metric]) and summary[metric] > 0
    if metric == "test/neg_elbo":
        assert summary["test/neg_elbo"] == pytest.approx(summary["test/recon"] + summary["test/kl"])




@pytest.mark.parametrize("recipe,extra", [("digits-vae", []), ("digits-ae", ["gen.noise=gaussian"])])
def test_resume_equals_uninterrupted(recipe, extra, tmp_path, monkeypatch):
    """The step draws random numbers (posterior samples, input noise): a resumed run still
    continues exactly."""
    cfg = load_config(recipe, ["data.limit=300", "train.epochs=3", "train.threads=0", *extra])
    per_epoch = TASKS.get(cfg.task)(cfg, Runtime(device="cpu")).steps_per_epoch
    # dies in the second epoch, after the first checkpoint
    ref, resumed = interrupted_and_resumed(cfg, tmp_path, monkeypatch, per_epoch + 2)
    a, b = load_weights(ref.run_dir / "model.safetensors"), load_weights(resumed.run_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    key = "test/neg_elbo" if cfg.task == "vae" else "test/recon_loss"
    assert ref[key] == resumed[key]


@pytest.mark.parametrize("recipe", ["digits-ae", "digits-vae"])
def test_eval_repeats_test_metrics_and_predict_scores_noise_as_anomalous(recipe, tmp_path, capsys):
    import numpy as np
    from sklearn.datasets import load_digits

    from deepstep.cli import main
    from deepstep.tasks.generative import anomaly_scores

    cfg = load_config(recipe, ["train.epochs=5", "train.threads=0"])
    res = run_mod.train(cfg, tmp_path / "run", verbose=0)
    key = "test/neg_elbo" if cfg.task == "vae" else "test/recon_loss"
    assert run_mod.load_run(tmp_path / "run").evaluate()[key] == res[key]
    import matplotlib.image

    pictures = ["reconstructions.png"] + (["samples.png"] if cfg.task == "vae" else [])
    for name in pictures:  # 8 rows of 8 digits (8x8 pixels, 1-pixel gaps)
        img = matplotlib.image.imread(tmp_path / "run" / name)
        assert img.shape[:2] == (8 * 9 - 1, 8 * 9 - 1) and img[..., 0].std() > 0.1, name
    assert not (tmp_path / "run" / "samples.png").exists() or cfg.task == "vae"
    scatter = matplotlib.image.imread(tmp_path / "run" / "latent.png")
    assert scatter.shape[0] > 100 and scatter[..., :3].std() > 0.05
    digits = (load_digits().images[:50] / 16.0).astype(np.float32)[:, None]
    noise = np.random.default_rng(0).random(digits.shape, dtype=np.float32)
    model = run_mod.load_run(tmp_path / "run").model()
    assert anomaly_scores(model, noise).min() > anomaly_scores(model, digits).max()
    np.save(tmp_path / "x.npy", np.concatenate([digits[:1], noise[:1]]))
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "x.npy"), "--json"]) == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [ln["input"].endswith(s) for ln, s in zip(lines, ("[0]", "[1]"))] == [True, True]
    assert lines[0]["anomaly_score"] < lines[1]["anomaly_score"]
    # each input's reconstruction is written beside it: input left, reconstruction right
    for ln in lines:
        pair = matplotlib.image.imread(ln["reconstruction"])
        assert pair.shape[:2] == (8, 2 * 9 - 1) and Path(ln["reconstruction"]).parent == tmp_path / "run" / "predictions"
    sampled = main(["sample", str(tmp_path / "run"), "--n", "4", "--out", str(tmp_path / "s.png")])
    assert sampled == (0 if cfg.task == "vae" else 2)  # an autoencoder has no prior to sample from
    if cfg.task == "vae":
        assert (tmp_path / "run" / "interpolation.png").is_file()
        assert 1 <= res["samples/class_coverage"] <= 10 and res["samples/frechet"] > 0


def test_importance_sampled_nll_matches_numerical_integration():
    """A VAE with a 1-D latent: log p(x) = log of the integral of p(x|z) N(z; 0, 1) dz, computed on a grid."""
    from deepstep.tasks.generative import importance_nll

    torch.manual_seed(0)
    model = create_model("vae-mlp", (1, 1, 3), 0, hidden=[], latent_dim=1).double()
    with torch.no_grad():  # q wider than the prior: importance weights of finite variance, a fair check
        model.logvar.weight.zero_()
        model.logvar.bias.fill_(0.5)
    x = torch.tensor([[[[1.0, 0.0, 1.0]]], [[[0.0, 0.0, 1.0]]]], dtype=torch.double)
    z = torch.linspace(-12, 12, 48_001, dtype=torch.double)[:, None]  # (G, 1)
    p = torch.sigmoid(model.decode(z)).reshape(-1, 3)  # (G, 3)
    flat = x.reshape(2, 1, 3)
    log_px_z = (flat * p.log() + (1 - flat) * (1 - p).log()).sum(-1)  # (2, G)
    log_prior = Normal(0.0, 1.0).log_prob(z[:, 0])
    exact = -torch.logsumexp(log_px_z + log_prior, 1) - math.log(z[1, 0] - z[0, 0])  # rectangle rule
    g = torch.Generator().manual_seed(0)
    estimate = importance_nll(model, x, 100_000, g)
    torch.testing.assert_close(estimate, exact, atol=5e-3, rtol=0.0)
    # one sample is the ELBO bound: on average no better than many samples
    one = torch.stack([importance_nll(model, x, 1, g) for _ in range(2000)]).mean(0)
    recon, kl = neg_elbo_terms(model, x.repeat(4000, 1, 1, 1), torch.randn(8000, 1, generator=g, dtype=torch.double))
    torch.testing.assert_close(one, (recon + kl).reshape(4000, 2).mean(0), atol=0.1, rtol=0.0)
    assert (one > estimate).all()


def test_denoising_autoencoder_rebuilds_masked_digits_better_than_a_plain_one(tmp_path):
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().images[-300:] / 16.0, dtype=torch.float32)[:, None]
    torch.manual_seed(1)
    masked = corrupt(x, "masking", 0.4)
    loss = {}
    for noise in ("", "masking"):
        cfg = load_config("digits-ae", ["train.epochs=20", "train.threads=0", f"gen.noise={noise}",
                                        "gen.noise_level=0.4"])
        run_mod.train(cfg, tmp_path / (noise or "plain"), verbose=0)
        model = run_mod.load_run(tmp_path / (noise or "plain")).model()
        with torch.no_grad():
            loss[noise] = F.binary_cross_entropy(model(masked), x, reduction="none").flatten(1).sum(1).mean().item()
    assert loss["masking"] < loss[""] - 0.5, loss  # measured: 21.5 vs 22.7 nats


def test_gaussian_decoder_nll_matches_torch_distributions_and_trains():
    from deepstep.tasks.generative import decoder_nll

    torch.manual_seed(0)
    logits, x = torch.randn(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    ref = -Normal(torch.sigmoid(logits), 0.2).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(decoder_nll(logits, x, "gaussian", 0.2), ref)
    ref = -torch.distributions.Bernoulli(logits=logits).log_prob((x > 0.5).float()).flatten(1).sum(1)
    torch.testing.assert_close(decoder_nll(logits, (x > 0.5).float()), ref)
    task = _task("digits-vae", "gen.decoder=gaussian", "gen.sigma=0.2", "gen.nll_samples=20")
    before = task.evaluate("test")
    for batch in task.batches(0):
        task.train_step(batch)
    after = task.evaluate("test")
    assert after["test/neg_elbo"] < before["test/neg_elbo"]
    assert after["test/nll"] < after["test/neg_elbo"]
    with pytest.raises(UserError, match="Unknown decoder 'poisson'"):
        load_config("digits-vae", ["gen.decoder=poisson"])
