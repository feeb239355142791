"""Pictures of generative runs: reconstructions, samples, interpolations, latent codes, losses."""

from __future__ import annotations

from pathlib import Path

import torch

from ..engine.plugin import Plugin
from ..engine.runtime import evaluating, unwrap
from ..registry import PLUGINS
from ..tasks.gan import GANTask
from ..tasks.generative import (
    EVAL_SEED,
    Generative,
    image_grid,
    interpolation_strip,
    reconstruct,
    save_latent_scatter,
    save_loss_curves,
    save_png,
)


@PLUGINS.register("ae-pictures", tags=("default",))
class AutoencoderPictures(Plugin):
    """Draws an autoencoder's or VAE's reconstructions.png, latent.png and losses.png, and a VAE's samples.png and interpolation.png, into the run directory."""

    name = "ae-pictures"

    def applies_to(self, run) -> bool:
        return run.dir is not None and isinstance(run.task, Generative) and run.task.meta["kind"] == "image"

    @torch.inference_mode()
    def on_finish(self, run, summary: dict) -> None:
        task, path = run.task, run.path
        model = unwrap(task.model)
        with evaluating(model):
            d = task.data["test" if "test" in task.data else "train"]
            x = d.x[:32]
            cols = min(8, len(x))
            x = x[:len(x) // cols * cols]
            recon = reconstruct(model, x)
            pairs = torch.stack([x.reshape(-1, cols, *x.shape[1:]), recon.reshape(-1, cols, *x.shape[1:])], 1)
            save_png(path / "reconstructions.png", image_grid(pairs.flatten(0, 2), cols))
            if task.kind == "vae":
                gen = torch.Generator(device=x.device).manual_seed(EVAL_SEED)
                save_png(path / "samples.png", image_grid(model.sample(64, generator=gen), 8))
                save_png(path / "interpolation.png", interpolation_strip(model))
            save_loss_curves(Path(path))
            codes = model.encode(d.x[:2000])
            save_latent_scatter(path / "latent.png", codes[0] if task.kind == "vae" else codes, d.y[:2000],
                                task.meta["classes"])


@PLUGINS.register("gan-pictures", tags=("default",))
class GANPictures(Plugin):
    """Draws a GAN's samples/epoch-NNN.png after every epoch (64 images from the same fixed noise), and samples.png, interpolation.png and losses.png at the end."""

    name = "gan-pictures"

    def applies_to(self, run) -> bool:
        return run.dir is not None and isinstance(run.task, GANTask)

    def on_epoch_end(self, run, logs: dict) -> bool:
        save_png(run.path / "samples" / f"epoch-{logs['epoch']:03d}.png", image_grid(run.task.fixed_samples(), 8))
        return False

    def on_finish(self, run, summary: dict) -> None:
        save_png(run.path / "samples.png", image_grid(run.task.fixed_samples(), 8))
        save_png(run.path / "interpolation.png", interpolation_strip(unwrap(run.task.model)))
        save_loss_curves(run.path)
