"""`deepstep` command line: list, options, train, resume, eval, predict, sample, play, report, explain,
tune, lr-find, scratch.

Every command that reads a run opens it as one `Run` (engine/run.py) and dispatches on the
capabilities its task declares in the registry ("predict", "reconstruct", "forecast", "sample",
"play"), never on task names. User errors exit with code 2 and one paragraph (no traceback);
success exits 0."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path

from .errors import UserError


def _parser() -> argparse.ArgumentParser:
    from .version import __version__

    p = argparse.ArgumentParser(prog="deepstep", description="Learn and practise deep learning: one engine, one CLI.")
    p.add_argument("--version", action="version", version=f"deepstep {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("list", help="recipes, models, data sets, tasks and plug-ins")
    s.add_argument("what", nargs="?", choices=["recipes", "models", "data", "tasks", "plugins"], help="show only this")

    s = sub.add_parser("options", help="every configurable key with its type, default and help")
    s.add_argument("model", nargs="?", help="also list this model's options")
    s.add_argument("--task", help="only the sections a run of this task has: the generic ones and its own "
                   "(see `deepstep list tasks`)")

    s = sub.add_parser("train", help="train a recipe; prints the run directory and test metrics")
    s.add_argument("recipe", help="recipe name (see `deepstep list`) or a path to a TOML file")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=3e-4 (repeatable; see `deepstep options`)")
    s.add_argument("--with", dest="plugins", action="append", default=[], metavar="PLUGIN",
                   help="add a plug-in to the run (repeatable; see `deepstep list plugins`), e.g. --with csv-log")
    s.add_argument("--run-dir", help="where to write the run (default runs/<recipe>-<time>)")
    s.add_argument("--quiet", action="store_true", help="no per-epoch output")
    s.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")

    s = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    s.add_argument("run_dir")
    s.add_argument("--quiet", action="store_true")

    s = sub.add_parser("eval", help="evaluate a finished run's weights on its validation and test splits")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    s.add_argument("--episodes", type=int, help="reinforcement-learning runs: greedy episodes to play "
                   "(default: the run's env.eval_episodes)")

    s = sub.add_parser("predict", help="classify inputs (images, .npy arrays, CSV rows), or forecast after a series file (CSV, .npy)")
    s.add_argument("run_dir")
    s.add_argument("inputs", nargs="+")
    s.add_argument("--top", type=int, default=1, help="show the K most likely classes")
    s.add_argument("--json", action="store_true", help="print JSON lines")
    s.add_argument("--out", help="autoencoder and VAE runs: folder for the reconstructions "
                   "(NAME-recon.png beside NAME.png inputs; default RUN/predictions)")

    s = sub.add_parser("sample", help="generate images from a GAN or VAE run into one PNG grid")
    s.add_argument("run_dir")
    s.add_argument("--n", type=int, default=64, help="number of images")
    s.add_argument("--out", default="samples.png", help="PNG file to write (default samples.png)")
    s.add_argument("--seed", type=int, default=0, help="seed of the latent codes")
    s.add_argument("--cols", type=int, default=8, help="images per row")

    s = sub.add_parser("play", help="play one greedy episode of a reinforcement-learning run; --gif saves it")
    s.add_argument("run_dir")
    s.add_argument("--gif", help="write the episode's frames to this GIF file")
    s.add_argument("--seed", type=int, default=0, help="seed of the episode's environment")
    s.add_argument("--max-steps", type=int, default=10000, help="end the episode after this many steps")

    s = sub.add_parser("report", help="write a run's report.html again, or compare several runs in one page")
    s.add_argument("run_dirs", nargs="+", metavar="RUN", help="one run: RUN/report.html; several: a comparison")
    s.add_argument("--out", help="several runs: the comparison's HTML file (default report-compare.html); "
                   "one run: write its report here instead of RUN/report.html")

    s = sub.add_parser("explain", help="attribute an image classifier's predictions (saliency, integrated "
                       "gradients, occlusion, Grad-CAM) and check the attributions' honesty")
    s.add_argument("run_dir")
    s.add_argument("inputs", nargs="*", help="image files or .npy arrays as `deepstep predict` reads them "
                   "(default: the first --n test examples)")
    s.add_argument("--method", help="saliency (default), integrated-gradients, occlusion or grad-cam (conv "
                   "models), or all; text runs (lstm, gru, rnn, transformer, bert): integrated-gradients on "
                   "the token embedding, highlighted in explain.html; transformer also: attention (each "
                   "layer's attention drawn, tokens scored by attention rollout)")
    s.add_argument("--target", help="the class to explain, a name or an index (default: the predicted class)")
    s.add_argument("--out", help="folder for explain.json, the arrays and the PNGs (default RUN/explain)")
    s.add_argument("--n", type=int, default=8, help="without INPUT: how many test examples (default 8)")

    s = sub.add_parser("export", help="export a run's model to ONNX (or TorchScript) for raw inputs, checked "
                       "against torch on 256+ inputs")
    s.add_argument("run_dir")
    s.add_argument("--format", default="onnx", help="onnx (default) or torchscript")
    s.add_argument("--out", help="file to write (default RUN/export/model.onnx; autoencoders: OUT-encoder.onnx "
                   "and OUT-decoder.onnx); FILE.json beside it says what it reads and returns")
    s.add_argument("--exporter", default="auto", help="ONNX exporter: auto (dynamo, else the TorchScript-based "
                   "one), dynamo or torchscript")

    s = sub.add_parser("tune", help="hyperparameter search with Optuna (TPE, median pruning on the validation "
                       "metric); resumable, parallel over one study storage")
    s.add_argument("recipe", help="recipe name or TOML file; its [tune] table is the default space")
    s.add_argument("--trials", type=int, default=20, help="the study's total number of trials (default 20), "
                   "shared by every process working on it")
    s.add_argument("--space", action="append", default=[], metavar="KEY=DIST",
                   help="a dimension: loguniform(a,b), uniform(a,b), int(a,b) or choice(x,y,...), e.g. "
                   "--space optim.lr=loguniform(1e-4,1e-1) (repeatable)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every trial (repeatable)")
    s.add_argument("--dir", help="the study folder: trial run directories, study.db, best.toml, plots "
                   "(default runs/<recipe>-tune)")
    s.add_argument("--storage", help="Optuna storage URL (default sqlite:///DIR/study.db); PostgreSQL or MySQL "
                   "to tune on several machines")
    s.add_argument("--study", help="study name in the storage (default the recipe's name)")
    s.add_argument("--timeout", type=float, help="start no new trial after this many seconds")

    s = sub.add_parser("lr-find", help="learning-rate range test: the rate grows exponentially over a few "
                       "hundred steps; plots the smoothed loss and suggests a rate")
    s.add_argument("recipe", help="recipe name or TOML file")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    s.add_argument("--steps", type=int, default=200, help="steps of the test (default 200)")
    s.add_argument("--start-lr", type=float, default=1e-7, help="first rate (default 1e-7)")
    s.add_argument("--end-lr", type=float, default=10.0, help="last rate (default 10)")
    s.add_argument("--out", help="folder for lr_find.png and lr_find.json (default runs/<recipe>-lr-find)")

    s = sub.add_parser("scratch", help="train the NumPy network with hand-written backprop on digits")
    s.add_argument("--hidden", type=int, default=32, help="hidden units")
    s.add_argument("--epochs", type=int, default=40)
    s.add_argument("--lr", type=float, default=0.5)
    s.add_argument("--output", choices=["softmax", "sigmoid"], default="softmax",
                   help="softmax + cross-entropy, or sigmoid + mean squared error")
    return p


def cmd_list(args) -> None:
    from rich.console import Console
    from rich.table import Table

    from .config import read_toml
    from .engine.logs import monitor_mode
    from .registry import DATASETS, MODELS, PLUGINS, TASKS, recipe_paths

    console = Console(width=None if sys.stdout.isatty() else 200)  # piped: full names for grep
    if args.what in (None, "recipes"):
        t = Table(title="recipes  (deepstep train NAME)")
        for col in ("name", "task", "data", "model", "target", "description"):
            t.add_column(col, no_wrap=col != "description")
        for name, path in sorted(recipe_paths().items()):
            d = read_toml(path)
            target = ", ".join(f"{k} {'<=' if monitor_mode(k) == 'min' else '>='} {v}"
                               for k, v in d.get("expect", {}).items())
            t.add_row(name, d.get("task", "classify"), d.get("data", {}).get("name", "") or d.get("env", {}).get("id", ""),
                      d.get("model", {}).get("name", ""), target, d.get("description", ""))
        console.print(t)
    for what, reg, title in (("models", MODELS, "models"), ("data", DATASETS, "data sets"), ("tasks", TASKS, "tasks"),
                             ("plugins", PLUGINS, "plug-ins  (default: every run where it applies; others: --with NAME)")):
        if args.what in (None, what):
            t = Table(title=title)
            t.add_column("name", no_wrap=True)
            if what != "data":
                t.add_column("tags", no_wrap=True)
            t.add_column("description")
            for name in reg.names():
                tags = [", ".join(sorted(reg.tags(name)))] if what != "data" else []
                t.add_row(name, *tags, reg.about(name))
            console.print(t)


def cmd_options(args) -> None:
    import inspect

    from .config import GENERIC_SECTIONS, section_help, task_sections
    from .registry import MODELS, TASKS, model_options

    if args.task:
        TASKS.get(args.task)  # an unknown task: a clear error
    of = f" (a {args.task} run)" if args.task else ""
    print(f"Set any of these with --set KEY=VALUE (values are TOML: 3e-4, true, [256, 128], 'text'){of}:\n")
    for name, cls in GENERIC_SECTIONS.items():
        for line in section_help(name, cls):
            print("  " + line)
    for name, s in task_sections().items():
        if args.task is None or args.task in s.tasks:
            print(f"\n[{name}]: {s.owners()}")
            for line in section_help(name, s.cls):
                print("  " + line)
    names = [args.model] if args.model else MODELS.names()
    print("\nModel options (--set model.KEY=VALUE; --set model.name=NAME switches model):")
    for name in names:
        opts = model_options(name)
        print(f"  {name}: " + (", ".join(f"{k}={p.default!r}" for k, p in opts.items()) or "(no options)"))
        if args.model:
            print("    " + (inspect.getdoc(MODELS.get(name)) or "").replace("\n", "\n    "))


def cmd_train(args) -> None:
    import tomli_w

    from .config import load_config
    from .run import train

    extra = [f"plugins.use={json.dumps(args.plugins)}"] if args.plugins else []
    if extra:  # --with adds to the recipe's own [plugins] use list
        from .config import read_toml
        from .registry import recipe_path

        use = read_toml(recipe_path(args.recipe)).get("plugins", {}).get("use", [])
        extra = [f"plugins.use={json.dumps(list(dict.fromkeys([*use, *args.plugins])))}"]
    cfg = load_config(args.recipe, [*args.overrides, *extra])
    if args.dry_run:
        print(tomli_w.dumps(cfg.to_dict()))
        return
    from .engine.rundir import default_run_dir

    args.run_dir = str(args.run_dir or default_run_dir(cfg.recipe))  # named if the run is interrupted
    result = train(cfg, args.run_dir, verbose=0 if args.quiet else 1)
    _report(result)


def _report(result) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    s = result.summary
    keys = [k for k in s if k.startswith(("test/", "baseline/", "samples/"))]
    keys += [k for k in ("eval/return_mean", "eval/return_std") if k in s]  # reinforcement learning
    print(f"\nrun directory: {result.run_dir}")
    print("  " + "  ".join(f"{k} {s[k]:.4f}" for k in keys))
    for key, e in s["expect"].items():
        verdict = "met" if e["met"] else "not measured in this run" if e.get("unknown") else "NOT met"
        bar = f" ({e['target_value']:.4g})" if e.get("target_value") is not None else ""
        print(f"  target {key} {e['target']}{bar}: {verdict}")
    print(f"  {s['epochs']} epochs, {s['train_seconds']:.1f} s training, {s['samples_per_second']:.0f} samples/s on {s['device']}")


def cmd_resume(args) -> None:
    from .run import resume

    _report(resume(args.run_dir, verbose=0 if args.quiet else 1))


def cmd_eval(args) -> None:
    from .engine.run import Run

    m = Run.open(args.run_dir).evaluate(episodes=args.episodes)
    if args.json:
        print(json.dumps(m))
        return
    print("  ".join(f"{k} {v:.4f}" for k, v in m.items()))


def cmd_predict(args) -> None:
    import numpy as np

    from .data.inputs import read_inputs
    from .engine.run import Run
    from .registry import TASKS

    run = Run.open(args.run_dir)
    task = run.cfg.task
    can = TASKS.tags(task)
    if "play" in can:
        raise UserError(f"'{run.path}' is a reinforcement-learning run (task {task}): use `deepstep eval` "
                        "or `deepstep play`.")
    if not can & {"predict", "reconstruct", "forecast"}:
        hint = f" (deepstep sample {run.path})" if "sample" in can else ""
        raise UserError(f"'{run.path}' is a {task} run: it generates images{hint} and has nothing to predict "
                        "for an input.")
    run.inference()  # a clear error for an unfinished run, before any input is read
    if "forecast" in can:
        _predict_series(run, args)
        return
    labels = None
    meta = run.meta
    if meta.kind == "text":  # raw strings, .txt files, or CSV/JSONL rows
        from .data.text import read_texts

        x, names, labels = read_texts(args.inputs, run.cfg.data, meta.classes)
    else:
        x, names = read_inputs(args.inputs, tuple(meta.in_shape), meta.kind, run.cfg.data.label_column)
    if "reconstruct" in can:
        _predict_reconstructions(run, x, names, args)
        return
    out = run.predict(x)
    classes = meta.classes
    for j, (name, p) in enumerate(zip(names, out)):
        if labels and labels[j] is not None:
            name = f"{name} [label {labels[j]}]"
        if not classes:
            values = [round(float(v), 6) for v in np.atleast_1d(p)]
            print(json.dumps({"input": name, "output": values}) if args.json else f"{name}: {values}")
            continue
        top = np.argsort(-p)[: max(1, args.top)]
        if args.json:
            print(json.dumps({"input": name, "top": [{"class": classes[i], "probability": float(p[i])} for i in top]}))
        else:
            print(f"{name}: " + ", ".join(f"{classes[i]} ({p[i]:.3f})" for i in top))


def _predict_reconstructions(run, x, names, args) -> None:
    """Autoencoders and VAEs: the anomaly score of each input and its reconstruction, written as
    a PNG (input left, reconstruction right) when the run reads images."""
    import numpy as np

    from .tasks.generative import anomaly_scores, image_grid, reconstruct, save_png

    out = Path(args.out) if args.out else run.path / "predictions"
    if run.meta.kind == "image" and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file; --out names a folder for the reconstructions "
                        "(NAME-recon.png). Choose a folder (new or existing).")
    x = run.preprocess(x)
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:  # a Bernoulli decoder scores values outside [0, 1] as nonsense
        raise UserError(f"This {run.cfg.task} run models inputs in [0, 1] as its data set loads them, but the inputs "
                        f"hold values in [{lo:.4g}, {hi:.4g}]: scale them first (e.g. 8-bit images: /255; "
                        "scikit-learn digits: /16).")
    model = run.model()
    scores = anomaly_scores(model, x, run.cfg.gen.decoder, run.cfg.gen.sigma)
    recon = reconstruct(model, x)
    for i, (name, score) in enumerate(zip(names, scores)):
        rec = {"input": name, "anomaly_score": round(float(score), 4)}
        if run.meta.kind == "image":
            f = out / f"{Path(str(name).split('[')[0]).stem or 'input'}-{i}-recon.png"
            save_png(f, image_grid(np.stack([x[i].numpy(), recon[i].numpy()]), 2))
            rec["reconstruction"] = str(f)
        print(json.dumps(rec) if args.json else f"{name}: anomaly score {rec['anomaly_score']:.3f} nats"
              + (f", reconstruction {rec['reconstruction']}" if "reconstruction" in rec else ""))


def cmd_sample(args) -> None:
    import torch

    from .engine.run import Run
    from .registry import TASKS
    from .tasks.generative import image_grid, save_png

    run = Run.open(args.run_dir)
    if not TASKS.has(run.cfg.task, "sample"):
        raise UserError(f"'{run.path}' is a {run.cfg.task} run with model '{run.cfg.model['name']}', which does "
                        "not generate: `deepstep sample` needs a GAN (task gan) or VAE (task vae) run.")
    run.inference()  # a clear error for an unfinished run
    if run.meta.kind != "image":
        raise UserError(f"'{run.path}' was trained on {run.meta.kind} data; `deepstep sample` draws images.")
    if not 1 <= args.n <= 10000 or args.cols < 1:
        raise UserError(f"--n {args.n} must be between 1 and 10000, and --cols at least 1.")
    if not args.out.lower().endswith(".png") or Path(args.out).is_dir():
        raise UserError(f"--out {args.out}: expected the name of a PNG file to write (ending in .png, not a folder).")
    images = run.model().sample(args.n, generator=torch.Generator().manual_seed(args.seed))
    save_png(Path(args.out), image_grid(images, min(args.cols, args.n)))
    print(f"{args.n} samples from {run.path} (seed {args.seed}) written to {args.out}")


def cmd_export(args) -> None:
    from .engine.run import Run
    from .plugins.export import check_args, export_run

    check_args(args.format, args.out, args.exporter)  # before the run is read
    export_run(Run.open(args.run_dir), args.format, args.out, args.exporter)


def _predict_series(run, args) -> None:
    """Forecasting runs: each input is a series file; print the next `horizon` values after its end."""
    from .tasks.forecast import predict_file

    for path in args.inputs:
        r = predict_file(run, path)
        if args.json:
            print(json.dumps(r))
            continue
        for column, values in r["forecast"].items():
            steps = ", ".join(f"{t}: {v:.4g}" for t, v in zip(r["steps"], values))
            print(f"{path} (after {r['after']}) {column}: {steps}")


def cmd_play(args) -> None:
    from .engine.run import Run
    from .registry import TASKS

    run = Run.open(args.run_dir)
    if not TASKS.has(run.cfg.task, "play"):
        raise UserError(f"'{run.path}' is not a reinforcement-learning run: play needs a run of task dqn or ppo.")
    if args.max_steps < 1:
        raise UserError(f"--max-steps {args.max_steps} must be at least 1.")
    if args.gif and not args.gif.lower().endswith(".gif"):
        raise UserError(f"--gif {args.gif}: the file name must end in .gif.")
    r = run.rebuild().play(args.gif, seed=args.seed, max_steps=args.max_steps)
    saved = f"; {r['frames']} frames written to {args.gif}" if args.gif else ""
    print(f"episode return {r['return']:.1f} in {r['length']} steps{saved}")


def cmd_report(args) -> None:
    from .plugins.report import write_comparison, write_report

    if args.out and not args.out.lower().endswith((".html", ".htm")):
        raise UserError(f"--out {args.out}: the file name must end in .html.")
    if len(args.run_dirs) == 1:
        print(write_report(args.run_dirs[0], out=args.out))
        return
    print(write_comparison(args.run_dirs, args.out or "report-compare.html"))


def cmd_explain(args) -> None:
    from .engine.run import Run
    from .plugins.explain import check_explainable, explain, methods_for, summary_lines

    run = Run.open(args.run_dir)
    check_explainable(run)
    methods = methods_for(run) if args.method == "all" else [args.method]
    for method in methods:
        e = explain(run, method, inputs=args.inputs or None, target=args.target, out=args.out, n=args.n)
        print(f"{e['method']} ({e['seconds']:.2f} s for {len(e['inputs'])} inputs, target: {e['target']}):")
        for r in e["inputs"]:
            true = f"true {r['true']}, " if r["true"] is not None else ""
            shown = (f"-> {Path(e['dir']) / r['png']}" if "png" in r
                     else "top tokens: " + ", ".join(r.get("top_tokens", [])))
            print(f"  {r['input']}: {true}predicted {r['predicted']} ({r['probability']:.3f}) {shown}")
        if "html" in e:
            print(f"  token highlights: {Path(e['dir']) / e['html']}")
        for line in summary_lines(e):
            print(line)
    print(f"written: {Path(e['dir']) / 'explain.json'}"
          + (f" (`deepstep report {run.path}` adds them to its report.html)" if args.out is None else ""))


def cmd_tune(args) -> None:
    from .tune import Tuner, parse_space

    Tuner(args.recipe, args.overrides, parse_space(args.space), trials=args.trials, folder=args.dir,
          storage=args.storage, study=args.study, timeout=args.timeout).run()


def cmd_lr_find(args) -> None:
    from .config import load_config
    from .engine.lr_find import lr_find, plot_lr_find

    cfg = load_config(args.recipe, args.overrides)
    r = lr_find(cfg, steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr)
    out = Path(args.out) if args.out else Path(os.environ.get("DEEPSTEP_RUNS", "runs")) / f"{cfg.recipe}-lr-find"
    png = plot_lr_find(r, out)
    print(f"{cfg.recipe}: {len(r['lrs'])} steps from {r['lrs'][0]:.2g} to {r['lrs'][-1]:.3g}"
          + (f" (stopped: {r['stopped']})" if r["stopped"] else ""))
    print(f"  suggested optim.lr = {r['steepest']:.3g} (steepest descent of the smoothed loss); "
          f"minimum/10 = {r['min_10']:.3g} (the loss is lowest at {r['minimum']:.3g})")
    print(f"  {png} and {out / 'lr_find.json'}; train with it: --set optim.lr={r['steepest']:.3g} "
          "(or --set optim.lr=auto)")


def cmd_scratch(args) -> None:
    from .scratch import digits_demo

    if args.hidden < 1 or args.epochs < 1 or not math.isfinite(args.lr) or args.lr <= 0:
        raise UserError(f"--hidden and --epochs must be at least 1 and --lr positive and finite, e.g. 0.5 (got "
                        f"--hidden {args.hidden}, --epochs {args.epochs}, --lr {args.lr}).")
    r = digits_demo(n_hidden=args.hidden, epochs=args.epochs, lr=args.lr, output=args.output)
    print(f"NumPy 64-{args.hidden}-10 sigmoid network ({args.output} output), SGD lr {args.lr}, "
          f"{r['epochs']} epochs on digits ({r['train_size']} train / {r['test_size']} test)")
    print(f"  final loss {r['final_loss']:.4f}  train acc {r['train_acc']:.4f}  test acc {r['test_acc']:.4f}"
          f"  ({r['seconds']:.2f} s)")


COMMANDS = {"list": cmd_list, "options": cmd_options, "train": cmd_train, "resume": cmd_resume,
            "eval": cmd_eval, "predict": cmd_predict, "sample": cmd_sample, "play": cmd_play, "report": cmd_report,
            "explain": cmd_explain, "scratch": cmd_scratch, "export": cmd_export,
            "tune": cmd_tune, "lr-find": cmd_lr_find}


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the run stops between two writes and can be resumed."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.command:
        _parser().print_help()
        return 2
    import threading

    if threading.current_thread() is not threading.main_thread():
        return _run(args)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    """The one error boundary: every failure a user can cause or meet ends here as exit 2 and one
    paragraph (exit 130 for Ctrl-C, 143 for SIGTERM, both resumable), never as a traceback."""
    try:
        COMMANDS[args.command](args)
    except UserError as e:
        return _error(args, str(e))
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"\n{what}.{_resume_hint(args)}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except OSError as e:
        return _error(args, os_error(e, args))
    except UnicodeDecodeError as e:
        return _error(args, f"A file that should be UTF-8 text is not ({e.reason} at byte {e.start}): it is damaged, "
                            "or not of the type its name says.")
    except MemoryError:
        return _error(args, "Out of memory: the input (or the data set, or a batch) is larger than this machine's "
                            "memory. Use smaller inputs, data.limit, a smaller train.batch_size or "
                            "train.eval_batch_size, or data.stream for data sets larger than memory.")
    except Exception as e:
        if not _is_decoder_error(e):
            raise
        return _error(args, f"An input file could not be decoded ({type(e).__name__}: {_clean(e)}). Check that the "
                            "file is complete and of the type its name says.")
    return 0


def _error(args, message: str) -> int:
    from .errors import scrub

    print(f"deepstep {args.command}: error: {scrub(message)}", file=sys.stderr)
    return 2


def _resume_hint(args) -> str:
    """' Continue with: deepstep resume DIR' when the interrupted command left a run to continue."""
    run_dir = getattr(args, "run_dir", None)
    if args.command not in ("train", "resume") or not run_dir:
        return ""
    from .engine.rundir import quoted

    path = Path(run_dir)
    if (path / "config.toml").is_file() and not (path / "summary.json").is_file():
        return f" The run is in {path}; continue with: deepstep resume {quoted(path)}"
    return "" if (path / "summary.json").is_file() else " Nothing was written."


def _clean(e: BaseException) -> str:
    """An exception's first line, without numpy's or torch's advice to unpickle."""
    for line in str(e).splitlines():
        if line.strip() and not any(w in line for w in ("allow_pickle", "weights_only", "pickle")):
            return line.strip()[:300]
    return type(e).__name__


