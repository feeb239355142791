"""report.html: one self-contained page per run, built from the run directory alone.

    write_report("runs/digits-mlp-...")            -> RUN/report.html
    write_comparison([run_a, run_b], "cmp.html")    -> runs overlaid, differing config, results

The page holds everything inline (matplotlib figures and the run's own PNGs as base64 data
URIs; no network, no JavaScript) and reads at phone width. It shows: the run's header (recipe,
task, data and split sizes, model and parameter count, device, time, epochs), the `[expect]`
targets met or not, the diagnosis (summary key "diagnosis") when there is one, the test metrics
beside any baseline/*, learning curves from the epoch records of metrics.jsonl, and by task:
per-class results, confusion matrix, highest-loss examples and a reliability diagram
(classes.json and predictions.npz), the forecast picture, an autoencoder's or GAN's pictures, an
RL agent's return and episode length.

The plug-in "report" (default, last) writes it at the end of every run with a directory;
`deepstep report RUN` writes it again for an old run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import read_toml
from ..engine.checkpoint import atomic_write
from ..engine.logs import monitor_mode
from ..engine.plugin import Plugin
from ..errors import UserError
from ..registry import PLUGINS

PICTURE_NOTES = {  # the generative runs' own pictures, in the order shown
    "reconstructions.png": "Test inputs and their reconstructions",
    "samples.png": "Samples",
    "interpolation.png": "Interpolations: each row decodes a straight line between two latent codes",
    "latent.png": "Latent codes of test images, coloured by class",
    "losses.png": "Losses per epoch (as the run drew them)",
}

CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
color:#1d232a;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:12px}
h1{font-size:1.45em;margin:.3em 0 .1em;word-break:break-word}
h2{font-size:1.15em;margin:.2em 0 .5em;padding-bottom:.2em;border-bottom:1px solid #d5d9df}
h3{font-size:1em;margin:1em 0 .4em}
p{margin:.4em 0}
.desc{color:#4a535d}
section,header{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:10px 14px;margin:12px 0}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,170px),1fr));gap:4px 16px;margin:.6em 0}
.facts div{min-width:0;overflow-wrap:anywhere}
.facts b{display:block;font-size:.78em;text-transform:uppercase;letter-spacing:.04em;color:#68717b;font-weight:600}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}
table{border-collapse:collapse;font-size:.92em;margin:.3em 0}
th,td{padding:4px 10px;border-bottom:1px solid #e6e8eb;text-align:left;white-space:nowrap}
th{background:#f0f2f5;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.hl td{background:#fff4e0}
.met{color:#0b6b2b;font-weight:700}
.notmet{color:#b3261e;font-weight:700}
img{max-width:100%;height:auto;display:block}
.pix{image-rendering:pixelated;image-rendering:crisp-edges}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,460px),1fr));gap:12px}
figure{margin:0;min-width:0}
figcaption{font-size:.86em;color:#4a535d;margin-top:.2em}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(88px,1fr));gap:8px}
.gallery figure{border:1px solid #e1e4e8;border-radius:6px;padding:4px;background:#fafbfc}
.gallery img{width:100%}
.gallery figcaption{font-size:.78em;line-height:1.3}
.label{font-size:1.25em;font-weight:700;color:#8a4b00;background:#fff4e0;border-left:4px solid #e08a00;
padding:6px 10px;margin:.4em 0;overflow-wrap:anywhere}
pre{background:#f0f2f5;padding:6px 8px;border-radius:4px;margin:.3em 0;white-space:pre-wrap;overflow-wrap:anywhere}
code{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre code{user-select:all}
td.text{white-space:normal;min-width:6em;max-width:36em;overflow-wrap:break-word}
.texts td.text:first-child{min-width:14em}
footer{font-size:.8em;color:#68717b;margin:14px 0 24px}
"""


# --- small helpers ------------------------------------------------------------------------------
def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A number with 4 significant digits (integers in full), anything else as text; escaped."""
    if isinstance(value, bool):
        return esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return esc(value)
        return f"{value:.4g}" if abs(value) >= 1e-4 or value == 0 else f"{value:.3e}"
    return esc(value)


def _fixed(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else fmt(value)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str, pixelated: bool = False) -> str:
    cls = ' class="pix"' if pixelated else ""
    return f'<img{cls} src="{data_uri(png)}" alt="{esc(alt)}">'


def figure(png: bytes, caption: str, alt: str = "", pixelated: bool = False) -> str:
    return f"<figure>{img(png, alt or caption, pixelated)}<figcaption>{esc(caption)}</figcaption></figure>"


def table(header: list[str], rows: list[list[str]], highlight: set[int] = frozenset(), cls: str = "",
          wrap: tuple[int, ...] = ()) -> str:
    """A scrolling table; cells are HTML already (escape them with `esc`/`fmt`), numbers
    right-aligned, the columns in `wrap` wrapped (long texts)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f"<td{_cell_class(c, j in wrap)}>{c}</td>" for j, c in enumerate(row))
        body.append(f'<tr{" class=hl" if i in highlight else ""}>{cells}</tr>')
    c = f' class="{cls}"' if cls else ""
    return f'<div class="scroll"><table{c}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _cell_class(cell: str, wrap: bool) -> str:
    names = " ".join(n for n, on in (("text", wrap), ("num", _numeric(cell))) if on)
    return f' class="{names}"' if names else ""


