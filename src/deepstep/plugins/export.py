"""`deepstep export RUN`: a finished run's model as one ONNX (or TorchScript) file that reads raw
inputs and returns the run's natural output, checked against torch before it is kept.

What each graph reads and returns (the batch axis is dynamic everywhere):

    classify          raw inputs (normalization folded in) or token ids  -> class probabilities
    regress           raw inputs                                          -> values
    forecast          raw windows (B, C, window) in the series' units     -> (B, horizon, K) in those units
    autoencode / vae  encoder: images in [0, 1] -> code (AE) or (mu, logvar) (VAE);
                      decoder: code -> reconstruction in [0, 1] (a VAE's Bernoulli means): two files
    gan               the generator: latent codes (B, latent_dim) -> images in [0, 1]
    dqn / ppo         the policy: raw observations -> Q values (DQN) or action logits (PPO)
                      (the run's observation normalization folded in; argmax + action_start = action)

Text runs read token ids (B, max_length), right-padded with 0, as the run's tokenizer writes
them; the tokenizer (tokenizer.json) is copied beside the export. Recurrent and Transformer
models are exported through their `exportable()` form (models/rnn.py, models/transformer.py,
models/bert.py): the same function without packing or cutting batches to their longest row, which
no exporter can follow; rows of different lengths in one batch stay exact.

Exporters: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript; needs `onnx` and
`onnxscript`) first; where it raises or misses the tolerance, the TorchScript-based exporter
(`dynamo=False`). `--exporter dynamo|torchscript` forces one. The parity check runs every graph
with onnxruntime (TorchScript files: torch.jit.load) on at least 256 inputs — the test split's
(then validation, training, and variants of them: shorter texts, an empty one), played
observations for RL, seeded latent codes for generators — in batches of 1, 7 and the rest, against
the run's own torch forward; beyond rtol 1e-3 / atol 1e-5 the export fails (exit 2, with the
numbers) and the file is removed. The numbers are printed and written beside the file
(`FILE.json`, with what the graph reads and returns).

Also a plug-in: `deepstep train RECIPE --with export` writes RUN/export/ at the end of training
(and summary keys export/max_abs_diff, export/exporter; an export that fails is a warning and
export/error, and the run still finishes). The onnx libraries are imported only
here, when used: `pip install 'deepstep[export]'`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine.checkpoint import atomic_write
from ..engine.plugin import Plugin
from ..engine.runtime import evaluating, unwrap
from ..errors import UserError
from ..registry import DATASETS, MODELS, PLUGINS, TASKS

FORMATS = ("onnx", "torchscript")
EXPORTERS = ("auto", "dynamo", "torchscript")
RTOL, ATOL = 1e-3, 1e-5
MIN_INPUTS, MAX_INPUTS = 256, 1024
INSTALL = "pip install 'deepstep[export]'"


@dataclass
class Graph:
    """One graph to export: `module` (what is exported) must compute `reference` (the run's own
    torch forward) on `inputs`."""

    name: str  # model, encoder, decoder, generator, policy
    module: nn.Module
    reference: nn.Module
    inputs: torch.Tensor
    input_name: str
    output_names: list[str]
    about: dict = field(default_factory=dict)  # what the input and outputs mean, for FILE.json


# --- what a run exports -------------------------------------------------------------------------

class Standardize(nn.Module):
    """(x - mean) / std with per-channel (or per-feature) statistics: the run's normalization."""

    def __init__(self, mean, std, ndim: int):
        super().__init__()
        shape = (1, -1) + (1,) * (ndim - 2)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Pipeline(nn.Module):
    """raw input -> [normalization] -> model -> [softmax | scale back to units and (B, horizon, K)]."""

    def __init__(self, model: nn.Module, norm: nn.Module | None = None, probs: bool = False,
                 unscale: tuple | None = None):
        super().__init__()
        self.model, self.norm, self.probs = model, norm, probs
        if unscale is not None:  # forecasting: (mean, std, horizon) of the target columns
            mean, std, self.horizon = unscale
            self.register_buffer("y_mean", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer("y_std", torch.tensor(std, dtype=torch.float32))
        self.unscale = unscale is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(self.norm(x) if self.norm is not None else x)
        if self.probs:
            return out.softmax(-1)
        if self.unscale:
            return out.reshape(out.shape[0], self.horizon, -1) * self.y_std + self.y_mean
        return out


class Method(nn.Module):
    """One method of a model as a module's forward: `encode`, `decode`, the generator's images."""

    def __init__(self, model: nn.Module, what: str):
        super().__init__()
        self.model, self.what = model, what

    def forward(self, x: torch.Tensor):
        m = self.model
        if self.what == "encode":
            return m.encode(x)
        if self.what == "decode":
            return m.decode(x)
        if self.what == "vae-decode":
            return torch.sigmoid(m.decode(x))  # the Bernoulli means, as `reconstruct` returns them
        return (m.generate(x) + 1) / 2  # "images": the generator's tanh range rescaled to [0, 1]


def _exportable(model: nn.Module) -> nn.Module:
    make = getattr(model, "exportable", None)
    return make() if callable(make) else model


def graphs(run) -> list[Graph]:
    """The graphs a finished run exports, with their parity inputs (see the module docstring)."""
    inf = run.inference()  # clear errors for unfinished runs
    tags = MODELS.tags(run.cfg.model["name"])
    model = unwrap(inf.model).eval()
    if TASKS.has(run.cfg.task, "play"):
        obs, action_start = _observations(run)
        g = policy_graph(model, obs, run.cfg.task)
        g.about.update(env_id=run.meta["env_id"], action_start=action_start)
        return [g]
    if "gan" in tags:
        return [generator_graph(model)]
    x = _inputs(run)
    if "autoencoder" in tags:
        return autoencoder_graphs(model, x, run.cfg.task)
    meta = run.meta
    norm = None if meta.kind == "text" else (meta.normalizer["mean"], meta.normalizer["std"])
    if "forecast" in meta:
        fm = meta["forecast"]
        cols = [fm["columns"].index(t) for t in fm["target"]]
        unscale = ([meta.normalizer["mean"][i] for i in cols], [meta.normalizer["std"][i] for i in cols], fm["horizon"])
        g = supervised_graph(model, x, norm, unscale=unscale)
        g.about.update(output=f"forecasts (batch, {fm['horizon']}, {len(cols)}) of {', '.join(fm['target'])}, in "
                       "the series' units", window=fm["window"], columns=fm["columns"], target=fm["target"])
    else:
        g = supervised_graph(model, x, norm, probs=meta.loss == "cross_entropy")
        if meta.classes:
            g.about["classes"] = meta.classes
    g.about["task"] = run.cfg.task
    return [g]


def supervised_graph(model: nn.Module, x: torch.Tensor, norm: tuple | None = None, probs: bool = False,
                     unscale: tuple | None = None) -> Graph:
    """raw inputs -> probabilities (`probs`), forecasts in units (`unscale`) or values; `norm` is
    the run's (mean, std), folded in; token ids (int64 `x`) take none."""
    text = x.dtype == torch.long
    shape = ", ".join(map(str, x.shape[1:]))
    about = {"input": (f"token ids (batch, {shape}), int64, right-padded, as the run's tokenizer writes them" if text
                       else f"raw inputs (batch, {shape}), float32, as the data set loads them")}
    if probs:
        name, about["output"] = "probabilities", "class probabilities (batch, classes)"
    else:
        name, about["output"] = ("forecast" if unscale else "values"), "values (batch, outputs)"

    def make(m: nn.Module) -> nn.Module:
        standardize = Standardize(*norm, x.ndim) if norm is not None else None
        return Pipeline(m, standardize, probs=probs, unscale=unscale).eval()

    return Graph("model", make(_exportable(model)), make(model), x, "input", [name], about)


def autoencoder_graphs(model: nn.Module, x: torch.Tensor, task: str = "autoencode") -> list[Graph]:
    """An autoencoder's or VAE's encoder (images in [0, 1] -> code, or (mu, logvar)) and decoder
    (code -> reconstruction in [0, 1]), the decoder checked on the codes of `x`."""
    vae = hasattr(model, "latent_dim") and hasattr(model, "mu")
    enc = Method(model, "encode").eval()
    with torch.inference_mode():
        codes = enc(x)[0] if vae else enc(x)
    shape = ", ".join(map(str, x.shape[1:]))
    encoder = Graph("encoder", enc, enc, x, "input", ["mu", "logvar"] if vae else ["code"],
                    {"task": task, "input": f"images (batch, {shape}) in [0, 1]",
                     "output": "the posterior's mean and log-variance (batch, latent)" if vae else "codes (batch, latent)"})
    dec = Method(model, "vae-decode" if vae else "decode").eval()
    decoder = Graph("decoder", dec, dec, codes.clone(), "code", ["reconstruction"],
                    {"task": task, "input": f"codes (batch, {codes.shape[1]})",
                     "output": f"reconstructions (batch, {shape}) in [0, 1]" + (" (Bernoulli means)" if vae else "")})
    return [encoder, decoder]


def generator_graph(model: nn.Module) -> Graph:
    """A GAN's generator: latent codes -> images in [0, 1], checked on 256 seeded codes."""
    z = torch.randn(MIN_INPUTS, model.latent_dim, generator=torch.Generator().manual_seed(0))
    gen = Method(model, "images").eval()
    return Graph("generator", gen, gen, z, "z", ["images"],
                 {"task": "gan", "input": f"latent codes (batch, {model.latent_dim}) drawn from N(0, I)",
                  "output": f"images (batch, {', '.join(map(str, model.in_shape))}) in [0, 1]"})


def policy_graph(policy: nn.Module, obs: torch.Tensor, task: str) -> Graph:
    """A DQN's Q network or a PPO policy: raw observations -> Q values or action logits."""
    q = task == "dqn"
    return Graph("policy", policy.eval(), policy, obs, "observation", ["q_values" if q else "logits"],
                 {"task": task, "input": f"raw observations (batch, {', '.join(map(str, obs.shape[1:]))}), float32",
                  "output": f"{'Q values' if q else 'action logits'} (batch, actions); the action is argmax + "
                            "action_start"})


def _observations(run) -> tuple[torch.Tensor, int]:
    """At least MIN_INPUTS observations of greedy play, as the policy meets them deployed."""
    task = run.rebuild()
    envs = task.envs
    obs, _ = envs.reset(seed=[1000 + i for i in range(envs.num_envs)])
    seen = []
    with evaluating(*task.modules().values()):
        while sum(len(o) for o in seen) < MIN_INPUTS:
            seen.append(np.asarray(obs, dtype=np.float32))
            obs, *_ = envs.step(task.act(obs) + task.action_start)
    return torch.as_tensor(np.concatenate(seen)), int(task.action_start)


def _inputs(run) -> torch.Tensor:
    """At least MIN_INPUTS raw model inputs: the test split first (then validation and training),
    made up to MIN_INPUTS with noisy copies when the data set is small; text: `_text_inputs`."""
    if run.meta.kind == "text":
        return _text_inputs(run)
    task = run.rebuild()
    parts = [_split_inputs(task.data[k]) for k in ("test", "val", "train") if k in task.data]
    x = torch.cat(parts)[:MAX_INPUTS]
    if hasattr(task, "windows"):  # forecasting: the windows in the series' units
        x = torch.cat([torch.as_tensor(task.windows[k].x, dtype=torch.float32)
                       for k in ("test", "val", "train") if k in task.windows])[:MAX_INPUTS]
    elif run.meta.kind != "text":
        norm = run.meta.normalizer
        x = x.float() * _stat(norm["std"], x.ndim) + _stat(norm["mean"], x.ndim)  # undo the normalization
    gen = torch.Generator().manual_seed(0)
    while len(x) < MIN_INPUTS:  # small data sets: noisy copies (still in the inputs' range)
        lo, hi = x.min(), x.max()
        noisy = (x + 0.05 * (hi - lo) * torch.randn(x.shape, generator=gen)).clamp(lo, hi)
        x = torch.cat([x, noisy])
    return x.contiguous()


def _text_inputs(run) -> torch.Tensor:
    """Token ids of the run's test texts (then validation, training), tokenized with the run's
    tokenizer, plus a shortened copy of half of them and, for deepstep's own tokenizer, one empty
    text. The texts come from the data set and the run's split (no model is built: the saved
    tokenizer is all a text run needs)."""
    from ..data.arrays import split

    cfg, tok = run.cfg, run.inference().tokenizer
    arrays = DATASETS.get(cfg.data.name)(cfg.data)
    parts = split(arrays, cfg.data.val_split, cfg.data.test_split, cfg.train.seed,
                  stratify=run.meta.loss == "cross_entropy")
    texts = [t for k in ("test", "val", "train") if parts.get(k) is not None for t in parts[k][0]][:MAX_INPUTS]
    x = torch.as_tensor(tok.encode(texts))
    pad = getattr(tok, "pad_id", 0)
    short = x[: MIN_INPUTS // 2].clone()
    cut = (torch.rand(len(short), generator=torch.Generator().manual_seed(0)) * (short != pad).sum(1)).long().clamp(min=1)
    short[torch.arange(short.shape[1])[None, :] >= cut[:, None]] = pad  # a prefix of each text
    x = torch.cat([x, short])
    if not hasattr(tok, "hf"):  # deepstep's tokenizer writes an empty text as all padding, and the models define it
        x = torch.cat([x, torch.full((1, x.shape[1]), pad, dtype=x.dtype)])
    # (a pretrained tokenizer never writes a row of padding alone — [CLS] comes first; on one,
    # attention has no key to attend to, and torch and onnxruntime disagree: 0.05 measured)
    while len(x) < MIN_INPUTS:
        x = torch.cat([x, x])
    return x.contiguous()


def _split_inputs(d) -> torch.Tensor:
    """Up to MAX_INPUTS (normalized) inputs of a split, in memory or streamed (data.stream)."""
    if hasattr(d, "x"):
        return d.x[:MAX_INPUTS].cpu()
    return d.read(np.arange(min(len(d), MAX_INPUTS)))[0].cpu()


def _stat(values, ndim: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape((1, -1) + (1,) * (ndim - 2))


# --- exporting and checking ------------------------------------------------------------------

def _need(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"deepstep export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                        f"not installed: {INSTALL} (installs onnx, onnxscript and onnxruntime).")


@contextlib.contextmanager
def _quiet():
    """The exporters' progress lines, warnings and logging stay off the terminal (a failure's
    reason is reported from its exception)."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    text = text.replace("\x1b[96m", "").replace("\x1b[0m", "")
    return f"{type(e).__name__}: {text[:300]}"


def _example(g: Graph) -> tuple:
    return (g.inputs[:4].clone(),)  # batch 4: torch.export would specialize a batch of 1


def _onnx_export(g: Graph, path: Path, dynamo: bool) -> None:
    names = dict(input_names=[g.input_name], output_names=g.output_names)
    with _quiet(), torch.no_grad():
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(g.module, _example(g), str(path), dynamo=True, dynamic_shapes=({0: batch},),
                              external_data=False, verbose=False, **names)
        else:
            axes = {n: {0: "batch"} for n in [g.input_name, *g.output_names]}
            torch.onnx.export(g.module, _example(g), str(path), dynamo=False, dynamic_axes=axes, **names)


def _run_onnx(path: Path, g: Graph) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = g.inputs.numpy()
    return _batched(lambda b: session.run(None, {g.input_name: b}), x)


def _run_torchscript(path: Path, g: Graph) -> list[np.ndarray]:
    loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        return _batched(lambda b: [t.numpy() for t in _as_list(loaded(torch.as_tensor(b)))], g.inputs.numpy())


def _batched(fn, x: np.ndarray) -> list[np.ndarray]:
    """fn over batches of 1, 7 and the rest (the batch axis must really be dynamic), concatenated."""
    cuts = [0, 1, 8, len(x)]
    outs = [fn(x[a:b]) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]


def _as_list(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _reference(g: Graph) -> list[np.ndarray]:
    with torch.inference_mode():
        return [t.float().numpy() for t in _as_list(g.reference(g.inputs))]


def parity(got: list[np.ndarray], want: list[np.ndarray]) -> dict:
    """max |got - want| and whether every value is within atol + rtol * |want| (np.allclose)."""
    diff = max(float(np.abs(a.astype(np.float64) - b).max(initial=0.0)) for a, b in zip(got, want))
    rel = max(float((np.abs(a.astype(np.float64) - b) / np.maximum(np.abs(b), 1e-12)).max(initial=0.0))
              for a, b in zip(got, want))
    shapes_ok = all(a.shape == b.shape for a, b in zip(got, want)) and len(got) == len(want)
    ok = shapes_ok and all(np.allclose(a, b, rtol=RTOL, atol=ATOL) and np.isfinite(a).all() == np.isfinite(b).all()
                           for a, b in zip(got, want))
    return {"max_abs_diff": diff if shapes_ok else math.inf, "max_rel_diff": rel if shapes_ok else math.inf,
            "passed": bool(ok), "rtol": RTOL, "atol": ATOL}


def export_graph(g: Graph, path: Path, fmt: str = "onnx", exporter: str = "auto") -> dict:
    """Export one graph to `path` and check it; returns what FILE.json holds about it. A graph
    that no allowed exporter writes within the tolerance is a UserError (the file is removed)."""
    want = _reference(g)
    tried: list[str] = []
    if fmt == "torchscript":
        with _quiet(), torch.no_grad():
            try:
                traced = torch.jit.trace(g.module, _example(g), check_trace=False)
                traced.save(str(path))
            except Exception as e:  # noqa: BLE001 - any tracing failure is reported with its reason
                raise UserError(f"{g.name}: torch.jit.trace could not trace this model ({_first_line(e)}).") from None
        result = {"exporter": "torch.jit.trace", **parity(_run_torchscript(path, g), want)}
        if not result["passed"]:
            path.unlink(missing_ok=True)
            raise UserError(_failed(g, [f"torch.jit.trace: max abs diff {result['max_abs_diff']:.3g}"]))
        return result
    for dynamo in [d for d in (True, False) if exporter == "auto" or (exporter == "dynamo") == d]:
        label = "dynamo" if dynamo else "torchscript"
        try:
            _onnx_export(g, path, dynamo)
            result = parity(_run_onnx(path, g), want)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - the reason is shown, the next exporter tried
            tried.append(f"{label}: {_first_line(e)}")
            continue
        if result["passed"]:
            out = {"exporter": label, **result}
            if tried:
                out["fallback_because"] = tried
            return out
        tried.append(f"{label}: max abs diff {result['max_abs_diff']:.3g}, max rel diff {result['max_rel_diff']:.3g} "
                     f"on {len(g.inputs)} inputs")
    path.unlink(missing_ok=True)
    raise UserError(_failed(g, tried))


def _failed(g: Graph, tried: list[str]) -> str:
    return (f"the {g.name} graph could not be exported within rtol {RTOL:g} / atol {ATOL:g} of torch on "
            f"{len(g.inputs)} inputs. Tried: " + "; ".join(tried) + ".")


def check_args(fmt: str, out: str | Path | None, exporter: str) -> None:
    """The format, file name and exporter asked for, and the libraries they need (UserErrors)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not valid: use one of {', '.join(FORMATS)}.")
    if exporter not in EXPORTERS:
        raise UserError(f"--exporter {exporter!r} is not valid: use one of {', '.join(EXPORTERS)}.")
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    if out is not None and Path(out).suffix.lower() != suffix:
        raise UserError(f"--out {out}: a {fmt} file name ends in {suffix}.")
    if out is not None and Path(out).is_dir():
        raise UserError(f"--out {out} is a folder: give a file name ending in {suffix}.")
    if fmt == "onnx":
        _need("onnx", "onnxscript", "onnxruntime")


def export_run(run, fmt: str = "onnx", out: str | Path | None = None, exporter: str = "auto",
               verbose: bool = True) -> list[dict]:
    """Export run `run` (a `Run`) into `out` (default RUN/export/model.onnx; several graphs:
    OUT-encoder.onnx and OUT-decoder.onnx, ...). Returns one record per file (also FILE.json)."""
    check_args(fmt, out, exporter)
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    target = Path(out) if out else run.path / "export" / f"model{suffix}"
    t0 = time.perf_counter()
    todo = graphs(run)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {target}: cannot create its folder ({e.strerror}).") from None
    records = []
    for g in todo:
        path = target if len(todo) == 1 else target.with_name(f"{target.stem}-{g.name}{suffix}")
        record = {"file": path.name, "graph": g.name, "format": fmt, "run": str(run.path),
                  "recipe": run.cfg.recipe, "model": run.cfg.model["name"], **g.about,
                  "inputs": [{"name": g.input_name, "shape": ["batch", *g.inputs.shape[1:]],
                              "dtype": str(g.inputs.dtype).split(".")[-1]}],
                  "outputs": g.output_names}
        record["parity"] = {"inputs": len(g.inputs), "batches": [1, 7, len(g.inputs) - 8],
                            **export_graph(g, path, fmt, exporter)}
        record["exporter"] = record["parity"].pop("exporter")
        record["versions"] = _versions(fmt)
        tok = _copy_tokenizer(run, path)
        if tok:
            record["tokenizer"] = tok
        atomic_write(Path(f"{path}.json"), json.dumps(record, indent=1).encode())
        records.append(record)
        if verbose:
            p = record["parity"]
            fallback = " (after: " + "; ".join(p["fallback_because"]) + ")" if p.get("fallback_because") else ""
            print(f"{g.name}: {path} ({path.stat().st_size / 1e6:.2f} MB, exporter {record['exporter']}{fallback})")
            print(f"  parity on {p['inputs']} inputs ({'onnxruntime' if fmt == 'onnx' else 'torch.jit.load'} vs torch): "
                  f"max abs diff {p['max_abs_diff']:.3g}, max rel diff {p['max_rel_diff']:.3g} "
                  f"(limit rtol {RTOL:g} / atol {ATOL:g}): passed")
    if verbose:
        print(f"exported in {time.perf_counter() - t0:.1f} s; what each file reads and returns: FILE.json beside it")
    return records


def _copy_tokenizer(run, path: Path) -> str | None:
    """Text runs: the tokenizer beside the export (deepstep's tokenizer.json, or the pretrained
    tokenizer's folder); returns its name."""
    if run.meta.kind != "text":
        return None
    src = run.path / "tokenizer.json"
    if src.is_file():
        dest = path.with_name(f"{path.stem}.tokenizer.json")
        shutil.copyfile(src, dest)
        return dest.name
    folder = run.path / "tokenizer"
    if folder.is_dir():
        dest = path.with_name(f"{path.stem}.tokenizer")
        shutil.copytree(folder, dest, dirs_exist_ok=True)
        return dest.name
    return None


def _versions(fmt: str) -> dict:
    out = {"torch": torch.__version__}
    if fmt == "onnx":
        import onnx
        import onnxruntime

        out.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return out


@PLUGINS.register("export")
class Export(Plugin):
    """Exports the trained model to RUN/export/model.onnx at the end of training, checked against
    torch with onnxruntime (as `deepstep export RUN` does); adds export/max_abs_diff and
    export/exporter to the summary. Choose it with `--with export`."""

    name = "export"
    order = 80  # after best weights (-100) and the evaluations: it exports the final weights

    def applies_to(self, run) -> bool:
        return run.dir is not None

    def on_finish(self, run, summary: dict) -> None:
        try:
            records = export_run(run, verbose=run.verbose > 0)
        except UserError as e:  # the run itself is fine: it finishes, and says why nothing was exported
            print(f"warning: export: {e}", file=sys.stderr)
            summary["export/error"] = str(e)
            return
        summary["export/max_abs_diff"] = max(r["parity"]["max_abs_diff"] for r in records)
        summary["export/exporter"] = ",".join(sorted({r["exporter"] for r in records}))
