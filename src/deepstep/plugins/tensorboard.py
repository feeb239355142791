"""TensorBoard as one more sink of the run's records: `deepstep train RECIPE --with tensorboard`
(or `[plugins] use = ["tensorboard"]`), then `tensorboard --logdir runs`.

Written under RUN/tb, all against the global optimizer step (the `step` of every record):
- every epoch record's numbers under their own keys (train/loss, val/acc, lr, rollout/return...),
  and every step record's under `steps/` (steps/train/loss), so the two never share a tag;
- the hyperparameters (the resolved config, flattened to `section.key`) with the final metrics
  of the summary, for TensorBoard's HPARAMS tab;
- pictures: a GAN's samples/epoch-NNN.png after every epoch (tag `samples`), and at the end the
  normalized confusion matrix (`classes/confusion`, drawn as in report.html) and every picture the
  run wrote (`pictures/samples`, `pictures/reconstructions`, `pictures/forecast`, ...).

Exact across resume: the writer opens with `purge_step` = one past the step the run resumes from
(the checkpoint's own epoch record is at that step and stays), so TensorBoard drops what a killed
run wrote after its last checkpoint, and a resumed run's events
read back as an uninterrupted run's (tests/test_tensorboard.py). `tensorboard` is imported only
here: `pip install 'deepstep[tensorboard]'`.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from ..engine.plugin import Plugin
from ..errors import UserError
from ..registry import PLUGINS

TB_DIR = "tb"
PICTURES = ("samples", "reconstructions", "interpolation", "latent", "losses", "forecast")


def _writer(path: Path, purge_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's writer needs the tensorboard package
        raise UserError("The tensorboard plug-in needs the tensorboard package: "
                        "pip install 'deepstep[tensorboard]'.") from None
    return SummaryWriter(str(path), purge_step=purge_step, flush_secs=30)


def _png_array(data: bytes) -> np.ndarray:
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # (H, W, 3) uint8
    k = 256 // max(a.shape[:2])  # small grids (8x8 digits: 71 pixels) enlarged, pixels kept sharp
    return a.repeat(k, 0).repeat(k, 1) if k > 1 else a


def hparams(cfg: dict, prefix: str = "") -> dict:
    """A config as flat `section.key` -> int, float, str or bool (lists and the rest as text)."""
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(hparams(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        elif v is not None:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


@PLUGINS.register("tensorboard")
class TensorBoard(Plugin):
    """Writes every record's scalars, the hyperparameters and the run's pictures (GAN samples each
    epoch, the confusion matrix, reconstructions, ...) to RUN/tb for TensorBoard, exactly across
    resume. Choose it with `--with tensorboard`."""

    name = "tensorboard"
    order = 70  # after the pictures (0) and class-report (30): it reads the files they write

    def __init__(self):
        self.writer = None

    def applies_to(self, run) -> bool:
        return run.dir is not None

    def on_start(self, run) -> None:
        step = run.loop.state.step if run.loop is not None else 0
        # records up to the checkpoint's step (its epoch record included) stay; later ones are redone
        self.writer = _writer(run.path / TB_DIR, step + 1)

    def on_log(self, run, record: dict) -> None:
        step = int(record.get("step", 0))
        prefix = "" if "epoch" in record else "steps/"
        for k, v in record.items():
            if k in ("step", "epoch") or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            self.writer.add_scalar(prefix + k, v, step)
        if "epoch" in record:
            self.writer.add_scalar("epoch", record["epoch"], step)

    def on_epoch_end(self, run, logs: dict) -> bool:
        grid = run.path / "samples" / f"epoch-{logs['epoch']:03d}.png"  # gan-pictures wrote it just now
        if grid.is_file():
            self.writer.add_image("samples", _png_array(grid.read_bytes()), int(logs["step"]), dataformats="HWC")
        self.writer.flush()
        return False

    def on_finish(self, run, summary: dict) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        step = run.loop.state.step if run.loop is not None else 0
        w = self.writer
        classes = run.path / "classes.json"
        if classes.is_file():
            from .report_parts import heatmap_png

            c = json.loads(classes.read_text())
            if c.get("confusion_normalized"):
                png = heatmap_png(np.asarray(c["confusion_normalized"], float), list(c.get("classes") or run.meta.classes),
                                  np.asarray(c["confusion"], float) if c.get("confusion") else None)
                w.add_image("classes/confusion", _png_array(png), step, dataformats="HWC")
        for name in PICTURES:
            f = run.path / f"{name}.png"
            if f.is_file():
                w.add_image(f"pictures/{name}", _png_array(f.read_bytes()), step, dataformats="HWC")
        metrics = {k: float(v) for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and "/" in k and math.isfinite(v)}
        exp, ssi, sei = hparams_summary(hparams(run.cfg.to_dict()), metrics)
        for s in (exp, ssi, sei):
            w.file_writer.add_summary(s)
        for k, v in metrics.items():  # the HPARAMS tab shows a metric only where a scalar has its tag
            if k.startswith(("test/", "eval/", "samples/", "baseline/")):
                w.add_scalar(k, v, step)
        w.close()
        self.writer = None
