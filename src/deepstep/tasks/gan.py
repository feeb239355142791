"""The `gan` task: a generator and a discriminator trained against each other, two optimizers
inside the engine's one step (architecture principle 4).

One step, for a batch of real images x in [0, 1] (rescaled to [-1, 1], the generator's tanh range):
    1. discriminator: minimize BCE(D(x), real_label) + BCE(D(G(z)), 0) (real and generated images
       in separate batches, so D's batch norm sees the same kind of batch as in step 2) — gen.real_label = 0.9 is
       one-sided label smoothing (Salimans et al. 2016); G(z) is detached, so G gets no gradient.
    2. generator, every gen.d_steps batches: the non-saturating loss BCE(D(G(z)), 1) = -log D(G(z))
       (Goodfellow et al. 2014), with the discriminator's parameters frozen for that backward so
       its gradients are neither computed nor mixed into its next update.
Logged as gan/d_loss, gan/g_loss, gan/d_real and gan/d_fake (mean D probabilities).

Quality: val/frechet each epoch (gen.eval_samples generated vs as many validation images) and, at
the end, samples/frechet and samples/class_coverage with gen.test_samples images (tasks/frechet.py:
a fixed deepstep classifier per data set, not Inception FID). The checkpoint holds both networks
(one module), both optimizers and the batch counter, so a resumed run continues exactly.

Pictures in the run directory (plugins/pictures.py): samples/epoch-NNN.png (64 images from the
same fixed noise every epoch), samples.png, interpolation.png (straight lines between latent
codes) and losses.png.
Training runs in one process: under torchrun it stops with a clear error (the two networks
would each need their own DistributedDataParallel wrapper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..engine.optim import Optimization
from ..engine.runtime import Runtime, evaluating, unwrap
from ..errors import UserError
from ..models.gan import is_gan
from ..registry import MODELS, TASKS
from .frechet import sample_quality
from .generative import EVAL_SEED
from .supervised import Supervised


@TASKS.register("gan", tags=("sample",))
class GANTask(Supervised):
    """GAN: discriminator and generator steps with two optimizers, reporting samples/frechet."""

    def __init__(self, cfg: RunConfig, runtime: Runtime, **kw):
        name = cfg.model["name"]
        if kw.get("model") is None and not is_gan(name):
            raise UserError(f"Task 'gan' needs a GAN model, not '{name}'. Use one of: "
                            f"{', '.join(n for n in MODELS.names() if is_gan(n))}.")
        if cfg.data.normalize:
            raise UserError("Task 'gan' generates images in [0, 1] as the data set loads them: set data.normalize = false.")
        if cfg.data.stream:
            raise UserError("Task 'gan' reads data in memory: set data.stream = false.")
        if runtime.world_size > 1:
            raise UserError("Task 'gan' trains in one process; run it without torchrun.")
        super().__init__(cfg, runtime, loss="cross_entropy", train_acc=False, **kw)
        if self.meta["kind"] != "image":
            raise UserError(f"Task 'gan' generates images, but data set '{cfg.data.name}' holds {self.meta['kind']} "
                            f"inputs of shape {tuple(self.meta['in_shape'])}. Use an image data set "
                            f"(fashion-mnist, mnist, digits, cifar10 or an image folder).")
        x = self.data["train"].x
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi > 1:
            raise UserError(f"Task 'gan' needs images in [0, 1]; data '{cfg.data.name}' has values in [{lo:.3g}, {hi:.3g}].")
        gan = unwrap(self.model)
        args = (cfg.optim, cfg.sched, self.steps_per_epoch, cfg.train.epochs, cfg.train.grad_clip, cfg.train.grad_accum)
        self.opt_d = Optimization(gan.discriminator.parameters(), *args)
        self.opt_g = Optimization(gan.generator.parameters(), *args)
        self.opt = self.opt_g  # Supervised's lr logging reads self.opt
        self.meta["loss"] = "gan"
        self.n_batches = 0

    # --- the step ---------------------------------------------------------------------------
    def train_step(self, batch) -> dict:
        gan = self.model  # the runtime's wrapper: every forward below runs under its precision
        real = batch[0] * 2 - 1
        n = len(real)
        fake = gan.generate(gan.noise(n))
        # real and fake images go through D as separate batches: with batch norm in D, a mixed
        # batch would normalize the fakes differently here than in the generator's step below
        real_logits = gan.discriminator(real).float().squeeze(1)
        fake_logits = gan.discriminator(fake.detach()).float().squeeze(1)
        d_loss = 0.5 * (F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, self.cfg.gen.real_label))
                        + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))  # mean over 2n
        self.opt_d.step(d_loss)
        self.n_batches += 1
        out = {"gan/d_loss": d_loss, "gan/d_real": torch.sigmoid(real_logits).mean(),
               "gan/d_fake": torch.sigmoid(fake_logits).mean()}
        if self.n_batches % self.cfg.gen.d_steps == 0:
            d_params = [p for p in unwrap(gan).discriminator.parameters() if p.requires_grad]
            for p in d_params:
                p.requires_grad_(False)
            try:
                g_logits = gan.discriminator(fake).float().squeeze(1)
                g_loss = F.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))  # non-saturating
                self.opt_g.step(g_loss)
            finally:
                for p in d_params:
                    p.requires_grad_(True)
            out["gan/g_loss"] = g_loss
        return out

    def end_epoch(self, logs: dict) -> None:
        self.opt_d.end_epoch()
        self.opt_g.end_epoch()
        logs["lr"] = self.opt_g.lr

    @torch.no_grad()
    def fixed_samples(self, n: int = 64) -> torch.Tensor:
        """n generated images in [0, 1] from the same fixed noise every time (evaluation mode)."""
        gan = unwrap(self.model)
        with evaluating(gan):
            return gan.sample(n, generator=torch.Generator(device=self.rt.device).manual_seed(EVAL_SEED))

    # --- measuring --------------------------------------------------------------------------
    def evaluate(self, split: str) -> dict:
        return sample_quality(self, unwrap(self.model), split)

    def state_dict(self) -> dict:
        return {"model": unwrap(self.model).state_dict(), "opt_d": self.opt_d.state_dict(),
                "opt_g": self.opt_g.state_dict(), "n_batches": self.n_batches}

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.n_batches = state["n_batches"]

