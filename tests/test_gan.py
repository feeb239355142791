"""GANs and the sample-quality metrics: model shapes, the two-optimizer step (the discriminator
is frozen during the generator's update), the Fréchet distance against SciPy and closed forms,
class coverage, exact resume, the task's guards and the CLI (train, sample, predict)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from conftest import interrupted_and_resumed, write_idx_set
from deepstep.config import load_config
from deepstep.engine.checkpoint import load_weights
from deepstep.engine.runtime import Runtime
from deepstep.errors import UserError
from deepstep.models.gan import is_gan
from deepstep.models.layers import create_model
from deepstep.registry import MODELS, TASKS
from deepstep.tasks.frechet import frechet_distance, gaussian_stats, sample_metrics

GANS = [n for n in MODELS.names() if is_gan(n)]


def test_the_gans_are_registered():
    assert {"gan-mlp", "dcgan"} <= set(GANS) and not is_gan("vae-mlp")


def test_guide_mlp_gan_layout():
    gan = create_model("gan-mlp", (1, 28, 28), 10)
    g = [tuple(p.shape) for p in gan.generator.parameters()]
    d = [tuple(p.shape) for p in gan.discriminator.parameters()]
    assert g == [(256, 100), (256,), (784, 256), (784,)]
    assert d == [(256, 784), (256,), (1, 256), (1,)]
    assert isinstance(gan.generator[-1], torch.nn.Tanh)
    assert gan.discriminator[2].negative_slope == 0.2


@pytest.mark.parametrize("name", GANS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32)])
@pytest.mark.parametrize("sn", [False, True])
def test_gan_shapes_gradients_and_sample_range(name, shape, sn):
    torch.manual_seed(0)
    gan = create_model(name, shape, 10, latent_dim=8, spectral_norm=sn, **({"width": 4} if name == "dcgan" else {}))
    z = gan.noise(3)
    fake = gan.generate(z)
    assert fake.shape == (3, *shape) and fake.abs().max() <= 1
    logits = gan(fake)
    assert logits.shape == (3, 1)
    logits.sum().backward()
    assert all(p.grad is not None for p in gan.parameters())
    s = gan.sample(5)
    assert s.shape == (5, *shape) and s.min() >= 0 and s.max() <= 1


def test_dcgan_rejects_image_sizes_it_cannot_produce():
    with pytest.raises(UserError, match="multiples of 4"):
        create_model("dcgan", (1, 30, 30), 10)
    with pytest.raises(UserError, match="generates images"):
        create_model("gan-mlp", (1, 40), 10)


# --- the Fréchet distance and class coverage ----------------------------------------------

def _reference_frechet(mu1, c1, mu2, c2):
    """The textbook formula with SciPy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))


def test_frechet_distance_matches_scipy_and_closed_forms():
    rng = np.random.default_rng(0)
    for d in (1, 3, 16):
        a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
        c1, c2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(_reference_frechet(mu1, c1, mu2, c2), rel=1e-8)
    # diagonal covariances: sum (sqrt(s1) - sqrt(s2))^2 + |mu1 - mu2|^2
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu = np.array([1.0, -2.0, 0.5])
    assert frechet_distance(mu, np.diag(s1), 0 * mu, np.diag(s2)) == pytest.approx(
        ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum() + (mu ** 2).sum())
    assert frechet_distance(mu, np.diag(s1), mu, np.diag(s1)) == pytest.approx(0.0, abs=1e-9)
    # sample statistics of two large Gaussian samples approach the distance of the Gaussians
    x = rng.normal(size=(200_000, 2)) * [1.0, 2.0]
    y = rng.normal(size=(200_000, 2)) * [3.0, 2.0] + [1.0, 0.0]
    assert frechet_distance(*gaussian_stats(x), *gaussian_stats(y)) == pytest.approx(4.0 + 1.0, rel=0.02)


class _StubNet:
    """Features are the flattened image; classes the image's mean rounded to a bin of 0.1."""

    num_classes = 10

    def features_and_classes(self, x):
        f = x.flatten(1).double().numpy()
        return f, np.minimum((x.flatten(1).mean(1) * 10).long().numpy(), 9)


def test_sample_metrics_coverage_and_zero_distance_to_itself():
    x = torch.arange(10).repeat_interleave(20).float().div(10).add(0.05).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    x = x + 0.01 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    same = sample_metrics(_StubNet(), x, x)
    assert same["samples/frechet"] == pytest.approx(0.0, abs=1e-8) and same["samples/class_coverage"] == 10
    collapsed = sample_metrics(_StubNet(), x, x[:1].expand(200, -1, -1, -1) + 0.01 * torch.rand(200, 1, 2, 2))
    assert collapsed["samples/class_coverage"] == 1 and collapsed["samples/frechet"] > 0.1


