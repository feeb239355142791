"""Attributions for image and text classifiers (`deepstep explain RUN`), with two checks of their
honesty; the default plug-in `explanations` explains 4 test examples of every classification run
for its report.

    explain(run, "saliency")                      the first 8 test images of the run
    explain(run, "grad-cam", inputs=["a.png"])    image files / .npy as `deepstep predict` reads them
    explain(text_run, "integrated-gradients")     text (lstm, gru, rnn, transformer, bert): per token
    explain(transformer_run, "attention")         each layer's attention drawn, tokens by attention rollout

Methods (Captum): `saliency` (|d logit / d input|), `integrated-gradients` (baseline: zeros in
normalized space, i.e. the training mean image; 32 steps), `occlusion` (a window of about 1/7 of
the image side, 2x2 on 8x8 digits and 4x4 on 28x28, stride half the window, filled with a blank
pixel) and `grad-cam` (LayerGradCam on `model.target_layer()`, conv models only, upsampled
bilinearly to the input size). The target is the predicted class unless `target` names one.

Every call also measures, on the same inputs and target:

- the model-randomization check (Adebayo et al. 2018, "Sanity checks for saliency maps"): the
  Spearman rank correlation between the absolute attributions of the trained model and of the same
  architecture with freshly initialized weights (seed 12345), per input, averaged. A map that
  explains the model must change when the model's weights are destroyed: the check passes when
  |rho| < 0.5 (RHO_THRESHOLD; the paper shows maps, not a bar: 0.5 is ours). An input whose map is
  constant on either model has no rank correlation; it counts as 0 and is counted in `undefined`.
- a deletion test: the top 0, 10, ..., 50 % of pixels by attribution (summed over channels) are set
  to a blank pixel (the normalized value of raw input 0) and the target's probability followed; the
  area under that curve (the mean over the six points) is compared with the same for random pixel
  orders (3 orders, seed 0). Removing what the map calls important should hurt more than removing
  pixels at random: the check passes when the method's area is lower.

Written to OUT (default RUN/explain): explain.json (per method: its inputs, predictions, checks and
seconds; calls with other methods add to it), explain-<method>.npz (inputs x in normalized space,
attributions of the same shape, targets) and one PNG per input (the input beside its heatmap).
Captum is imported only when a method runs.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..engine.checkpoint import atomic_write
from ..engine.plugin import Plugin
from ..engine.runtime import evaluating
from ..errors import UserError, unknown
from ..models.layers import create_model, reload_options
from ..registry import MODELS, PLUGINS, TASKS

METHODS = ("saliency", "integrated-gradients", "occlusion", "grad-cam")
RHO_THRESHOLD = 0.5
DELETION_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
RANDOM_ORDERS = 3
RANDOM_SEED = 12345
IG_STEPS = 32
TEXT_METHODS = ("integrated-gradients",)  # and "attention" for models that return attention weights


# --- what can be explained ----------------------------------------------------------------------
def check_explainable(run) -> None:
    """A UserError unless `run` is a finished image classifier."""
    task, name = run.cfg.task, run.cfg.model.get("name", "")
    if not TASKS.has(task, "predict"):
        raise UserError(f"'{run.path}' is a {task} run: `deepstep explain` attributes the predictions of image "
                        "classifiers (task classify, e.g. digits-cnn, digits-mlp, fashion-cnn) and this run "
                        "does not classify.")
    run.inference()  # a clear error for an unfinished run
    meta = run.meta
    if meta.loss != "cross_entropy" or not meta.classes:
        raise UserError(f"'{run.path}' is a regression run (loss {meta.loss}): `deepstep explain` needs a classifier.")
    if not MODELS.has(name, "classifier"):
        raise UserError(f"Model '{name}' of '{run.path}' is not a classifier (tag 'classifier'): nothing to explain.")
    if meta.kind == "text":
        if token_embedding(run.model()) is None:
            raise UserError(f"Model '{name}' of '{run.path}' has no token embedding (nn.Embedding): "
                            "`deepstep explain` attributes text runs of models lstm, gru, rnn, transformer "
                            "and bert.")
        return
    if meta.kind != "image" or len(meta.in_shape) != 3:
        raise UserError(f"'{run.path}' reads {meta.kind} inputs of shape {tuple(meta.in_shape)}: `deepstep explain` "
                        "attributes image classifiers (C, H, W) and text classifiers only.")


def token_embedding(model) -> torch.nn.Embedding | None:
    """A text model's token embedding: our models' `embed`, or a Hugging Face encoder's input
    embeddings (BERT's word embeddings); None when it has neither."""
    emb = getattr(model, "embed", None)
    if isinstance(emb, torch.nn.Embedding):
        return emb
    get = getattr(getattr(model, "encoder", None), "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return emb if isinstance(emb, torch.nn.Embedding) else None


def cpu_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model in evaluation mode on the CPU, where the attributions are computed: itself, or a
    copy when it lives on a GPU (a live run's model stays where training left it)."""
    import copy

    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()
    return model.eval()


def has_attention(model) -> bool:
    """Whether the model hands out its attention weights (models/transformer.py: `attention(x)`)."""
    return callable(getattr(model, "attention", None)) and getattr(model, "tokens", False)


def methods_for(run) -> list[str]:
    """The methods that work for this run's model (grad-cam needs a conv target layer, attention a
    model that returns its attention weights)."""
    if run.meta.kind == "text":
        return list(TEXT_METHODS) + (["attention"] if has_attention(run.model()) else [])
    cam = _cam_layer(run.model(), tuple(run.meta.in_shape)) is not None
    return [m for m in METHODS if m != "grad-cam" or cam]


def _cam_layer(model, in_shape):
    layer = model.target_layer() if hasattr(model, "target_layer") else None
    if layer is None:
        return None
    probe = {}

    def hook(module, inputs, output) -> None:  # returns None: the output stays as it is
        probe["shape"] = tuple(output.shape) if torch.is_tensor(output) else ()

    h = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(torch.zeros(1, *in_shape))
    except Exception:  # noqa: BLE001 - no probe possible: treat as not a feature map
        return None
    finally:
        h.remove()
    return layer if len(probe.get("shape", ())) == 4 else None


def resolve_method(method: str | None, run) -> str:
    text = run.meta.kind == "text"
    if method is None:
        return TEXT_METHODS[0] if text else METHODS[0]
    if text and method == "attention":
        if not has_attention(run.model()):
            raise UserError(f"--method attention draws a Transformer's attention weights; model "
                            f"'{run.cfg.model['name']}' of '{run.path}' does not return them (models: "
                            "transformer). Use integrated-gradients.")
        return method
    if text and method not in TEXT_METHODS:
        raise UserError(f"Text runs are explained with {', '.join(TEXT_METHODS)} (Captum's "
                        f"LayerIntegratedGradients on the token embedding) or, for the transformer, "
                        f"attention; not '{method}'.")
    if method not in METHODS:
        raise unknown("method", method, METHODS)
    if method == "grad-cam":
        if _cam_layer(run.model(), tuple(run.meta.in_shape)) is None:
            raise UserError(f"grad-cam needs a conv model whose target_layer() is a feature map (B, C, H, W); "
                            f"model '{run.cfg.model['name']}' has none. Methods that work for this run: "
                            f"{', '.join(m for m in METHODS if m != 'grad-cam')}.")
    return method


def resolve_target(target: str | None, classes: list[str]) -> int | None:
    """A class name or index -> index; None: each input's predicted class."""
    if target is None:
        return None
    if target in classes:
        return classes.index(target)
    try:
        i = int(target)
    except ValueError:
        i = -1
    if 0 <= i < len(classes):
        return i
    raise UserError(f"--target {target!r} is not one of this run's classes: {', '.join(classes)} "
                    f"(a name or an index 0..{len(classes) - 1}).")


# --- attributions -----------------------------------------------------------------------------------
def occlusion_window(in_shape) -> tuple[int, int]:
    """(window, stride) for an image side: about 1/7 of it, at least 2 (8x8: 2, 1; 28x28: 4, 2)."""
    w = max(2, min(in_shape[1], in_shape[2]) // 7)
    return w, max(1, w // 2)


def attribute(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, method: str,
              blank: torch.Tensor | None = None) -> torch.Tensor:
    """Attributions of `method` for model inputs `x` (N, C, H, W) and class indices `target` (N,),
    of x's shape. `blank` (C,) is the normalized value of an empty pixel (occlusion's fill)."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency

    model.eval()
    x = x.detach().float().clone().requires_grad_(method != "occlusion")
    t = target.long()
    if method == "saliency":
        a = Saliency(model).attribute(x, target=t, abs=True)
    elif method == "integrated-gradients":
        a = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=IG_STEPS,
                                                 internal_batch_size=256)
    elif method == "occlusion":
        w, s = occlusion_window(x.shape[1:])
        fill = 0.0 if blank is None else blank.float().reshape(1, -1, 1, 1).expand_as(x).contiguous()
        a = Occlusion(model).attribute(x, sliding_window_shapes=(x.shape[1], w, w), strides=(x.shape[1], s, s),
                                       baselines=fill, target=t, perturbations_per_eval=64)
    elif method == "grad-cam":
        layer = model.target_layer()
        cam = LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)
        a = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")
        a = a.expand(-1, x.shape[1], -1, -1) / x.shape[1]  # each channel a share: the channel sum is the map
    else:
        raise unknown("method", method, METHODS)
    return a.detach().float().reshape(x.shape)


def probabilities(model, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]).float().softmax(-1) for i in range(0, len(x), batch)])


# --- the two checks (and integrated gradients' completeness) ------------------------------------
def completeness(full: torch.Tensor, base: torch.Tensor, attributions: torch.Tensor) -> dict:
    """Integrated gradients' completeness: its attributions should add up to the target logit of the
    input minus that of the baseline; the gap (here with IG_STEPS steps) says how far the integral's
    approximation is off, per input, absolute and relative to |logit difference|."""
    diff = (full - base).double()
    gap = (attributions.reshape(len(diff), -1).sum(1).double() - diff).abs()
    rel = gap / diff.abs().clamp(min=1e-6)
    return {"logit_difference": [round(float(v), 4) for v in diff], "gap": [round(float(v), 4) for v in gap],
            "max_relative_gap": round(float(rel.max()), 4) if len(rel) else 0.0, "steps": IG_STEPS}


# --- the two checks -------------------------------------------------------------------------------
def randomization_check(attr_fn, model, random_model, x, target, mask: torch.Tensor | None = None) -> dict:
    """Spearman rho between |attributions| of the trained and the re-initialized model, averaged over
    inputs. `attr_fn(model, x, target) -> attributions`: any method, or a deliberately broken one.
    `mask` (the attributions' shape): the positions compared (text: the real tokens, not padding,
    whose attribution is 0 for both models and would make any two maps look alike)."""
    from scipy.stats import spearmanr

    a = attr_fn(model, x, target).reshape(len(x), -1).abs().numpy()
    b = attr_fn(random_model, x, target).reshape(len(x), -1).abs().numpy()
    keep = np.ones_like(a, bool) if mask is None else mask.reshape(len(x), -1).numpy().astype(bool)
    rhos, undefined = [], 0
    for u, v in ((u[k], v[k]) for u, v, k in zip(a, b, keep)):
        if len(u) < 2 or np.ptp(u) == 0 or np.ptp(v) == 0:
            rhos.append(0.0)
            undefined += 1
            continue
        rhos.append(float(spearmanr(u, v).statistic))
    rho = float(np.mean(rhos)) if rhos else 0.0
    return {"rho": round(rho, 4), "per_input": [round(r, 4) for r in rhos], "undefined": undefined,
            "threshold": RHO_THRESHOLD, "passed": bool(abs(rho) < RHO_THRESHOLD)}


def _deletion_curve(model, x, target, order, blank) -> np.ndarray:
    """Target probability after blanking the first k% pixels of `order` (N, H*W), k in DELETION_FRACTIONS."""
    n, c, h, w = x.shape
    hw = h * w
    fill = blank.float().reshape(1, c, 1)
    rows = []
    for frac in DELETION_FRACTIONS:
        k = int(round(frac * hw))
        xd = x.reshape(n, c, hw).clone()
        if k:
            idx = torch.as_tensor(order[:, :k]).long()
            mask = torch.zeros(n, hw, dtype=torch.bool)
            mask.scatter_(1, idx, True)
            xd = torch.where(mask[:, None, :], fill.expand(n, c, hw), xd)
        p = probabilities(model, xd.reshape(n, c, h, w))
        rows.append(p[torch.arange(n), target].numpy())
    return np.stack(rows, 1)  # (N, len(DELETION_FRACTIONS))


def deletion_check(model, x, target, attributions, blank) -> dict:
    """Area under the deletion curve (mean target probability over the fractions) of the method's
    pixel order against random orders; lower is better."""
    n, _, h, w = x.shape
    score = attributions.reshape(n, x.shape[1], h * w).sum(1).numpy()
    order = np.argsort(-score, axis=1, kind="stable")
    curve = _deletion_curve(model, x, target, order, blank).mean(0)
    rng = np.random.default_rng(0)
    rand = np.mean([_deletion_curve(model, x, target, np.stack([rng.permutation(h * w) for _ in range(n)]), blank)
                    .mean(0) for _ in range(RANDOM_ORDERS)], 0)
    area, rand_area = float(curve.mean()), float(rand.mean())
    return {"fractions": list(DELETION_FRACTIONS), "curve": [round(float(v), 4) for v in curve],
            "random_curve": [round(float(v), 4) for v in rand], "area": round(area, 4),
            "random_area": round(rand_area, 4), "passed": bool(area < rand_area)}


def random_model(run) -> torch.nn.Module:
    """The run's architecture with fresh weights (seed 12345), built as the task's inference builds it."""
    cfg, meta = run.cfg, run.meta
    options = reload_options(cfg.model["name"], run.path, {k: v for k, v in cfg.model.items() if k != "name"})
    vocab = (meta.vocab_size,) if meta.vocab_size else ()  # text: the factory's third data argument
    with torch.random.fork_rng(devices=[]):  # the caller's generator (a live run's) is left as it was
        torch.manual_seed(RANDOM_SEED)
        m = create_model(cfg.model["name"], tuple(meta.in_shape), meta.num_outputs, *vocab, **options)
    return m.eval()


# --- inputs and pictures ------------------------------------------------------------------------------
def _inputs(run, paths, n):
    """(x normalized (N, C, H, W), names, true labels or None)."""
    meta = run.meta
    if paths:
        from ..data.inputs import read_inputs

        raw, names = read_inputs(list(paths), tuple(meta.in_shape), meta.kind, run.cfg.data.label_column)
        return run.preprocess(raw).float(), names, [None] * len(names)
    data = run.rebuild().data["test"]
    k = min(n, len(data))
    if hasattr(data, "x"):
        x, y = data.x[:k], data.y[:k]
    else:  # streamed from disk
        x, y = data.read(np.arange(k))
    return x.detach().cpu().float(), [f"test[{i}]" for i in range(k)], [int(v) for v in y.cpu()]


def _blank(run) -> torch.Tensor:
    """The normalized value of raw input 0 (an empty pixel), per channel."""
    c = run.meta.in_shape[0]
    return run.preprocess(np.zeros((1, *run.meta.in_shape), np.float32))[0].reshape(c, -1)[:, 0].float()


def _png(path: Path, image: np.ndarray, attr: np.ndarray, title: str, method: str, signed: bool) -> None:
    """The input (normalization undone) beside its attribution heatmap, nearest-neighbour pixels."""
    from matplotlib.figure import Figure

    from .report_parts import figure_png

    fig = Figure(figsize=(6.4, 3.5))
    fig.subplots_adjust(left=0.02, right=0.86, bottom=0.08, top=0.88, wspace=0.08)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest", vmin=0, vmax=1)
    if signed:
        m = float(np.abs(attr).max()) or 1.0
        im = ax2.imshow(attr, cmap="RdBu_r", interpolation="nearest", vmin=-m, vmax=m)
    else:
        im = ax2.imshow(attr, cmap="inferno", interpolation="nearest", vmin=0, vmax=float(attr.max()) or 1.0)
    for ax, label in ((ax1, "input"), (ax2, method)):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(label, fontsize=9, labelpad=2)
    cax = fig.add_axes((0.875, 0.12, 0.02, 0.72))
    fig.colorbar(im, cax=cax).ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, figure_png(fig))


def _safe(name: str) -> str:
    """A file-name part for an input name: 'digit.png' -> 'digit', 'a.npy[3]' -> 'a3', 'test[0]' -> 'test0'."""
    base = Path(str(name)).name
    for suffix in (".npy", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".csv"):
        base = base.replace(suffix, "")
    return "".join(ch for ch in base if ch.isalnum() or ch in "-_")[:40] or "input"


# --- the command ----------------------------------------------------------------------------------------
def explain(run, method: str | None, inputs: list[str] | None = None, target: str | None = None,
            out: Path | str | None = None, n: int = 8, checks: bool = True) -> dict:
    """Attribute `method` for the inputs (default: the first `n` test examples), run the two checks,
    write OUT/explain.json, OUT/explain-<method>.npz and a PNG per input; returns this method's entry."""
    from .report_parts import display_images

    check_explainable(run)
    if not 1 <= n <= 1000:
        raise UserError(f"--n {n} must be between 1 and 1000.")
    method = resolve_method(method, run)
    if run.meta.kind == "text":
        return explain_text(run, inputs=inputs, target=target, out=out, n=n, checks=checks, method=method)
    model = cpu_model(run.model())
    classes = list(run.meta.classes)
    fixed = resolve_target(target, classes)
    x, names, labels = _inputs(run, inputs, n)
    probs = probabilities(model, x)
    pred = probs.argmax(1)
    t = pred.clone() if fixed is None else torch.full_like(pred, fixed)
    blank = _blank(run)
    import captum.attr  # noqa: F401 - imported before the clock starts: `seconds` times the method alone

    start = time.perf_counter()
    attr = attribute(model, x, t, method, blank)
    seconds = time.perf_counter() - start
    entry: dict = {"method": method, "target": "predicted class" if fixed is None else classes[fixed],
                   "seconds": round(seconds, 4), "inputs": []}
    if method == "integrated-gradients":
        with torch.no_grad():
            rows = torch.arange(len(x))
            entry["completeness"] = completeness(model(x)[rows, t], model(torch.zeros_like(x))[rows, t], attr)
    if checks:
        start = time.perf_counter()
        entry["randomization"] = randomization_check(lambda m, xx, tt: attribute(m, xx, tt, method, blank),
                                                     model, random_model(run), x, t)
        entry["deletion"] = deletion_check(model, x, t, attr, blank)
        entry["check_seconds"] = round(time.perf_counter() - start, 4)
        entry["passed"] = entry["randomization"]["passed"] and entry["deletion"]["passed"]
    dest = Path(out) if out is not None else run.path / "explain"
    dest.mkdir(parents=True, exist_ok=True)
    shown = display_images(x.numpy(), run.meta.normalizer)
    signed = method in ("integrated-gradients", "occlusion")
    for i, name in enumerate(names):
        p, ti = int(pred[i]), int(t[i])
        true = classes[labels[i]] if labels[i] is not None and 0 <= labels[i] < len(classes) else None
        title = (f"true {true} / " if true is not None else "") + f"predicted {classes[p]} ({float(probs[i, p]):.3f})"
        if ti != p:
            title += f"; target {classes[ti]} ({float(probs[i, ti]):.3f})"
        png = dest / f"{i:02d}-{_safe(name)}-{method}.png"
        _png(png, shown[i], attr[i].sum(0).numpy(), title, method, signed)
        entry["inputs"].append({"input": str(name), "true": true, "predicted": classes[p],
                                "probability": round(float(probs[i, p]), 4), "target": classes[ti], "png": png.name})
    return _save(run, dest, method, entry, classes, x, attr, t, pred)


def _save(run, dest: Path, method: str, entry: dict, classes: list[str], x, attr, t, pred) -> dict:
    """explain-<method>.npz (inputs, attributions, targets, predictions) and explain.json."""
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x.numpy(), attributions=attr.numpy(), target=t.numpy(), predicted=pred.numpy())
    atomic_write(dest / f"explain-{method}.npz", buf.getvalue())
    _write_doc(run, dest, method, entry, classes)
    entry["dir"] = str(dest)
    return entry


def _write_doc(run, dest: Path, method: str, entry: dict, classes: list[str]) -> None:
    doc_path = dest / "explain.json"
    doc = {}
    if doc_path.is_file():
        try:
            doc = json.loads(doc_path.read_text())
        except (OSError, ValueError):
            doc = {}
    if not isinstance(doc, dict) or not isinstance(doc.get("methods"), dict):
        doc = {"methods": {}}
    doc.update({"run": str(run.path), "model": run.cfg.model.get("name"), "classes": classes,
                "rho_threshold": RHO_THRESHOLD, "deletion_fractions": list(DELETION_FRACTIONS)})
    doc["methods"][method] = entry
    atomic_write(doc_path, (json.dumps(doc, indent=1) + "\n").encode())


# --- text: LayerIntegratedGradients on the token embedding -----------------------------------------
def attribute_text(model, ids: torch.Tensor, target: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Per-token attributions (N, T): Integrated Gradients on `model.embed`'s output, from the zero
    embedding (what the padding id gives) to each token's, summed over the embedding; the padding
    mask stays the input's. This is what Captum's LayerIntegratedGradients computes, run as Captum's
    IntegratedGradients on the embedding output: LayerIntegratedGradients runs the model on baseline
    ids, and a zero-id baseline changes the transformer's length (it drops all-padding columns)."""
    from captum.attr import IntegratedGradients

    model.eval()
    embed = token_embedding(model)
    out = torch.zeros(ids.shape, dtype=torch.float32)
    for lo in range(0, len(ids), chunk):
        x, t = ids[lo:lo + chunk], target[lo:lo + chunk].long()
        seen = {}
        h = embed.register_forward_hook(lambda m, i, o, seen=seen: seen.__setitem__("emb", o.detach()))
        try:
            with torch.no_grad():
                model(x)
        finally:
            h.remove()

        def forward(emb, x_rep):
            hook = embed.register_forward_hook(lambda m, i, o: emb)  # the scaled embedding instead
            try:
                return model(x_rep)
            finally:
                hook.remove()

        emb = seen["emb"]
        a = IntegratedGradients(forward).attribute(emb, baselines=torch.zeros_like(emb), target=t,
                                                   additional_forward_args=(x,), n_steps=IG_STEPS)
        out[lo:lo + chunk, : a.shape[1]] = a.sum(-1).detach().float()
    return out * (ids != pad_id(model))


def pad_id(model) -> int:
    return int(getattr(model, "pad_id", 0))


def text_deletion_check(model, ids, target, scores, seed: int = 0, unk: int = 1, pad: int = 0) -> dict:
    """The deletion test on tokens: the top 0..50 % of each text's tokens (by attribution) replaced by
    the unknown token (`unk`: id 1 for deepstep's tokenizer, [UNK] for BERT's), against random orders."""
    rng = np.random.default_rng(seed)

    def curve(orders) -> np.ndarray:
        rows = []
        for frac in DELETION_FRACTIONS:
            xd = ids.clone()
            for i, order in enumerate(orders):
                k = int(round(frac * len(order)))
                xd[i, torch.as_tensor(order[:k], dtype=torch.long)] = unk
            rows.append(probabilities(model, xd)[torch.arange(len(ids)), target].numpy())
        return np.stack(rows, 1).mean(0)

    real = [np.flatnonzero(r.numpy() != pad) for r in ids]
    own = curve([p[np.argsort(-sc.numpy()[p], kind="stable")] for p, sc in zip(real, scores)])
    rand = np.mean([curve([rng.permutation(p) for p in real]) for _ in range(RANDOM_ORDERS)], 0)
    area, rand_area = float(own.mean()), float(rand.mean())
    return {"fractions": list(DELETION_FRACTIONS), "curve": [round(float(v), 4) for v in own],
            "random_curve": [round(float(v), 4) for v in rand], "area": round(area, 4),
            "random_area": round(rand_area, 4), "passed": bool(area < rand_area), "removed_with": "<unk>"}


def token_html(tokens: list[str], scores: np.ndarray) -> str:
    from .report_parts import esc

    m = float(np.abs(scores).max()) or 1.0
    spans = []
    for tok, sc in zip(tokens, scores):
        a = min(1.0, abs(float(sc)) / m)
        color = f"rgba(214,39,40,{a:.2f})" if sc > 0 else f"rgba(31,119,180,{a:.2f})"
        spans.append(f'<span title="{float(sc):.4f}" style="background:{color}">{esc(tok)}</span>')
    return " ".join(spans)


def attention_rollout(model, ids: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token scores (N, T) from a Transformer's attention (Abnar and Zuidema 2020, "Quantifying
    attention flow in transformers"): each layer's weights averaged over heads, the residual path added
    as 0.5 I + 0.5 A, the layers multiplied from the input up; the pooled output's row (the [CLS]
    position, or the mean of the real positions for mean pooling) then says how much each input token
    flows into what the head reads. `target` is unused (attention does not depend on the class); it is
    there so the checks can call every text method alike."""
    out = torch.zeros(ids.shape, dtype=torch.float32)
    with torch.no_grad(), evaluating(model):
        maps = model.attention(ids)  # L x (N, heads, T', T')
    roll = None
    for w in maps:
        a = w.float().mean(1)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1])
        a = a / a.sum(-1, keepdim=True)
        roll = a if roll is None else a @ roll
    cls = getattr(model, "cls", None) is not None
    if cls:
        row = roll[:, 0, 1:]
    else:
        real = (ids[:, : roll.shape[-1]] != pad_id(model)).float()
        row = (roll * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
    out[:, : row.shape[1]] = row
    return out * (ids != pad_id(model))


def _token_strings(tok, ids_row: np.ndarray) -> list[str]:
    hf = getattr(tok, "hf", None)
    if hf is not None:  # a pretrained tokenizer: its own pieces, [CLS] and [SEP] included
        return [str(t) for t in hf.convert_ids_to_tokens([int(j) for j in ids_row])]
    return [tok.decode([int(j)]) or "?" for j in ids_row]


def _unk_id(tok) -> int:
    hf = getattr(tok, "hf", None)
    return int(hf.unk_token_id) if hf is not None and hf.unk_token_id is not None else 1


def _attention_png(path: Path, maps: list[np.ndarray], tokens: list[str], title: str, limit: int = 32) -> None:
    """Each layer's attention (heads averaged) over the first `limit` positions, one panel a layer."""
    from matplotlib.figure import Figure

    from .report_parts import figure_png

    k = min(limit, len(tokens))
    n = len(maps)
    fig = Figure(figsize=(0.8 + 3.6 * n, 5.0))
    fig.subplots_adjust(left=0.8 / (0.8 + 3.6 * n) + 0.03, right=0.98, bottom=0.2, top=0.88, wspace=0.15)
    for i, m in enumerate(maps):
        ax = fig.add_subplot(1, n, i + 1)
        ax.imshow(m[:k, :k], cmap="viridis", interpolation="nearest", vmin=0, vmax=float(m[:k, :k].max()) or 1.0)
        ax.set_title(f"layer {i + 1}", fontsize=9)
        ax.set_xticks(range(k), [t[:10] for t in tokens[:k]], rotation=90, fontsize=6)
        ax.set_yticks(range(k), [t[:10] for t in tokens[:k]] if i == 0 else [""] * k, fontsize=6)
        ax.set_xlabel("attended position (key)", fontsize=7)
        if i == 0:
            ax.set_ylabel("attending position (query)", fontsize=7)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, figure_png(fig))


def explain_text(run, inputs=None, target=None, out=None, n: int = 8, checks: bool = True,
                 method: str = "integrated-gradients") -> dict:
    """Text runs: token attributions (integrated gradients, or attention rollout for
    `method="attention"`), the two checks, OUT/explain.html (tokens highlighted: red for the target
    class, blue against it), explain.json and explain-<method>.npz; attention also draws each input's
    attention maps per layer (a PNG per input)."""
    from .report_parts import esc

    model = cpu_model(run.model())
    classes = list(run.meta.classes)
    fixed = resolve_target(target, classes)
    if inputs:
        from ..data.text import read_texts

        texts, names, labels = read_texts(list(inputs), run.cfg.data, classes)
        labels = [classes.index(v) if v in classes else None for v in (labels or [None] * len(texts))]
    else:
        texts_all, y = run.rebuild().texts["test"]
        texts, labels = list(texts_all[:n]), [int(v) for v in np.asarray(y)[:n]]
        names = [f"test[{i}]" for i in range(len(texts))]
    ids = run.preprocess(texts).long().cpu()
    tok = run.inference().tokenizer
    pad, unk = pad_id(model), _unk_id(tok)
    probs = probabilities(model, ids)
    pred = probs.argmax(1)
    t = pred.clone() if fixed is None else torch.full_like(pred, fixed)
    attr_fn = attention_rollout if method == "attention" else attribute_text
    import captum.attr  # noqa: F401 - imported before the clock starts

    start = time.perf_counter()
    attr = attr_fn(model, ids, t)
    entry: dict = {"method": method, "target": "predicted class" if fixed is None else classes[fixed],
                   "seconds": round(time.perf_counter() - start, 4), "inputs": []}
    if method != "attention":
        with torch.no_grad():
            rows = torch.arange(len(ids))
            full = model(ids)[rows, t]
            h = token_embedding(model).register_forward_hook(lambda m, i, o: torch.zeros_like(o))
            try:
                base = model(ids)[rows, t]
            finally:
                h.remove()
        entry["completeness"] = completeness(full, base, attr)
    if checks:
        start = time.perf_counter()
        entry["randomization"] = randomization_check(attr_fn, model, random_model(run), ids, t, ids != pad)
        entry["deletion"] = text_deletion_check(model, ids, t, attr, unk=unk, pad=pad)
        entry["check_seconds"] = round(time.perf_counter() - start, 4)
        entry["passed"] = entry["randomization"]["passed"] and entry["deletion"]["passed"]
    dest = Path(out) if out is not None else run.path / "explain"
    dest.mkdir(parents=True, exist_ok=True)
    maps = model.attention(ids) if method == "attention" else None
    rows = []
    for i, name in enumerate(names):
        p, ti = int(pred[i]), int(t[i])
        keep = np.flatnonzero(ids[i].numpy() != pad)
        tokens = _token_strings(tok, ids[i, keep].numpy())
        scores = attr[i, keep].numpy()
        true = classes[labels[i]] if labels[i] is not None else None
        top = [tokens[j] for j in np.argsort(-scores)[:5]]
        rec = {"input": str(name), "true": true, "predicted": classes[p],
               "probability": round(float(probs[i, p]), 4), "target": classes[ti], "top_tokens": top,
               "tokens": tokens, "scores": [round(float(v), 5) for v in scores]}
        head = (f"true {true} / " if true is not None else "") + f"predicted {classes[p]} ({float(probs[i, p]):.3f})"
        if maps is not None:  # positions of the maps: [CLS] first when the model has one
            off = 1 if getattr(model, "cls", None) is not None else 0
            idx = np.concatenate([np.arange(off), keep + off]).astype(int)
            layer_maps = [m[i].float().mean(0).numpy()[np.ix_(idx, idx)] for m in maps]
            png = dest / f"{i:02d}-{_safe(name)}-attention.png"
            _attention_png(png, layer_maps, (["[CLS]"] if off else []) + tokens, f"{name}: {head}")
            rec["png"] = png.name
        entry["inputs"].append(rec)
        rows.append(f"<h3>{esc(name)}: {esc(head)}; target {esc(classes[ti])}</h3>"
                    f"<p class=tokens>{token_html(tokens, scores)}</p>")
    checks_html = "".join(f"<p>{esc(line.strip())}</p>" for line in summary_lines(entry))
    what = ("Attention rollout (the [CLS] position's attention, layers multiplied)" if method == "attention"
            else "Integrated gradients on the token embedding")
    colours = ("Darker: more attention flows from the token into the pooled output." if method == "attention"
               else "Red: evidence for the target class, blue: against it (hover for the value).")
    html = ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1"><title>explain</title>'
            "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto;padding:0 1em;line-height:1.9}"
            "span{padding:1px 2px;border-radius:3px}</style></head><body>"
            f"<h1>{esc(what)}: {esc(run.path)}</h1><p>{esc(colours)}</p>"
            f"{checks_html}{''.join(rows)}</body></html>\n")
    page = "explain.html" if method == "integrated-gradients" else f"explain-{method}.html"
    atomic_write(dest / page, html.encode())
    entry["html"] = page
    return _save(run, dest, method, entry, classes, ids, attr, t, pred)


def summary_lines(entry: dict) -> list[str]:
    """The printout of one method's checks."""
    lines = []
    r, d, c = entry.get("randomization"), entry.get("deletion"), entry.get("completeness")
    if c:
        worst = c["max_relative_gap"]
        lines.append(f"  completeness: attributions add up to the logit difference input - baseline within "
                     f"{worst:.1%} (worst input, {c['steps']} steps)"
                     + ("; over 10 %: the integral is poorly approximated for some inputs, treat them with care"
                        if worst > 0.1 else ""))
    if r:
        und = f", {r['undefined']} inputs with a constant map counted as 0" if r["undefined"] else ""
        lines.append(f"  model randomization: Spearman rho {r['rho']:.3f} between trained and re-initialized "
                     f"weights (passes when |rho| < {r['threshold']}{und}): "
                     f"{'passed' if r['passed'] else 'FAILED its sanity check'}")
    if d:
        lines.append(f"  deletion: area {d['area']:.3f} vs {d['random_area']:.3f} for random orders "
                     f"(passes when lower): {'passed' if d['passed'] else 'FAILED its sanity check'}")
    return lines


# --- the report's section ------------------------------------------------------------------------
def report_section(run_path: Path | str, per_method: int = 2) -> str:
    """HTML for report.html from RUN/explain/explain.json, or "" when there is none: a table of the
    checks per method (a failing method marked "failed its sanity check") and its first PNGs."""
    from .report_parts import esc, figure, fixed_digits, table

    folder = Path(run_path) / "explain"
    try:
        doc = json.loads((folder / "explain.json").read_text())
    except (OSError, ValueError):
        return ""
    methods = doc.get("methods") if isinstance(doc, dict) else None
    if not isinstance(methods, dict) or not methods:
        return ""
    rows, figs, texts, failed = [], [], [], set()
    for i, (name, e) in enumerate(methods.items()):
        if not isinstance(e, dict):
            continue
        r, d = e.get("randomization") or {}, e.get("deletion") or {}
        ok = bool(r.get("passed")) and bool(d.get("passed"))
        if r and d and not ok:
            failed.add(i)
        verdict = "passed" if ok else "failed its sanity check" if r and d else "not checked"
        rows.append([esc(name), fixed_digits(r.get("rho")), esc("passed" if r.get("passed") else "failed" if r else ""),
                     fixed_digits(d.get("area")), fixed_digits(d.get("random_area")),
                     esc("passed" if d.get("passed") else "failed" if d else ""), esc(verdict)])
        for rec in (e.get("inputs") or [])[:per_method]:
            if not isinstance(rec, dict):
                continue
            caption = (f"{name}: {rec.get('input')}, predicted {rec.get('predicted')} "
                       f"({fixed_digits(rec.get('probability'))})")
            f = folder / str(rec.get("png", ""))
            if rec.get("png") and f.is_file() and f.parent == folder:
                figs.append(figure(f.read_bytes(), caption))
            tokens, scores = rec.get("tokens"), rec.get("scores")
            if isinstance(tokens, list) and isinstance(scores, list) and len(tokens) == len(scores):
                try:
                    marked = token_html([str(t) for t in tokens], np.asarray(scores, dtype=float))
                except (TypeError, ValueError):
                    continue
                texts.append(f'<p class="tokens"><b>{esc(caption)}</b><br>{marked}</p>')
    thr = doc.get("rho_threshold", RHO_THRESHOLD)
    return ('<section id="explain"><h2>Attributions</h2>'
            f"<p>From the run's <code>explanations</code> plug-in and <code>deepstep explain</code>. Model randomization: Spearman rank correlation between "
            f"the attributions of the trained model and of re-initialized weights (a map that explains the "
            f"model changes: passes when |rho| &lt; {esc(thr)}). Deletion: mean probability of the target "
            f"class while the most attributed 0-50 % of pixels are blanked, against random orders (passes "
            f"when lower).{' Text: tokens red for the target class, blue against it.' if texts else ''}</p>"
            + table(["method", "rho", "randomization", "deletion area", "random area", "deletion", "verdict"],
                    rows, failed)
            + (f'<div class="figs">{"".join(figs)}</div>' if figs else "") + "".join(texts) + "</section>")


# --- every classification run: a few explanations in its report -----------------------------------
AUTO_EXAMPLES = 4  # 2 for models over BIG_MODEL parameters (a fine-tuned BERT: ~10 s an input)
BIG_MODEL = 5_000_000


def default_method(run) -> str:
    """What the report shows: Grad-CAM for conv models, saliency for other image models, integrated
    gradients on the token embedding for text."""
    if run.meta.kind == "text":
        return "integrated-gradients"
    return "grad-cam" if "grad-cam" in methods_for(run) else "saliency"


@PLUGINS.register("explanations", tags=("default",))
class Explanations(Plugin):
    """At the end of a classification run, explains 4 test examples (2 for models over 5M parameters; Grad-CAM on conv models, saliency on other image models, integrated gradients per token on text) with both sanity checks, into RUN/explain, which report.html shows; `deepstep explain` does more. Leave it out with plugins.skip = ["explanations"]."""

    name = "explanations"
    order = 80  # after the files the report reads, before the report (90)

    def applies_to(self, run) -> bool:
        return (run.dir is not None and TASKS.has(run.cfg.task, "predict")
                and MODELS.has(run.cfg.model.get("name", ""), "classifier"))

    def on_finish(self, run, summary: dict) -> None:
        start = time.perf_counter()
        try:
            check_explainable(run)
        except UserError:
            return  # a regression run, series inputs: nothing this plug-in explains
        method = default_method(run)
        big = sum(p.numel() for p in run.model().parameters()) > BIG_MODEL
        try:
            e = explain(run, method, n=AUTO_EXAMPLES // 2 if big else AUTO_EXAMPLES)
        except Exception as err:  # noqa: BLE001 - an explanation must never cost a finished run its summary
            print(f"explanations: could not explain {run.path} ({type(err).__name__}: {err}); try "
                  f"`deepstep explain {run.path}`", file=sys.stderr)
            return
        if run.verbose:
            verdict = "passed" if e.get("passed") else "FAILED"
            print(f"explanations: {method} on {len(e['inputs'])} test examples, sanity checks {verdict} "
                  f"({time.perf_counter() - start:.2f} s) -> {e['dir']}")