def _is_decoder_error(e: BaseException) -> bool:
    """Errors of the libraries that decode input files (Pillow, zlib, zipfile)."""
    import zipfile
    import zlib

    return type(e).__module__.split(".")[0] == "PIL" or isinstance(e, (zlib.error, zipfile.BadZipFile, EOFError))


def os_error(e: OSError, args) -> str:
    """An OSError of the world (full disk, read-only or forbidden place, a file where a folder
    belongs) as one paragraph: the path, what happened, what to do."""
    import errno

    path = f"'{e.filename}'" if e.filename else "a file"
    kept = ""
    if args.command in ("train", "resume") and getattr(args, "run_dir", None):
        from .engine.rundir import quoted

        kept = (f" Nothing already written is lost: the last checkpoint in {args.run_dir} is kept (if one was written); "
                f"continue with `deepstep resume {quoted(args.run_dir)}` once that is fixed.")
    what = {
        errno.ENOSPC: f"No space left on the device while writing {path}. Free some space or write elsewhere.",
        errno.EDQUOT: f"Disk quota exceeded while writing {path}. Free some space or write elsewhere.",
        errno.EROFS: f"{path} is on a read-only file system. Choose a writable place (--out, --run-dir).",
        errno.EACCES: f"Permission denied for {path}. Choose a place you may write to (--out, --run-dir), or fix "
                      "its permissions.",
        errno.EPERM: f"Operation not permitted on {path}. Choose another place (--out, --run-dir).",
        errno.EEXIST: f"{path} already exists (as a file where a folder is needed, or the reverse). Choose another "
                      "name.",
        errno.ENOTDIR: f"{path}: a part of this path is a file, not a folder. Choose another place.",
        errno.EISDIR: f"{path} is a folder; a file name is needed here.",
        errno.ENOENT: f"{path} does not exist.",
        errno.ENAMETOOLONG: f"{path}: the name is too long for the file system.",
    }.get(e.errno, f"{e.strerror or _clean(e)} ({path}).")
    return what + kept


if __name__ == "__main__":
    sys.exit(main())
