"""Generative tasks on in-memory data in [0, 1]: `autoencode` (optionally denoising) and `vae`.

They reuse the supervised task's data setup (loading, seeded split stratified by label,
TensorData batches, the model's shape check, Optimization) by subclassing `Supervised`, and
replace only what one step means and what is measured. Labels are kept in the batches (for
later plots coloured by class) but never used by the losses.

Inputs must stay in [0, 1] — the decoders are Bernoulli (binary cross-entropy) — so these tasks
require `data.normalize = false` instead of silently ignoring it.

Metrics, in nats per example (summed over pixels, averaged over examples):
    autoencode: {split}/recon_loss, the binary cross-entropy of the reconstruction of the clean input.
    vae:        decoder p(x|z) Bernoulli (default) or Gaussian with mean sigmoid(output) and fixed
                sigma (gen.decoder, gen.sigma; a density, so its figures are not comparable with
                Bernoulli ones). {split}/neg_elbo = {split}/recon + {split}/kl, with one posterior sample per example
                drawn from a fixed-seed generator (evaluation is repeatable and leaves the global
                random state alone); beta weights the KL in training only. test/nll: -log p(x)
                estimated with gen.nll_samples importance samples (the same generator).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..engine.checkpoint import atomic_write
from ..engine.rundir import RunDir
from ..engine.runtime import Runtime, evaluating, unwrap
from ..errors import UserError
from ..models.autoencoder import VAE as VAEModel
from ..models.autoencoder import is_generative
from ..registry import MODELS, TASKS
from .frechet import sample_quality
from .supervised import Supervised

EVAL_SEED = 1234  # seed of the posterior samples used in evaluation


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example, summed over latent dimensions: (B, D) -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | logits) per example, summed over all but the batch dimension: (B, ...) -> (B,)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def gaussian_nll(logits: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """-log N(x; sigmoid(logits), sigma^2 I) per example, summed over all but the batch dimension."""
    z = (x - torch.sigmoid(logits)) / sigma
    return (0.5 * z.pow(2) + math.log(sigma) + 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)


def decoder_nll(logits: torch.Tensor, x: torch.Tensor, decoder: str = "bernoulli", sigma: float = 0.1) -> torch.Tensor:
    """-log p(x|z) per example for the decoder's output `logits`: Bernoulli, or Gaussian with mean
    sigmoid(logits) and fixed standard deviation `sigma` (a density: values can be negative)."""
    return bernoulli_nll(logits, x) if decoder == "bernoulli" else gaussian_nll(logits, x, sigma)


def neg_elbo_terms(model, x: torch.Tensor, eps: torch.Tensor | None = None, decoder: str = "bernoulli",
                   sigma: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction NLL, KL) per example for one posterior sample; -ELBO = recon + KL."""
    logits, mu, logvar = (_wide(t) for t in model(x, eps))
    return decoder_nll(logits, x, decoder, sigma), gaussian_kl(mu, logvar)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """Losses in float32 at least (bf16 autocast outputs are widened; float64 stays)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def importance_nll(model, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                   decoder: str = "bernoulli", sigma: float = 0.1) -> torch.Tensor:
    """-log p(x) per example, estimated with k importance samples from q(z|x) (Burda et al. 2016):
    -log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x). It never exceeds the k = 1 bound, -ELBO, on average."""
    mu, logvar = (_wide(t) for t in model.encode(x))
    eps = torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)  # (k, B, D)
    z = mu + torch.exp(0.5 * logvar) * eps
    logits = _wide(model.decode(z.flatten(0, 1)))  # (k * B, *in_shape)
    log_px = -decoder_nll(logits, x.repeat(k, *([1] * (x.ndim - 1))), decoder, sigma).reshape(k, -1)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    log_pz = (-0.5 * z.pow(2) - half_log_2pi).sum(-1)
    log_q = (-0.5 * eps.pow(2) - 0.5 * logvar - half_log_2pi).sum(-1)
    return -(torch.logsumexp(log_px + log_pz - log_q, 0) - math.log(k))


def corrupt(x: torch.Tensor, noise: str, level: float) -> torch.Tensor:
    """Denoising-autoencoder input: gaussian (add N(0, level^2), clip to [0, 1]) or masking
    (zero each value with probability `level`); '' returns x."""
    if noise == "gaussian":
        return (x + level * torch.randn_like(x)).clamp(0.0, 1.0)
    if noise == "masking":
        return x * (torch.rand_like(x) >= level)
    return x


class Generative(Supervised):
    """Shared setup for `autoencode` and `vae`; `kind` picks the step and the metrics."""

    def __init__(self, cfg: RunConfig, runtime: Runtime, kind: str, **kw):
        name = cfg.model["name"]
        if kw.get("model") is None and not is_generative(name):
            options = [n for n in MODELS.names() if is_generative(n)]
            raise UserError(f"Task '{cfg.task}' needs an autoencoder or VAE model, not '{name}'. "
                            f"Use one of: {', '.join(options)}.")
        if cfg.data.normalize:
            raise UserError(f"Task '{cfg.task}' models inputs in [0, 1] with a Bernoulli decoder: "
                            f"set data.normalize = false (it is {cfg.data.normalize}).")
        if cfg.data.stream:
            raise UserError(f"Task '{cfg.task}' reads data in memory: set data.stream = false.")
        self.kind = kind
        super().__init__(cfg, runtime, loss="cross_entropy", train_acc=False, **kw)
        x = self.data["train"].x
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi > 1:
            raise UserError(f"Task '{cfg.task}' needs inputs in [0, 1]; data '{cfg.data.name}' has values in "
                            f"[{lo:.3g}, {hi:.3g}].")
        self.meta["loss"] = "bernoulli"
        self.noise = (cfg.gen.noise, cfg.gen.noise_level) if kind == "autoencode" else ("", 0.0)

    def _losses(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> dict:
        """Per-example loss terms of a clean batch x (the training step corrupts its input first)."""
        if self.kind == "vae":
            recon, kl = neg_elbo_terms(self.model, x, eps, self.cfg.gen.decoder, self.cfg.gen.sigma)
            return {"recon": recon, "kl": kl}
        return {"recon_loss": F.binary_cross_entropy(_wide(self.model(corrupt(x, *self.noise))), x,
                                                     reduction="none").flatten(1).sum(1)}

    def train_step(self, batch) -> dict:
        x = batch[0]
        terms = {k: v.mean() for k, v in self._losses(x).items()}  # forwards under the runtime's precision
        if self.kind == "vae":
            loss = terms["recon"] + self.cfg.gen.beta * terms["kl"]
            self.opt.step(loss)
            return {"train/loss": loss, "train/recon": terms["recon"], "train/kl": terms["kl"]}
        self.opt.step(terms["recon_loss"])
        return {"train/loss": terms["recon_loss"]}

    @torch.inference_mode()
    def evaluate(self, split: str) -> dict:
        if split not in self.data:
            return {}
        with evaluating(self.model):
            return self._evaluate(split)

    def _evaluate(self, split: str) -> dict:
        x, bs = self.data[split].x, self.cfg.train.eval_batch_size
        gen = torch.Generator(device=x.device).manual_seed(EVAL_SEED)
        sums: dict[str, float] = {}
        for i in range(0, len(x), bs):
            xb = x[i:i + bs]
            eps = None
            if self.kind == "vae":
                eps = torch.randn(len(xb), unwrap(self.model).latent_dim, generator=gen, device=x.device)
            for k, v in self._losses(xb, eps).items():
                sums[k] = sums.get(k, 0.0) + v.sum().item()
        k = self.cfg.gen.nll_samples
        if self.kind == "vae" and split == "test" and k:
            chunk = max(1, 16384 // k)  # k decoder passes per example: bound the memory
            sums["nll"] = sum(importance_nll(unwrap(self.model), x[i:i + chunk], k, gen,
                                             self.cfg.gen.decoder, self.cfg.gen.sigma).sum().item()
                              for i in range(0, len(x), chunk))
        out = {f"{split}/{k}": v / len(x) for k, v in sums.items()}
        if self.kind == "vae":
            out[f"{split}/neg_elbo"] = out[f"{split}/recon"] + out[f"{split}/kl"]
            if split == "test" and self.meta["kind"] == "image":  # quality of prior samples (tasks/frechet.py)
                out.update(sample_quality(self, unwrap(self.model), "test"))
        return out


@torch.inference_mode()
def anomaly_scores(model, x: torch.Tensor, decoder: str = "bernoulli", sigma: float = 0.1) -> torch.Tensor:
    """Per-example anomaly score in nats (higher: less like the training data) of inputs in [0, 1]:
    the reconstruction BCE for an autoencoder; for a VAE, -ELBO at the posterior mean (eps = 0,
    so the score is deterministic)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    with evaluating(model):
        if isinstance(unwrap(model), VAEModel):
            recon, kl = neg_elbo_terms(model, x, torch.zeros(len(x), unwrap(model).latent_dim), decoder, sigma)
            return recon + kl
        return F.binary_cross_entropy(_wide(model(x)), x, reduction="none").flatten(1).sum(1)


