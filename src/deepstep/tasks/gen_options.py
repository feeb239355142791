"""The `[gen]` section of the generative tasks (autoencode, vae, gan), registered with them
(config.register_section): a run of another task has no `gen` section."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import opt, register_section
from ..errors import UserError, unknown


@dataclass
class GenConfig:
    noise: str = opt("", "autoencode: denoising training noise: '' (none), 'gaussian' (add N(0, level^2), clip to [0, 1]) or 'masking' (zero each pixel with probability level)")
    noise_level: float = opt(0.3, "autoencode: standard deviation (gaussian) or drop probability (masking) of the training noise")
    beta: float = opt(1.0, "vae: weight of the KL term (1: the ELBO; the logged test/neg_elbo always uses 1)")
    decoder: str = opt("bernoulli", "vae: p(x|z), 'bernoulli' or 'gaussian' (mean sigmoid(output), fixed standard deviation gen.sigma)")
    sigma: float = opt(0.1, "vae with gen.decoder = 'gaussian': standard deviation of the decoder")
    nll_samples: int = opt(100, "vae: importance samples per test example for the test/nll estimate (0: skip it)")
    real_label: float = opt(1.0, "gan: discriminator target for real images (0.9: one-sided label smoothing)")
    d_steps: int = opt(1, "gan: discriminator updates per generator update")
    eval_samples: int = opt(2000, "gan, vae: generated images for the per-epoch val/frechet (0: skip it)")
    test_samples: int = opt(10000, "gan, vae: generated images for samples/frechet and samples/class_coverage, against as many real test images (at most the test split; 0: skip)")

    def __post_init__(self):
        if self.noise not in ("", "gaussian", "masking"):
            raise unknown("noise", self.noise, ("gaussian", "masking"))
        if self.noise_level < 0 or (self.noise == "masking" and self.noise_level >= 1):
            raise UserError(f"gen.noise_level = {self.noise_level} must be at least 0 (and below 1 for masking).")
        if self.decoder not in ("bernoulli", "gaussian"):
            raise unknown("decoder", self.decoder, ("bernoulli", "gaussian"))
        if self.sigma <= 0:
            raise UserError(f"gen.sigma = {self.sigma} must be positive.")
        if not 0.5 < self.real_label <= 1.0:
            raise UserError(f"gen.real_label = {self.real_label} must be in (0.5, 1] (0.9 is the usual smoothing).")
        if self.d_steps < 1 or self.eval_samples < 0 or self.test_samples < 0:
            raise UserError(f"gen.d_steps = {self.d_steps} must be at least 1, and gen.eval_samples = "
                            f"{self.eval_samples} and gen.test_samples = {self.test_samples} at least 0.")
        if self.beta < 0 or self.nll_samples < 0:
            raise UserError(f"gen.beta = {self.beta} and gen.nll_samples = {self.nll_samples} must be at least 0.")


register_section("gen", GenConfig, tasks=("autoencode", "vae", "gan"))
