"""report.html: one self-contained page per run, built from the run directory alone.

    write_report("runs/digits-mlp-...")            -> RUN/report.html
    write_comparison([run_a, run_b], "cmp.html")    -> runs overlaid, differing config, results

The page holds everything inline (matplotlib figures and the run's own PNGs as base64 data
URIs; no network, no JavaScript) and reads at phone width. It shows: the run's header (recipe,
task, data and split sizes, model and parameter count, device, time, epochs), the `[expect]`
targets met or not, the diagnosis (summary key "diagnosis") when there is one, the test metrics
beside any baseline/*, learning curves from the epoch records of metrics.jsonl, and by task:
per-class results, confusion matrix, highest-loss examples and a reliability diagram
(classes.json and predictions.npz), attributions (RUN/explain), the forecast picture, an
autoencoder's or GAN's pictures, an RL agent's return and episode length.

The plug-in "report" (default, last) writes it at the end of every run with a directory;
`deepstep report RUN` writes it again for an old run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..engine.checkpoint import atomic_write
from ..engine.logs import monitor_mode
from ..engine.plugin import Plugin
from ..registry import PLUGINS
from .explain import report_section
from .report_parts import (
    CSS,
    PICTURE_NOTES,
    RunFiles,
    curve_png,
    curves,
    display_images,
    esc,
    figure,
    figure_png,
    fixed_digits,
    flatten,
    fmt,
    heatmap_png,
    img,
    montage_png,
    new_figure,
    parameter_count,
    read_json,
    reconstructions_png,
    reliability_png,
    series,
    table,
    to_png,
    upscaled,
)


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
    classes = read_json(f.path / "classes.json") or {}
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
        facts.append(("device", _device(s)))
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


def _device(s: dict) -> str:
    """The summary's device, and the number of processes of a data-parallel (torchrun) run."""
    n = s.get("world_size", 1)
    return esc(s.get("device", "")) + (f" &times; {n} processes" if isinstance(n, int) and n > 1 else "")


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
    c = read_json(f.path / "classes.json")
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
            [[esc(p.get("class")), fixed_digits(p.get("precision")), fixed_digits(p.get("recall")), fixed_digits(p.get("f1")),
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


def _shorten(text: str, limit: int = 280) -> str:
    """A text for a table cell: at most `limit` characters, a long word cut too (a 1,900-letter
    chemical name would otherwise fill the page)."""
    words = [w if len(w) <= 40 else w[:37] + "..." for w in text.split()]
    out = " ".join(words)
    return out if len(out) <= limit else out[: limit - 3].rstrip() + "..."


def top_losses(f: RunFiles, classes: list[str]) -> str:
    p = f.path / "predictions.npz"
    if not p.is_file():
        return ""
    try:
        with np.load(p, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except Exception:  # a damaged file (any of numpy's, zipfile's or zlib's errors): the part is left out
        return ""
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
        texts = [_shorten(str(t)) for t in d["top_loss_text"].reshape(-1)]
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
        cells.append(f'<figure>{img(to_png(im, scale), f"true {a}, predicted {b}", True)}'
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
            classification(f), report_section(f.path), forecast(f), pics, rl]
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
        fig, ax = new_figure()
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
            figs.append(figure(figure_png(fig), f"{key} per epoch, every run"))
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

    @staticmethod
    def run_html(run) -> str:
        """How a `Run` shows itself in a notebook (engine.run.Run._repr_html_)."""
        return notebook_summary(run.path, run.summary or None)

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


# --- the notebook's view of a run (Run._repr_html_) ------------------------------------------------
NOTEBOOK_CSS = """
.deepstep-run{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;max-width:1060px;
border:1px solid #e1e4e8;border-radius:8px;padding:8px 12px;background:#fff}
.deepstep-run h3{font-size:1.1em;margin:.2em 0}
.deepstep-run p{margin:.25em 0}
.deepstep-run .facts{color:#4a535d;font-size:.92em}
.deepstep-run table{border-collapse:collapse;font-size:.92em;margin:.3em 0}
.deepstep-run th,.deepstep-run td{padding:2px 10px;border-bottom:1px solid #e6e8eb;text-align:left}
.deepstep-run .met{color:#0b6b2b;font-weight:700}
.deepstep-run .notmet{color:#b3261e;font-weight:700}
.deepstep-run .label{font-weight:700;color:#8a4b00}
.deepstep-run .figs{display:flex;flex-wrap:wrap;gap:10px;margin-top:6px}
.deepstep-run figure{margin:0;width:330px}
.deepstep-run img{max-width:100%;height:auto;display:block}
.deepstep-run .pix{image-rendering:pixelated}
.deepstep-run figcaption{font-size:.8em;color:#4a535d}
"""


def notebook_pictures(f: RunFiles, limit: int = 4) -> list[str]:
    """The report's key pictures for a notebook: the loss curve, then by task the confusion matrix,
    the forecast, samples or reconstructions, the agent's return, a first attribution map."""
    figs = []
    rl, _ = reinforcement(f)
    loss = [(png, cap) for png, cap in curves(f) if png and "loss" in cap.lower()]
    if loss:
        figs.append(figure(*loss[0]))
    c = read_json(f.path / "classes.json")
    if isinstance(c, dict) and c.get("confusion"):
        counts = np.asarray(c["confusion"], float)
        norm = np.asarray(c.get("confusion_normalized") or counts / np.maximum(counts.sum(1, keepdims=True), 1))
        classes = [str(x) for x in c.get("classes", [])]
        if norm.shape == (len(classes), len(classes)):
            figs.append(figure(heatmap_png(norm, classes, counts), "Confusion matrix (test), row-normalized"))
    png = f.png("forecast.png")
    if png:
        figs.append(figure(png, "Forecasts on the test part against the actual values and the baselines"))
    for name, caption in (("samples.png", "Samples"), ("reconstructions.png", "Test inputs and reconstructions")):
        png = f.png(name)
        if png:
            shown = reconstructions_png(png, f.meta.get("in_shape") or []) if name == "reconstructions.png" else None
            figs.append(figure(shown or upscaled(png), caption, pixelated=not shown))
    if rl:
        keys = [k for k in dict.fromkeys(k for r in f.epochs for k in r) if "return" in k and not k.endswith("_std")]
        png = curve_png(f.epochs, keys, "episode return", "return")
        if png:
            figs.append(figure(png, "Episode return per epoch"))
    first = sorted((f.path / "explain").glob("*.png")) if (f.path / "explain").is_dir() else []
    if first:
        figs.append(figure(first[0].read_bytes(), f"Attribution: {first[0].name}"))
    return figs[:limit]


def notebook_summary(run_path: Path | str, summary: dict | None = None) -> str:
    """A compact HTML summary of a finished run for Jupyter (`Run._repr_html_`): recipe and facts,
    the targets met or not, the diagnosis, the test metrics beside their baselines, the key
    pictures, and where the full report is."""
    f = RunFiles(run_path, summary)
    s = f.summary
    facts = [f.cfg.task, esc(f.meta.get("source") or f.cfg.data.name), esc(f.cfg.model.get("name", ""))]
    if "epochs" in s:
        facts.append(f"{fmt(s['epochs'])} epochs")
    if "train_seconds" in s:
        facts.append(f"{_duration(s['train_seconds'])} training on {_device(s)}")
    parts = [f'<div class="deepstep-run"><style>{NOTEBOOK_CSS}</style><h3>{esc(f.name())}</h3>',
             f'<p class="facts">{" &middot; ".join(facts)}</p>']
    if f.cfg.description:
        parts.append(f'<p class="facts">{esc(f.cfg.description)}</p>')
    for key, e in f.expect.items():
        sign = "&le;" if monitor_mode(key) == "min" else "&ge;"
        verdict = '<span class="met">met</span>' if e.get("met") else '<span class="notmet">NOT met</span>'
        parts.append(f"<p>target {esc(key)} {sign} {fmt(e.get('target_value', e.get('target')))}: "
                     f"{fmt(e.get('value'))} {verdict}</p>")
    d = s.get("diagnosis")
    if isinstance(d, dict) and d.get("label"):
        rem = d.get("remedies") or []
        parts.append(f'<p>diagnosis: <span class="label">{esc(d["label"])}</span>'
                     + (f" &middot; try: <code>{esc(rem[0])}</code>" if rem else "") + "</p>")
    keys = [k for k in s if k.startswith(("test/", "eval/", "samples/", "baseline/"))
            and isinstance(s[k], (int, float)) and not isinstance(s[k], bool)]
    if keys:
        parts.append(table(["metric", "value"], [[esc(k), fmt(s[k])] for k in keys]))
    figs = notebook_pictures(f)
    if figs:
        parts.append('<div class="figs">' + "".join(figs) + "</div>")
    report = f.path / "report.html"
    if report.is_file():
        try:
            shown = report.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            shown = report.resolve()
        parts.append(f'<p class="facts">The whole report: <a href="{esc(shown)}" target="_blank">{esc(shown)}</a> '
                     f"&middot; run directory {esc(f.path)}</p>")
    return "".join(parts) + "</div>"