def _numeric(cell: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?%?", cell))


def _figure_png(fig, tight: bool = False) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, **({"bbox_inches": "tight", "pad_inches": 0.05} if tight else {}))
    return buf.getvalue()


def _new_figure(w: float = 5.0, h: float = 3.2, margins: tuple[float, float, float, float] = (0.85, 0.15, 0.5, 0.3)):
    """A figure of w x h inches with one axes; `margins` (left, right, bottom, top) in inches,
    fixed: a layout engine would draw every figure twice (half the report's time)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no backend to choose

    fig = Figure(figsize=(w, h))
    left, right, bottom, top = margins
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h)
    return fig, fig.add_subplot()


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def epoch_records(records: list[dict]) -> list[dict]:
    """The epoch records (those with an "epoch" key), one per epoch (the last one logged)."""
    by_epoch = {r["epoch"]: r for r in records if isinstance(r.get("epoch"), (int, float))}
    return [by_epoch[e] for e in sorted(by_epoch)]


def series(rows: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
    return [p[0] for p in pts], [p[1] for p in pts]


def parameter_count(weights: Path) -> dict[str, int]:
    """Parameters per module ('model', 'generator', ...) of a model.safetensors, from the tensor
    shapes (nothing loaded); batch-norm statistics are not parameters and are left out."""
    if not weights.is_file():
        return {}
    from safetensors import safe_open

    out: dict[str, int] = {}
    with safe_open(str(weights), framework="numpy") as f:
        for k in f.keys():
            if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
                continue
            module = k.split(".")[0]
            out[module] = out.get(module, 0) + int(np.prod(f.get_slice(k).get_shape(), dtype=np.int64))
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested config -> dotted keys: {"model": {"dropout": 0.2}} -> {"model.dropout": 0.2}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def expectations(expect_cfg: dict, summary: dict) -> dict:
    """summary["expect"] when the run has it (summary.json), else the same check on the live
    summary (the plug-in runs before fit adds it)."""
    if isinstance(summary.get("expect"), dict):
        return summary["expect"]
    from ..engine.fit import check_expectations

    return check_expectations(expect_cfg, summary)


# --- what one run directory holds ---------------------------------------------------------------
class RunFiles:
    """Everything the report reads, from the run directory alone."""

    def __init__(self, path: Path | str, summary: dict | None = None):
        from ..engine.run import Run

        run = Run.open(path)  # UserError for a folder that is not a run
        self.path = Path(run.path)
        self.cfg = run.cfg
        self.raw_config = read_toml(self.path / "config.toml")
        self.meta = run.meta.to_dict() if run.meta is not None else {}
        # as summary.json holds it (keys sorted), so the live report equals one written again later
        self.summary = json.loads(json.dumps(summary if summary is not None else run.summary, sort_keys=True,
                                             default=str))
        self.records = run.metrics()
        self.epochs = epoch_records(self.records)
        if not self.epochs:
            raise UserError(f"'{self.path}' has no epoch records in metrics.jsonl: there is nothing to report yet "
                            "(train it, or resume it with `deepstep resume`).")
        self.monitor = self.summary.get("monitor") or self.cfg.train.monitor
        self.expect = expectations(self.cfg.expect, self.summary)

    def name(self) -> str:
        return self.cfg.recipe or self.path.name

    def png(self, name: str) -> bytes | None:
        f = self.path / name
        return f.read_bytes() if f.is_file() else None


# --- figures -------------------------------------------------------------------------------------
def curve_png(rows: list[dict], keys: list[str], title: str, ylabel: str, best_epoch: Any = None,
              log: bool = False) -> bytes | None:
    fig, ax = _new_figure()
    drawn = 0
    for k in keys:
        x, y = series(rows, k)
        if x:
            ax.plot(x, y, marker="o" if len(x) <= 30 else None, markersize=3, label=k)
            drawn += 1
    if not drawn:
        return None
    if isinstance(best_epoch, (int, float)) and not isinstance(best_epoch, bool):
        ax.axvline(best_epoch, color="0.5", linestyle="--", linewidth=1, label=f"best epoch {best_epoch}")
    if log:
        ax.set_yscale("log")
    else:  # short tick labels: 2e-4, not 0.000200 (the left margin is fixed)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    return _figure_png(fig)


def curves(f: RunFiles, skip: set[str] = frozenset()) -> list[tuple[bytes | None, str]]:
    """Learning-curve figures from the epoch records: losses, the monitored metric, the other
    validation metrics (each with its train/ counterpart), the learning rate (a constant one:
    no figure (None), a sentence)."""
    rows, mon = f.epochs, f.monitor
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("epoch", "step")))
    best = f.summary.get("best_epoch")
    out = []
    loss_keys = [k for k in ("train/loss", "val/loss") if k in keys]
    if "train/loss" not in keys:  # e.g. PPO: policy_loss, value_loss
        loss_keys += [k for k in keys if k.startswith("train/") and k.endswith("loss")]
    loss_keys += [k for k in keys if k.startswith("gan/") and k.endswith("loss")]
    if loss_keys:
        note = " (monitored)" if mon in loss_keys else ""
        both = any(k.startswith("val/") for k in loss_keys)
        png = curve_png(rows, loss_keys, ("loss: train vs validation" if both else "training losses") + note, "loss",
                        best if note else None)
        if png:
            out.append((png, ("Training and validation loss per epoch" if both else "Training losses per epoch")
                        + note))
    done = set(loss_keys) | set(skip)
    val_keys = [k for k in keys if k.startswith("val/") and k not in done and not k.endswith(("episodes", "_std"))]
    if mon in val_keys:
        val_keys.remove(mon)
        val_keys.insert(0, mon)
    for k in val_keys[:8]:
        name = k.split("/", 1)[1]
        pair = [p for p in (f"train/{name}", k) if p in keys]
        note = " (monitored)" if k == mon else ""
        png = curve_png(rows, pair, f"{name}{note}", name, best if note else None)
        if png:
            out.append((png, f"{k} per epoch{note}" + (f", with {pair[0]}" if len(pair) > 1 else "")))
        done.update(pair)
    lr = [k for k in keys if k == "lr" or k.startswith("lr/")]
    ys = [v for k in lr for v in series(rows, k)[1]]
    if ys and max(ys) == min(ys):
        out.append((None, f"The learning rate was constant: {fmt(ys[0])}."))
    elif lr:
        png = curve_png(rows, lr, "learning rate", "lr", log=bool(ys) and min(ys) > 0 and max(ys) / min(ys) > 50)
        if png:
            out.append((png, "Learning rate at the end of each epoch"))
    return out


def heatmap_png(matrix: np.ndarray, classes: list[str], counts: np.ndarray | None) -> bytes:
    c = len(classes)
    side = min(8.0, max(3.6, 0.34 * c + 1.2))
    fig, ax = _new_figure(side, side, (0.6, 0.1, 0.55, 0.3))
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ticks = range(c)
    size = 10 if c <= 12 else 8
    ax.set_xticks(ticks, [str(s) for s in classes], fontsize=size, rotation=90 if max(map(len, classes)) > 3 else 0)
    ax.set_yticks(ticks, [str(s) for s in classes], fontsize=size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (rows sum to 1)", fontsize=11)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                v = matrix[i, j]
                if v >= 0.005 or (counts is not None and counts[i, j]):
                    ax.text(j, i, f"{v:.2f}".lstrip("0") if v < 0.995 else "1", ha="center", va="center",
                            fontsize=7 if c > 12 else 9, color="white" if v > 0.55 else "black")
    return _figure_png(fig)


def reliability_png(cal: dict) -> bytes | None:
    bins = [b for b in cal.get("bins", []) if isinstance(b, dict)]
    if not bins:
        return None
    fig, ax = _new_figure(4.6, 4.0, (0.6, 0.15, 0.5, 0.3))
    used = [b for b in bins if b.get("count")]
    lo = np.array([b["lo"] for b in used], float)
    hi = np.array([b["hi"] for b in used], float)
    acc = np.array([b["accuracy"] for b in used], float)
    conf = np.array([b["confidence"] for b in used], float)
    ax.bar(lo, acc, width=hi - lo, align="edge", color="#4c78a8", edgecolor="white", label="accuracy")
    ax.bar(lo, conf - acc, bottom=acc, width=hi - lo, align="edge", color="none", edgecolor="#e45756",
           hatch="//", linewidth=0.8, label="gap to confidence")
    ax.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ece = cal.get("ece")
    ax.set_title("reliability" + (f": ECE {ece:.3f}" if isinstance(ece, (int, float)) else ""), fontsize=11)
    ax.legend(fontsize=8, loc="upper left")
    return _figure_png(fig)


def _to_png(array: np.ndarray, scale: int) -> bytes:
    """An (H, W) or (H, W, 3) array in [0, 1] as a PNG, upscaled by `scale` with nearest neighbours."""
    from PIL import Image

    a = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    im = Image.fromarray(a)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def upscaled(png: bytes, target: int = 480) -> bytes:
    """A small pixel-art PNG (an image grid) upscaled by an integer factor to about `target`
    pixels wide, nearest neighbour, so 8x8 digits stay crisp in any viewer."""
    from PIL import Image

    im = Image.open(io.BytesIO(png))
    k = max(1, target // max(1, im.width))
    if k == 1:
        return png
    im = im.resize((im.width * k, im.height * k), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def display_images(x: np.ndarray, normalizer: dict) -> np.ndarray:
    """Model inputs (N, C, H, W) -> displayable (N, H, W[, 3]) in [0, 1]: the run's normalization
    undone, then each image stretched to its own range when it is outside [0, 1]."""
    x = np.asarray(x, np.float32)
    if x.ndim == 3:
        x = x[:, None]
    mean = np.asarray(normalizer.get("mean", [0.0]), np.float32).reshape(-1)
    std = np.asarray(normalizer.get("std", [1.0]), np.float32).reshape(-1)
    if x.ndim == 4 and normalizer.get("kind") == "image" and len(mean) in (1, x.shape[1]) and len(std) in (1, x.shape[1]):
        x = x * std.reshape(1, -1, 1, 1) + mean.reshape(1, -1, 1, 1)
    out = []
    for im in x:
        lo, hi = float(im.min()), float(im.max())
        if lo < -0.02 or hi > 1.02:
            im = (im - lo) / (hi - lo) if hi > lo else np.zeros_like(im)
        out.append(im[0] if im.shape[0] == 1 else im[:3].transpose(1, 2, 0))
    return np.stack(out) if out else np.zeros((0, 1, 1), np.float32)


def reconstructions_png(png: bytes, in_shape: list) -> bytes | None:
    """reconstructions.png with each row labelled "input" or "reconstruction" (the plug-in tiles
    input rows and their reconstruction rows alternately)."""
    from PIL import Image

    im = np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float32) / 255
    h = int(in_shape[-2]) if len(in_shape) >= 2 else 0
    if h <= 0 or (im.shape[0] + 1) % (h + 1):
        return None
    rows = (im.shape[0] + 1) // (h + 1)
    width_in = min(6.0, max(3.6, im.shape[1] / 20))
    fig, ax = _new_figure(width_in + 1.3, width_in * im.shape[0] / im.shape[1] + 0.2)
    ax.imshow(im, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(rows)],
                  ["input" if r % 2 == 0 else "reconstruction" for r in range(rows)], fontsize=9)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.tick_params(length=0)
    return _figure_png(fig, tight=True)


def montage_png(files: list[Path], count: int = 6) -> tuple[bytes, list[int]] | None:
    """A few of a GAN's samples/epoch-NNN.png side by side (the first, the last and evenly
    spaced ones between), each titled with its epoch."""
    from PIL import Image

    pairs = []
    for p in files:
        m = re.fullmatch(r"epoch-(\d+)\.png", p.name)
        if m:
            pairs.append((int(m.group(1)), p))
    if not pairs:
        return None
    pairs.sort()
    idx = sorted({round(i) for i in np.linspace(0, len(pairs) - 1, min(count, len(pairs)))})
    chosen = [pairs[i] for i in idx]
    cols = min(3, len(chosen))
    rows = -(-len(chosen) // cols)
    fig = _new_figure(2.3 * cols, 2.5 * rows)[0]
    fig.clear()
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.3 / (2.5 * rows), wspace=0.08, hspace=0.15)
    for n, (epoch, p) in enumerate(chosen):
        ax = fig.add_subplot(rows, cols, n + 1)
        ax.imshow(np.asarray(Image.open(p).convert("RGB")), interpolation="nearest")
        ax.set_title(f"epoch {epoch}", fontsize=10)
        ax.set_axis_off()
    return _figure_png(fig), [e for e, _ in chosen]


# --- sections --------------------------------------------------------------------------------------
def header(f: RunFiles) -> str:
    s, m, cfg = f.summary, f.meta, f.cfg
    facts: list[tuple[str, str]] = [("task", esc(cfg.task))]
    sizes = m.get("sizes") or {}
    env = f.raw_config.get("env") if isinstance(f.raw_config.get("env"), dict) else {}
    source = m.get("source") or env.get("id") or cfg.data.name
    data = esc(source)
    if sizes:
        order = sorted(sizes, key=lambda k: (["train", "val", "test"] + [k]).index(k))
        data += " &middot; " + ", ".join(f"{esc(k)} {fmt(sizes[k])}" for k in order)
    if data:
        facts.append(("data", data))
    classes = _json(f.path / "classes.json") or {}
    balance = classes.get("train_balance")
    if isinstance(balance, dict) and balance:
        counts = [v for v in balance.values() if isinstance(v, (int, float))]
        ratio = f" (largest / smallest {max(counts) / min(counts):.2f})" if counts and min(counts) > 0 else ""
        facts.append(("class balance (train)", ", ".join(f"{esc(k)}: {fmt(v)}" for k, v in balance.items()) + esc(ratio)))
    model = cfg.model.get("name", "") if isinstance(cfg.model, dict) else ""
    params = s.get("parameters") or s.get("params")
    counts_by_module = parameter_count(f.path / "model.safetensors") if not isinstance(params, int) else {}
    if isinstance(params, int):
        model += f" &middot; {params:,} parameters"
    elif counts_by_module:
        total = sum(counts_by_module.values())
        per = (" (" + ", ".join(f"{esc(k)} {v:,}" for k, v in counts_by_module.items()) + ")"
               if len(counts_by_module) > 1 else "")
        model = f"{esc(model)} &middot; {total:,} parameters{per}"
    else:
        model = esc(model)
    facts.append(("model", model))
    if "device" in s:
        facts.append(("device", esc(s["device"])))
    if "train_seconds" in s:
        t = s["train_seconds"]
        speed = f" &middot; {s['samples_per_second']:,.0f} samples/s" if s.get("samples_per_second") else ""
        facts.append(("training time", f"{_duration(t)}{speed}"))
    epochs = s.get("epochs", f.epochs[-1]["epoch"])
    planned = cfg.train.epochs
    ep = fmt(epochs) + (f" of {fmt(planned)}" if planned and planned != epochs else "")
    if s.get("best_epoch") is not None:
        ep += f" &middot; best epoch {fmt(s['best_epoch'])} by {esc(f.monitor)}"
    facts.append(("epochs", ep))
    if "seed" in s:
        facts.append(("seed", fmt(s["seed"])))
    state = "" if f.summary else '<p class="notmet">Unfinished: the run has no summary.json yet.</p>'
    items = "".join(f"<div><b>{k}</b>{v}</div>" for k, v in facts)
    return (f"<header><h1>{esc(f.name())}</h1>"
            + (f'<p class="desc">{esc(cfg.description)}</p>' if cfg.description else "")
            + f'{state}<div class="facts">{items}</div>{targets(f)}</header>')


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def targets(f: RunFiles) -> str:
    if not f.expect:
        return ""
    rows = []
    for key, e in f.expect.items():
        sign = "&le;" if monitor_mode(key) == "min" else "&ge;"
        target = e.get("target")
        bar = fmt(target)
        if isinstance(target, str) and e.get("target_value") is not None:
            bar = f"{esc(target)} ({fmt(e['target_value'])})"
        verdict = '<span class="met">met</span>' if e.get("met") else '<span class="notmet">NOT met</span>'
        value = fmt(e["value"]) if e.get("value") is not None else "missing"
        rows.append([esc(key).replace("/", "/<wbr>"), verdict, value, f"{sign} {bar}"])
    return "<h3>Targets ([expect])</h3>" + table(["metric", "", "value", "target"], rows, cls="expect", wrap=(0, 3))


def diagnosis(f: RunFiles) -> str:
    d = f.summary.get("diagnosis")
    if not isinstance(d, dict):
        return ""
    parts = [f'<section id="diagnosis"><h2>Diagnosis</h2><p class="label">{esc(d.get("label", ""))}</p>']
    for k, v in d.items():
        if k not in ("label", "evidence", "remedies") and isinstance(v, str):
            parts.append(f"<p>{esc(v)}</p>")
    ev = d.get("evidence")
    if isinstance(ev, dict) and ev:
        parts.append("<h3>Evidence</h3>" + table(["measure", "value"], [[esc(k), fmt(v)] for k, v in ev.items()],
                                                 wrap=(1,)))
    rem = d.get("remedies")
    if isinstance(rem, (list, tuple)) and rem:
        parts.append("<h3>Try</h3>" + "".join(f"<pre><code>{esc(r)}</code></pre>" for r in rem))
    return "".join(parts) + "</section>"


def results(f: RunFiles) -> str:
    """The test metrics, with any baseline/<name>_<metric> beside its metric."""
    s = f.summary
    tests = [k for k in s if k.startswith(("test/", "eval/", "samples/")) and isinstance(s[k], (int, float))]
    if not tests:
        return ""
    names = {k.split("/", 1)[1]: k for k in tests}
    baselines: dict[str, dict[str, float]] = {}
    other = []
    for k, v in s.items():
        if not k.startswith("baseline/") or not isinstance(v, (int, float)):
            continue
        rest = k.split("/", 1)[1]
        for metric in sorted(names, key=len, reverse=True):
            if rest.endswith("_" + metric):
                baselines.setdefault(rest[: -len(metric) - 1], {})[metric] = v
                break
        else:
            other.append((k, v))
    cols = list(baselines)
    rows = [[esc(k), fmt(s[k]), *[fmt(baselines[b][n]) if n in baselines[b] else "" for b in cols]]
            for n, k in names.items()]
    rows += [[esc(k), fmt(v), *[""] * len(cols)] for k, v in other]
    val = [k for k in s if k.startswith("val/") and isinstance(s[k], (int, float))]
    extra = ("<p>Validation: " + ", ".join(f"{esc(k)} {fmt(s[k])}" for k in val) + "</p>") if val else ""
    return ('<section id="results"><h2>Results</h2>'
            + (f"<p>Beside the test metrics: the baselines ({', '.join(esc(b) for b in cols)}) on the same test "
               "split.</p>" if cols else "")
            + table(["metric", "this run", *[esc(b) for b in cols]], rows) + extra + "</section>")


def curves_section(f: RunFiles, skip: set[str] = frozenset()) -> str:
    figs = curves(f, skip)
    if not figs:
        return ""
    return ('<section id="curves"><h2>Learning curves</h2><div class="figs">'
            + "".join(figure(png, cap) for png, cap in figs if png) + "</div>"
            + "".join(f"<p>{esc(cap)}</p>" for png, cap in figs if png is None) + "</section>")


def classification(f: RunFiles) -> str:
    c = _json(f.path / "classes.json")
    if not isinstance(c, dict):
        return ""
    classes = [str(x) for x in c.get("classes", [])]
    parts = ['<section id="classes"><h2>Classes</h2>']
    worst = c.get("worst_class") or {}
    if worst:
        parts.append(f"<p>Worst class: <b>{esc(worst.get('class'))}</b> (F1 {fmt(worst.get('f1'))}, "
                     f"{fmt(worst.get('gap_to_mean'))} below the mean F1).</p>")
    per = [p for p in c.get("per_class", []) if isinstance(p, dict)]
    if per:
        hl = {i for i, p in enumerate(per) if str(p.get("class")) == str(worst.get("class"))}
        parts.append("<h3>Per class (test)</h3>" + table(
            ["class", "precision", "recall", "F1", "support"],
            [[esc(p.get("class")), _fixed(p.get("precision")), _fixed(p.get("recall")), _fixed(p.get("f1")),
              fmt(p.get("support"))] for p in per], hl))
    figs = []
    counts = np.asarray(c["confusion"], float) if c.get("confusion") else None
    norm = c.get("confusion_normalized")
    if norm is None and counts is not None:
        norm = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    if norm is not None and classes and np.asarray(norm).shape == (len(classes), len(classes)):
        figs.append(figure(heatmap_png(np.asarray(norm, float), classes, counts),
                           "Normalized confusion matrix of the test split: row = true class, column = predicted"))
    cal = c.get("calibration")
    if isinstance(cal, dict):
        png = reliability_png(cal)
        if png:
            figs.append(figure(png, "Reliability diagram: accuracy per confidence bin (test split); the "
                                    f"expected calibration error is {fmt(cal.get('ece'))}"))
    if figs:
        parts.append('<div class="figs">' + "".join(figs) + "</div>")
    mc = [p for p in c.get("most_confused", []) if isinstance(p, dict)]
    if mc:
        parts.append("<h3>Most confused pairs</h3>" + table(
            ["true", "predicted as", "count"], [[esc(p.get("true")), esc(p.get("predicted")), fmt(p.get("count"))]
                                                for p in mc]))
    parts.append(top_losses(f, classes))
    return "".join(parts) + "</section>"


def top_losses(f: RunFiles, classes: list[str]) -> str:
    p = f.path / "predictions.npz"
    if not p.is_file():
        return ""
    with np.load(p, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    if "top_loss_index" not in d or "probs" not in d or "y" not in d:
        return ""
    idx = d["top_loss_index"].astype(int).reshape(-1)
    probs, y = d["probs"], d["y"].astype(int).reshape(-1)
    loss = d.get("top_loss_loss", np.full(len(idx), np.nan)).reshape(-1)

    def name(i: int) -> str:
        return classes[i] if 0 <= i < len(classes) else str(i)

    caps = []
    for n, i in enumerate(idx):
        pred = int(np.argmax(probs[i]))
        caps.append((name(int(y[i])), name(pred), float(probs[i][pred]), float(loss[n]) if n < len(loss) else math.nan))
    head = "<h3>Highest-loss test examples</h3>"
    if "top_loss_text" in d:
        texts = [str(t) for t in d["top_loss_text"].reshape(-1)]
        rows = [[esc(t), esc(a), esc(b), fmt(pp), fmt(lo)] for t, (a, b, pp, lo) in zip(texts, caps)]
        return head + table(["text", "true", "predicted", "p(predicted)", "loss"], rows, cls="texts", wrap=(0,))
    x = d.get("top_loss_x")
    if x is None or x.ndim < 3:
        return ""
    ims = display_images(x, f.meta.get("normalizer") or {})
    scale = max(1, 96 // max(1, ims.shape[2]))
    cells = []
    for im, (a, b, pp, lo) in zip(ims, caps):
        cap = f"true {esc(a)}<br>predicted {esc(b)} ({pp:.2f})<br>loss {fmt(lo)}"
        cells.append(f'<figure>{img(_to_png(im, scale), f"true {a}, predicted {b}", True)}'
                     f"<figcaption>{cap}</figcaption></figure>")
    return head + '<div class="gallery">' + "".join(cells) + "</div>"


def forecast(f: RunFiles) -> str:
    png = f.png("forecast.png")
    if png is None:
        return ""
    return ('<section id="forecast"><h2>Forecast</h2>'
            + figure(png, "The test part: the model's forecasts against the actual values and the baselines "
                          "(the baselines' scores are in Results, beside the test metrics)")
            + "</section>")


def generative(f: RunFiles, has_loss_curves: bool = False) -> tuple[str, set[str]]:
    figs, used = [], set()
    in_shape = f.meta.get("in_shape") or []
    gan = f.cfg.task == "gan" or (f.path / "samples").is_dir()
    for name, note in PICTURE_NOTES.items():
        png = f.png(name)
        if png is None or (name == "losses.png" and has_loss_curves):  # the learning curves show them, readably
            continue
        if name == "reconstructions.png":
            labelled = reconstructions_png(png, in_shape)
            if labelled:
                figs.append(figure(labelled, note + ": rows of inputs, each followed by its reconstructions"))
                continue
            note += " (rows alternate: input, reconstruction)"
        if name == "samples.png":
            note = "Samples from fixed noise at the end of training" if gan else "Samples from the prior"
        big = name not in ("latent.png", "losses.png")
        figs.append(figure(upscaled(png) if big else png, note, pixelated=big))
    if gan:
        m = montage_png(sorted((f.path / "samples").glob("epoch-*.png")))
        if m:
            figs.append(figure(m[0], "Training progress: the same fixed noise at epochs "
                               + ", ".join(str(e) for e in m[1])))
        fre = [k for k in ("val/frechet",) if series(f.epochs, k)[0]]
        if fre:
            png = curve_png(f.epochs, fre, "Fréchet distance (lower is better)", "frechet",
                            f.summary.get("best_epoch") if f.monitor in fre else None)
            figs.append(figure(png, "val/frechet per epoch: distance between generated and real images in "
                                    "the feature space of a fixed classifier"))
            used.update(fre)
    if not figs:
        return "", used
    return '<section id="pictures"><h2>Pictures</h2><div class="figs">' + "".join(figs) + "</div></section>", used


def reinforcement(f: RunFiles) -> tuple[str, set[str]]:
    keys = list(dict.fromkeys(k for r in f.epochs for k in r))
    ret = [k for k in keys if k.startswith(("rollout/", "val/")) and "return" in k and not k.endswith("_std")]
    length = [k for k in keys if k.startswith(("rollout/", "val/")) and ("length" in k or k.endswith("/len")
                                                                         or "len_" in k)]
    if not ret and not length:
        return "", set()
    figs = []
    if ret:
        png = curve_png(f.epochs, ret, "episode return", "return")
        if png:
            figs.append(figure(png, "Episode return per epoch: training rollouts and greedy validation episodes"))
    if length:
        png = curve_png(f.epochs, length, "episode length", "steps")
        if png:
            figs.append(figure(png, "Episode length per epoch"))
    return ('<section id="rl"><h2>Agent</h2><div class="figs">' + "".join(figs) + "</div></section>",
            set(ret) | set(length))


def page(title: str, body: str, foot: str) -> str:
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}<footer>{foot}</footer></main></body></html>\n")


def render(f: RunFiles) -> str:
    rl, rl_keys = reinforcement(f)
    pics, pic_keys = generative(f, has_loss_curves=any("loss" in k for r in f.epochs for k in r))
    body = [header(f), diagnosis(f), results(f), curves_section(f, rl_keys | pic_keys),
            classification(f), forecast(f), pics, rl]
    v = f.summary.get("versions") or {}
    foot = (f"Written by deepstep {esc(v.get('deepstep', ''))} on {esc(time.strftime('%Y-%m-%d %H:%M'))} from the "
            f"run directory {esc(f.path.resolve())}"
            + (" &middot; " + ", ".join(f"{esc(k)} {esc(x)}" for k, x in v.items() if k != "deepstep") if v else ""))
    return page(f"{f.name()} report", "".join(body), foot)


def write_report(run_path: Path | str, summary: dict | None = None, out: Path | str | None = None) -> Path:
    """Write RUN/report.html (or `out`) from the run directory alone; `summary` replaces
    summary.json (the plug-in passes the live one: summary.json is written after it). Returns
    the file written."""
    f = RunFiles(run_path, summary)
    dest = Path(out) if out is not None else f.path / "report.html"
    text = render(f)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, text.encode("utf-8"))
    return dest


# --- several runs -----------------------------------------------------------------------------------
def write_comparison(run_paths: list[Path | str], out: Path | str = "report-compare.html") -> Path:
    """One page comparing runs: validation loss and the monitored metric per epoch overlaid, the
    config keys that differ, and the results (test/*, train_seconds)."""
    runs = [RunFiles(p) for p in run_paths]
    labels = _labels(runs)
    figs = []
    monitors = list(dict.fromkeys(r.monitor for r in runs))
    for key in dict.fromkeys(["val/loss", *monitors]):
        fig, ax = _new_figure()
        drawn = 0
        for r, lab in zip(runs, labels):
            x, y = series(r.epochs, key)
            if x:
                ax.plot(x, y, marker="o" if len(x) <= 30 else None, markersize=3, label=lab)
                drawn += 1
        if drawn:
            ax.set_title(key, fontsize=11)
            ax.set_xlabel("epoch")
            ax.set_ylabel(key.split("/", 1)[-1])
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(fontsize=8)
            figs.append(figure(_figure_png(fig), f"{key} per epoch, every run"))
    flat = [flatten(r.raw_config) for r in runs]
    keys = sorted(set().union(*flat))
    differ = [k for k in keys if len({json.dumps(d.get(k), sort_keys=True, default=str) for d in flat}) > 1]
    cfg_rows = [[esc(k).replace(".", ".<wbr>"), *[esc(json.dumps(d[k], default=str)) if k in d else "&mdash;" for d in flat]] for k in differ]
    res_keys = list(dict.fromkeys(k for r in runs for k in r.summary
                                  if k.startswith(("test/", "eval/", "samples/", "baseline/"))
                                  and isinstance(r.summary[k], (int, float))))
    res_keys += ["epochs", "train_seconds"]
    res_rows = [[esc(k), *[fmt(r.summary[k]) if k in r.summary else "&mdash;" for r in runs]] for k in res_keys]
    for key in dict.fromkeys(k for r in runs for k in r.expect):
        res_rows.append([f"target {esc(key)}", *[
            ('<span class="met">met</span>' if r.expect[key].get("met") else '<span class="notmet">NOT met</span>')
            if key in r.expect else "&mdash;" for r in runs]])
    head = ["", *[esc(lab) for lab in labels]]
    runs_list = "".join(f"<li><b>{esc(lab)}</b>: {esc(r.path)}</li>" for lab, r in zip(labels, runs))
    body = (f"<header><h1>Comparison of {len(runs)} runs</h1><ul>{runs_list}</ul></header>"
            '<section id="curves"><h2>Curves</h2><div class="figs">' + "".join(figs) + "</div></section>"
            '<section id="config"><h2>Config keys that differ</h2>'
            + (table(["key", *head[1:]], cfg_rows, wrap=tuple(range(len(runs) + 1))) if cfg_rows else "<p>The configs are identical.</p>")
            + '</section><section id="results"><h2>Results</h2>' + table(["metric", *head[1:]], res_rows)
            + "</section>")
    dest = Path(out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, page("deepstep comparison", body,
                            f"Written by deepstep on {esc(time.strftime('%Y-%m-%d %H:%M'))}").encode("utf-8"))
    return dest


def _labels(runs: list[RunFiles]) -> list[str]:
    names = [r.path.name for r in runs]
    if len(set(names)) < len(names):
        names = [str(r.path) for r in runs]
    return names


@PLUGINS.register("report", tags=("default",))
class Report(Plugin):
    """Writes RUN/report.html at the end: one self-contained page (header, targets, diagnosis, results beside baselines, learning curves and the task's pictures); `deepstep report RUN` writes it again."""

    name = "report"
    order = 90  # last: after every plug-in that writes files or summary keys

    def applies_to(self, run) -> bool:
        return run.dir is not None

    def on_finish(self, run, summary: dict) -> None:
        t = time.perf_counter()
        try:
            path = write_report(run.path, summary=summary)
        except Exception as e:  # noqa: BLE001 - a page must never cost a finished training its summary.json
            print(f"report: could not write {run.path / 'report.html'} ({type(e).__name__}: {e}); "
                  f"write it later with `deepstep report {run.path}`", file=sys.stderr)
            return
        if run.verbose:
            print(f"report: {path} ({time.perf_counter() - t:.2f} s)")