# --- the task -------------------------------------------------------------------------------

def _task(overrides=()):
    cfg = load_config("digits-gan", ["data.limit=200", "train.threads=0", "gen.eval_samples=0", *overrides])
    return TASKS.get("gan")(cfg, Runtime(device="cpu", seed=0))


def test_generator_step_leaves_the_discriminator_alone_and_d_steps_is_respected():
    task = _task(["gen.d_steps=2"])
    gan = task.model
    batch = next(iter(task.batches(0)))
    g0 = [p.clone() for p in gan.generator.parameters()]
    d0 = [p.clone() for p in gan.discriminator.parameters()]
    out = task.train_step(batch)  # batch 1: the discriminator only
    assert "gan/g_loss" not in out
    assert all(torch.equal(a, b) for a, b in zip(g0, gan.generator.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(d0, gan.discriminator.parameters()))
    d1 = [p.clone() for p in gan.discriminator.parameters()]
    out = task.train_step(batch)  # batch 2: discriminator, then generator
    assert "gan/g_loss" in out
    assert not all(torch.equal(a, b) for a, b in zip(g0, gan.generator.parameters()))
    # the generator's backward went through the discriminator without leaving gradients there
    assert all(p.grad is None for p in gan.discriminator.parameters())
    assert all(p.requires_grad for p in gan.discriminator.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(d1, gan.discriminator.parameters()))


def test_checkpoint_holds_both_networks_and_both_optimizers():
    task = _task()
    task.train_step(next(iter(task.batches(0))))
    state = task.state_dict()
    assert {"model", "opt_d", "opt_g", "n_batches"} <= set(state)
    assert any(k.startswith("generator.") for k in state["model"]) and any(
        k.startswith("discriminator.") for k in state["model"])
    assert state["opt_d"]["steps"] == state["opt_g"]["steps"] == 1


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = load_config("digits-gan", ["data.limit=300", "train.epochs=3", "train.threads=0", "gen.eval_samples=100"])
    per_epoch = TASKS.get(cfg.task)(cfg, Runtime(device="cpu")).steps_per_epoch
    ref, resumed = interrupted_and_resumed(cfg, tmp_path, monkeypatch, per_epoch + 2)
    a, b = load_weights(ref.run_dir / "model.safetensors"), load_weights(resumed.run_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ref["samples/frechet"] == resumed["samples/frechet"]


@pytest.mark.parametrize("overrides,needle", [
    (["model.name=mlp"], "needs a GAN model"),
    (["data.normalize=true"], "data.normalize = false"),
    (["data.name=mnist1d"], "generates images"),
])
def test_task_guards(overrides, needle):
    with pytest.raises(UserError, match=needle):
        _task(overrides)


def test_cli_train_sample_and_errors(run_cli, tmp_path):
    r = run_cli("train", "digits-gan", "--set", "train.epochs=2", "--set", "data.limit=300", "--run-dir", "run",
                timeout=300)
    assert r.returncode == 0, r.stderr
    assert "samples/frechet" in r.stdout and "samples/class_coverage" in r.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["samples/frechet"] > 0 and 1 <= summary["samples/class_coverage"] <= 10
    assert 0 < summary["samples/feature_net_acc"] <= 1
    for f in ("samples/epoch-001.png", "samples/epoch-002.png", "samples.png", "interpolation.png", "losses.png"):
        assert (tmp_path / "run" / f).is_file(), f
    r = run_cli("sample", "run", "--n", "12", "--cols", "4", "--out", "grid.png")
    assert r.returncode == 0, r.stderr
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "grid.png").shape[:2] == (3 * 9 - 1, 4 * 9 - 1)
    r = run_cli("predict", "run", "x.npy")
    assert r.returncode == 2 and "deepstep sample" in r.stderr
    r = run_cli("sample", "run", "--out", "grid.jpg")
    assert r.returncode == 2 and ".png" in r.stderr


def test_cli_gan_on_bad_data_exits_2(run_cli, tmp_path):
    write_idx_set(tmp_path / "idx", n_train=40, n_test=10, size=30)
    r = run_cli("train", "fashion-dcgan", "--set", f"data.path='{tmp_path / 'idx'}'", "--set", "train.epochs=1")
    assert r.returncode == 2 and "multiples of 4" in r.stderr and "30x30" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("train", "fashion-gan", "--set", "data.name=sunspots", "--set", "train.epochs=1")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
