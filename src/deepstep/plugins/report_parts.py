"""The building blocks of report.html (plugins/report.py): HTML helpers, the reading of a run
directory (`RunFiles`) and the figures (learning curves, confusion heatmap, reliability diagram,
enlarged image grids, montages), each returned as PNG bytes for a data URI. No plug-in here."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..config import read_toml
from ..errors import UserError

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


def fixed_digits(value: Any, digits: int = 3) -> str:
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


def figure_png(fig, tight: bool = False) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, **({"bbox_inches": "tight", "pad_inches": 0.05} if tight else {}))
    return buf.getvalue()


def new_figure(w: float = 5.0, h: float = 3.2, margins: tuple[float, float, float, float] = (0.85, 0.15, 0.5, 0.3)):
    """A figure of w x h inches with one axes; `margins` (left, right, bottom, top) in inches,
    fixed: a layout engine would draw every figure twice (half the report's time)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no backend to choose

    fig = Figure(figsize=(w, h))
    left, right, bottom, top = margins
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h)
    return fig, fig.add_subplot()


def read_json(path: Path) -> dict | None:
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
    fig, ax = new_figure()
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
    return figure_png(fig)


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
    fig, ax = new_figure(side, side, (0.6, 0.1, 0.55, 0.3))
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
    return figure_png(fig)


def reliability_png(cal: dict) -> bytes | None:
    bins = [b for b in cal.get("bins", []) if isinstance(b, dict)]
    if not bins:
        return None
    fig, ax = new_figure(4.6, 4.0, (0.6, 0.15, 0.5, 0.3))
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
    return figure_png(fig)


def to_png(array: np.ndarray, scale: int) -> bytes:
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
    fig, ax = new_figure(width_in + 1.3, width_in * im.shape[0] / im.shape[1] + 0.2)
    ax.imshow(im, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(rows)],
                  ["input" if r % 2 == 0 else "reconstruction" for r in range(rows)], fontsize=9)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.tick_params(length=0)
    return figure_png(fig, tight=True)


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
    fig = new_figure(2.3 * cols, 2.5 * rows)[0]
    fig.clear()
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.3 / (2.5 * rows), wspace=0.08, hspace=0.15)
    for n, (epoch, p) in enumerate(chosen):
        ax = fig.add_subplot(rows, cols, n + 1)
        ax.imshow(np.asarray(Image.open(p).convert("RGB")), interpolation="nearest")
        ax.set_title(f"epoch {epoch}", fontsize=10)
        ax.set_axis_off()
    return figure_png(fig), [e for e, _ in chosen]


# --- sections --------------------------------------------------------------------------------------