@torch.inference_mode()
def reconstruct(model, x) -> torch.Tensor:
    """Reconstructions in [0, 1] of inputs in [0, 1]: the autoencoder's output, or for a VAE the
    decoder's Bernoulli means at the posterior mean."""
    x = torch.as_tensor(x, dtype=torch.float32)
    with evaluating(model):
        if isinstance(unwrap(model), VAEModel):
            return torch.sigmoid(model.decode(model.encode(x)[0]))
        return model(x)


def image_grid(images, cols: int) -> np.ndarray:
    """Tile (N, C, H, W) images in [0, 1] into one (rows*(H+1)-1, cols*(W+1)-1[, 3]) array, 1-pixel gaps."""
    images = torch.as_tensor(images)
    n, c, h, w = images.shape
    rows = -(-n // cols)
    grid = np.ones((c, rows * (h + 1) - 1, cols * (w + 1) - 1), dtype=np.float32)
    for i, img in enumerate(images.float().clamp(0, 1).cpu().numpy()):
        r, k = divmod(i, cols)
        grid[:, r * (h + 1):r * (h + 1) + h, k * (w + 1):k * (w + 1) + w] = img
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_png(path: Path, grid: np.ndarray) -> None:
    """Write an image array (gray or RGB, values in [0, 1]) as PNG, atomically."""
    import matplotlib.image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    atomic_write(path, buf.getvalue())


@torch.no_grad()
def interpolation_strip(model, rows: int = 6, steps: int = 10):
    """Rows of images decoded along straight lines between pairs of latent codes (fixed seed);
    `model` has noise(n, generator) and images(z) in [0, 1] (the GAN and the VAE)."""
    with evaluating(model):
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(EVAL_SEED + 2)
        a, b = model.noise(rows, gen), model.noise(rows, gen)
        t = torch.linspace(0, 1, steps, device=a.device).view(1, steps, 1)
        z = (a[:, None] * (1 - t) + b[:, None] * t).flatten(0, 1)  # (rows * steps, latent)
        images = model.images(z)
    return image_grid(images, steps)


def save_loss_curves(run_path: Path) -> None:
    """losses.png: the per-epoch training losses (train/*, gan/*_loss) and validation losses of
    the run's metrics.jsonl, one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in RunDir(run_path).read_metrics() if "epoch" in r]
    keys = sorted({k for r in rows for k in r if k.endswith(("loss", "/recon", "/kl", "neg_elbo", "frechet"))})
    if not rows or not keys:
        return
    fig, axes = plt.subplots(1, 2 if any("frechet" in k for k in keys) else 1, figsize=(9, 3.5), squeeze=False)
    for k in keys:
        ax = axes[0, 1] if "frechet" in k else axes[0, 0]
        pts = [(r["epoch"], r[k]) for r in rows if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=k)
    for ax in axes[0]:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, Path(run_path) / "losses.png")


def _save_figure(fig, path: Path) -> None:
    """A matplotlib figure as PNG, written atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def save_latent_scatter(path: Path, codes: torch.Tensor, y: torch.Tensor, classes: list[str]) -> None:
    """Codes (N, D) as a 2-D scatter coloured by class: the first two principal components when D > 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = codes.float().flatten(1).cpu()
    if c.shape[1] > 2:
        c = c - c.mean(0)
        c = c @ torch.linalg.svd(c, full_matrices=False).Vh[:2].T  # (N, 2): the top two components
    fig, ax = plt.subplots(figsize=(5, 4.5))
    points = ax.scatter(c[:, 0], c[:, min(1, c.shape[1] - 1)], c=y.cpu(), cmap="tab10", s=6)
    handles, _ = points.legend_elements(num=None)  # one per class present, in increasing order
    names = [classes[v] if v < len(classes) else str(v) for v in sorted(set(y.tolist()))]
    ax.legend(handles, names, title="class", fontsize=7, loc="best")
    ax.set_title("latent codes" + (" (PCA)" if codes.flatten(1).shape[1] > 2 else ""))
    _save_figure(fig, path)


@TASKS.register("autoencode", tags=("reconstruct",))
class AutoEncode(Generative):
    """Autoencoder, denoising with gen.noise, reporting recon_loss (BCE nats per example)."""

    def __init__(self, cfg: RunConfig, runtime: Runtime, **kw):
        super().__init__(cfg, runtime, "autoencode", **kw)


@TASKS.register("vae", tags=("reconstruct", "sample"))
class VAE(Generative):
    """Variational autoencoder (gen.beta), reporting neg_elbo, recon and kl in nats per example."""

    def __init__(self, cfg: RunConfig, runtime: Runtime, **kw):
        super().__init__(cfg, runtime, "vae", **kw)
