"""`deepstep tune`: hyperparameter search over runs of one recipe with Optuna (TPE sampler, median
pruning on the validation metric).

    deepstep tune digits-mlp --trials 20 --space optim.lr=loguniform(1e-4,1e-1) --space model.dropout=uniform(0,0.5)

Every trial is a normal run directory, `STUDY/trial-0007/`, trained by `engine.fit.fit` with the
`tune-pruner` plug-in (plugins/tune_pruner.py), which reports the run's validation metric
(`train.monitor`, which must be a `val/` metric) after each epoch. The objective is that metric at
the end of the run; a test metric never reaches Optuna, and only the best trial's is printed, once.

The study is stored in Optuna's database storage, by default SQLite in `STUDY/study.db`, so:

- several `deepstep tune` processes on the same study folder (or on one `--storage` URL: PostgreSQL
  or MySQL across machines) run trials in parallel; `--trials N` is the study's total, counted in
  the database (trials of every state, failed ones included), so N processes share N trials;
- a killed `deepstep tune` continues where it stopped: each process holds an OS file lock on each
  trial it runs (`STUDY/locks/trial-0007.lock`; the OS drops it when the process dies, even on
  `kill -9`), so a RUNNING trial whose lock is free was orphaned; the next process to ask for a
  trial (the rerun, or another worker) adopts it and resumes its run directory from the last
  checkpoint (`deepstep resume`), then reports it to the same Optuna trial. Adoption needs the
  trial's folder: on several machines, a machine's killed trials are adopted by a rerun there.

A study remembers what it searches (recipe, --set overrides, space, monitor) in its user
attributes; joining it with other arguments is an error, not a silent mix.

A trial that diverges (non-finite loss) is told to Optuna as pruned, so TPE learns to avoid the
region, and is listed as `diverged`; a trial whose config is invalid fails (listed with its error).

Output in the study folder: `best.toml` (the best trial's resolved config, a recipe that
`deepstep train best.toml` reproduces exactly), `trials.csv` (and a printed table), `history.png`
and `importance.png` (Optuna's matplotlib visualizations) and `tune.json`.

Departure from the architecture guide: this module sits at the `run` layer (it needs `fit`,
`resume`, `Run` and a plug-in), beside `deepstep.run`; Optuna is imported only here and only when
`tune` runs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from filelock import FileLock, Timeout

from .config import load_config, parse_value, read_toml
from .engine.checkpoint import atomic_write
from .engine.fit import fit, resume
from .engine.logs import monitor_mode
from .engine.run import Run
from .engine.rundir import RunDir
from .errors import NonFiniteLoss, UserError
from .plugins.tune_pruner import TunePruner
from .registry import recipe_path

DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
_DIST = re.compile(r"^\s*([a-z]+)\s*\((.*)\)\s*$", re.S)
SPACE_HELP = ("loguniform(a,b), uniform(a,b), int(a,b) or choice(x,y,...), e.g. optim.lr=loguniform(1e-4,1e-1), "
              "model.hidden=choice([128],[256,128])")


@dataclass(frozen=True)
class Dist:
    """One dimension of a search space: `kind` with its bounds, or the TOML texts of its choices."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()

    def suggest(self, trial) -> str:
        """Ask the trial for a value; returns its TOML text for `--set key=...`."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return str(trial.suggest_int(self.key, int(self.low), int(self.high)))
        return repr(float(trial.suggest_float(self.key, self.low, self.high, log=self.kind == "loguniform")))

    def corners(self) -> list[str]:
        """The values that are checked against the config before any trial starts."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [str(int(self.low)), str(int(self.high))]
        return [repr(float(self.low)), repr(float(self.high))]

    def text(self) -> str:
        if self.kind == "choice":
            return f"choice({', '.join(self.choices)})"
        bounds = (int(self.low), int(self.high)) if self.kind == "int" else (self.low, self.high)
        return f"{self.kind}({bounds[0]!r}, {bounds[1]!r})"


def _split_args(text: str) -> list[str]:
    """Split at the commas outside brackets and quotes: 'a, [1, 2], "x,y"' -> ['a', '[1, 2]', '"x,y"']."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    parts.append(cur.strip())
    return parts


def parse_dist(key: str, text: str, where: str = "--space") -> Dist:
    """'loguniform(1e-4, 1e-1)' -> Dist; anything else is a UserError naming what is valid."""
    bad = f"{where} {key}={text}"
    m = _DIST.match(str(text))
    if not m or m.group(1) not in DISTRIBUTIONS:
        raise UserError(f"{bad} is not a distribution: expected {SPACE_HELP}.")
    kind, args = m.group(1), _split_args(m.group(2))
    if kind == "choice":
        if args == [""] or any(a == "" for a in args):
            raise UserError(f"{bad}: choice() needs one or more values separated by commas, e.g. choice(adam, sgd).")
        if len(set(args)) != len(args):
            raise UserError(f"{bad}: choice() lists a value twice.")
        return Dist(key, kind, choices=tuple(args))
    if len(args) != 2:
        raise UserError(f"{bad}: {kind}() takes two bounds, low and high, e.g. {kind}(1, 10).")
    values = [parse_value(a) for a in args]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise UserError(f"{bad}: the bounds must be finite numbers.")
    low, high = values
    if kind == "int" and not all(isinstance(v, int) for v in values):
        raise UserError(f"{bad}: int() takes whole-number bounds, e.g. int(1, 4).")
    if low >= high:
        raise UserError(f"{bad}: the low bound ({low}) must be below the high bound ({high}).")
    if kind == "loguniform" and low <= 0:
        raise UserError(f"{bad}: loguniform() needs positive bounds (a logarithm of {low} does not exist); "
                        "use uniform() for ranges that include 0.")
    return Dist(key, kind, float(low), float(high))


def parse_space(items: list[str]) -> dict[str, Dist]:
    """`--space KEY=DIST` strings -> {key: Dist}."""
    space: dict[str, Dist] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--space '{item}' is not of the form KEY=DIST: expected {SPACE_HELP}.")
        key, text = (s.strip() for s in item.split("=", 1))
        if key in space:
            raise UserError(f"--space gives '{key}' twice.")
        space[key] = parse_dist(key, text)
    return space


def recipe_space(recipe: str) -> dict[str, Dist]:
    """A recipe's default space, its `[tune]` table: `"optim.lr" = "loguniform(1e-4, 1e-1)"`."""
    path = recipe_path(recipe)
    table = read_toml(path).get("tune", {})
    if not isinstance(table, dict):
        raise UserError(f"[tune] in '{path}' must be a table of KEY = \"DIST\" lines.")
    return {k: parse_dist(k, v, f"[tune] of '{path.name}':") for k, v in table.items()}


def check_space(recipe: str, overrides: list[str], space: dict[str, Dist]):
    """Every value at the edges of the space must make a valid config (known key, right type, in
    range), before any trial starts; the metric tuned must be a validation metric. Returns the
    base config."""
    cfg = load_config(recipe, overrides)
    if not space:
        raise UserError(f"Nothing to search: give --space KEY=DIST (repeatable; {SPACE_HELP}), or add a [tune] "
                        f"table to the recipe.")
    for key, dist in space.items():
        if key in ("recipe", "description") or key.startswith(("expect.", "plugins.", "card.")):
            raise UserError(f"--space {key}: '{key}' does not change training; search over optim, sched, train, "
                            "data or model keys.")
        for value in dist.corners():
            try:
                load_config(recipe, [*overrides, f"{key}={value}"])
            except UserError as e:
                raise UserError(f"--space {key}={dist.text()}: the value {value} is not valid: {e}") from None
    monitor = cfg.train.monitor
    if not monitor.startswith("val/"):
        raise UserError(f"deepstep tune optimizes the validation metric, but train.monitor = '{monitor}'. "
                        "Set --set train.monitor=val/acc (or val/loss, ...).")
    if cfg.data.val_split <= 0:
        raise UserError("deepstep tune needs a validation split to steer the search (test metrics never do): "
                        "data.val_split is 0. Set e.g. --set data.val_split=0.1.")
    return cfg


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("deepstep tune needs Optuna, which is not installed: pip install 'optuna>=3.5' "
                        "(or pip install 'deepstep[tune]').") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*already reported.*")
    return optuna


def default_study_dir(recipe: str) -> Path:
    """runs/<recipe>-tune (or $DEEPSTEP_RUNS/...): one fixed folder, so a rerun continues the study."""
    return Path(os.environ.get("DEEPSTEP_RUNS", "runs")) / f"{recipe_path(recipe).stem}-tune"


class Tuner:
    """One worker of a study. `run()` runs trials until the study holds `trials` of them (or
    `timeout` seconds have passed), then writes the outputs.

    Args:
        recipe, overrides: what every trial trains (`--set` applies to all of them).
        space: {key: Dist}; empty: the recipe's [tune] table.
        trials: the study's total number of trials.
        folder: the study folder (default runs/<recipe>-tune).
        storage: an Optuna storage URL (default sqlite:///FOLDER/study.db).
        study: the study's name (default the recipe's name).
        timeout: start no new trial after this many seconds.
    """

    def __init__(self, recipe: str, overrides: list[str] = (), space: dict[str, Dist] | None = None, trials: int = 20,
                 folder: Path | str | None = None, storage: str | None = None, study: str | None = None,
                 timeout: float | None = None, verbose: int = 1):
        if trials < 1:
            raise UserError(f"--trials {trials} must be at least 1.")
        if timeout is not None and timeout <= 0:
            raise UserError(f"--timeout {timeout} must be a positive number of seconds.")
        self.recipe, self.overrides = recipe, list(overrides)
        self.space = space or recipe_space(recipe)
        self.cfg = check_space(recipe, self.overrides, self.space)  # before anything is written
        self.monitor = self.cfg.train.monitor
        self.direction = "minimize" if monitor_mode(self.monitor) == "min" else "maximize"
        self.trials, self.timeout, self.verbose = trials, timeout, verbose
        self.folder = Path(folder) if folder else default_study_dir(recipe)
        self.name = study or self.cfg.recipe
        self.storage_url = storage or f"sqlite:///{(self.folder / 'study.db').resolve()}"
        self.optuna = _optuna()
        try:
            (self.folder / "locks").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"Study folder '{self.folder}' is not writable ({e.strerror}). Choose another with --dir.") from None
        # trials this worker may adopt: those run on this machine in this study folder
        self.owner = f"{socket.gethostname()}:{self.folder.resolve()}"
        self.study = self._open_study()
        self.held: FileLock | None = None

    # --- the study -------------------------------------------------------------------------
    def _open_study(self):
        optuna = self.optuna
        kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if self.storage_url.startswith("sqlite") else {}
        what = {"recipe": self.cfg.recipe, "overrides": self.overrides, "monitor": self.monitor,
                "space": {k: d.text() for k, d in self.space.items()}}
        # under the folder's lock: two processes creating one SQLite file's tables at once collide
        with self._study_lock():
            try:
                storage = optuna.storages.RDBStorage(self.storage_url, **kwargs)
            except Exception as e:  # a bad URL, a missing driver, a server that does not answer
                raise UserError(f"Cannot open the study storage '{self.storage_url}': {e}. Use sqlite:///path/study.db, "
                                "postgresql://user:pass@host/db or mysql+pymysql://user:pass@host/db (with its "
                                "driver installed).") from None
            try:
                existing = optuna.load_study(study_name=self.name, storage=storage)
            except KeyError:
                existing = None
            n_before = len(existing.trials) if existing else 0
            epochs = self.cfg.train.epochs
            sampler = optuna.samplers.TPESampler(
                n_startup_trials=max(3, min(10, self.trials // 4)),
                # one worker on a new study is reproducible; a joining or continuing worker draws
                # its own numbers, or it would repeat the first worker's random start-up trials
                seed=self.cfg.train.seed if n_before == 0 else hash((self.cfg.train.seed, n_before, os.getpid())) % 2**31)
            pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 4))
            study = optuna.create_study(storage=storage, study_name=self.name, direction=self.direction,
                                        sampler=sampler, pruner=pruner, load_if_exists=True)
            if existing is None:
                for k, v in what.items():
                    study.set_user_attr(k, v)
            else:
                had = {k: study.user_attrs.get(k) for k in what}
                if had != what:
                    diff = "; ".join(f"{k}: study has {had[k]!r}, given {what[k]!r}" for k in what if had[k] != what[k])
                    raise UserError(f"Study '{self.name}' in {self.storage_url} searches something else ({diff}). "
                                    "Rerun with the same recipe, --set and --space to continue it, or choose a new "
                                    "--study name or --dir.")
        return study

    def _study_lock(self) -> FileLock:
        return FileLock(str(self.folder / "locks" / "study.lock"), timeout=120)

    def _trial_lock(self, number: int) -> FileLock:
        return FileLock(str(self.folder / "locks" / f"trial-{number:04d}.lock"))

    def trial_dir(self, number: int) -> Path:
        return self.folder / f"trial-{number:04d}"

    def _next(self):
        """(trial, adopted): an orphaned trial to finish, or a new one; None when the study is full."""
        TrialState = self.optuna.trial.TrialState
        with self._study_lock():
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if t.user_attrs.get("owner") != self.owner:
                    continue  # run from another study folder or machine: only its own folder can resume it
                lock = self._trial_lock(t.number)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue  # another worker is running it
                self.held = lock
                return self.optuna.trial.Trial(self.study, t._trial_id), True
            if len(self.study.get_trials(deepcopy=False)) >= self.trials:
                return None
            trial = self.study.ask()
            lock = self._trial_lock(trial.number)
            lock.acquire(timeout=0)  # a new number: nobody holds it
            self.held = lock
            trial.set_user_attr("owner", self.owner)
            trial.set_user_attr("run_dir", self.trial_dir(trial.number).name)
            for d in self.space.values():  # sampled now, so that an adopting worker reads the same values
                d.suggest(trial)
            return trial, False

    # --- one trial -------------------------------------------------------------------------
    def run_trial(self, trial, adopted: bool) -> None:
        TrialState = self.optuna.trial.TrialState
        values = {k: d.suggest(trial) for k, d in self.space.items()}  # stored values on a second call
        path = self.trial_dir(trial.number)
        pruner = TunePruner(trial, self.monitor)
        t0 = time.perf_counter()
        try:
            cfg = load_config(self.recipe, [*self.overrides, *(f"{k}={v}" for k, v in values.items())])
            rd = RunDir(path)
            if adopted and rd.summary.is_file():  # finished, killed before Optuna was told
                summary = Run.open(path).summary
                how = "finished earlier"
            elif adopted and rd.checkpoint.is_file():
                summary = resume(path, plugins=[pruner], verbose=0).summary
                how = "resumed"
            else:
                if path.exists():
                    shutil.rmtree(path)
                summary = fit(cfg, run_dir=path, plugins=[pruner], verbose=0).summary
                how = "restarted" if adopted else ""
        except NonFiniteLoss as e:
            trial.set_user_attr("diverged", str(e).split(". ")[0])
            self.study.tell(trial, state=TrialState.PRUNED)
            self._say(trial, values, f"diverged ({str(e).split(':')[0].lower()}; told as pruned)", t0)
            return
        except UserError as e:
            trial.set_user_attr("error", str(e))
            self.study.tell(trial, state=TrialState.FAIL)
            self._say(trial, values, f"failed: {e}", t0)
            return
        # anything else (a bug, Ctrl-C) leaves the trial RUNNING with its lock released: a rerun adopts it
        trial.set_user_attr("epochs", summary["epochs"])
        trial.set_user_attr("train_seconds", summary["train_seconds"])
        note = f", {how}" if how else ""
        if summary.get("tune/pruned_at"):
            self.study.tell(trial, state=TrialState.PRUNED)
            self._say(trial, values, f"pruned after epoch {summary['tune/pruned_at']} ({self.monitor} "
                                     f"{pruner_last(pruner, summary, self.monitor):.4f}{note})", t0)
            return
        value = float(summary[self.monitor])
        self.study.tell(trial, value)
        self._say(trial, values, f"{self.monitor} {value:.4f} ({summary['epochs']} epochs{note})", t0)

    def _say(self, trial, values: dict, outcome: str, t0: float) -> None:
        if self.verbose:
            params = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
            print(f"trial {trial.number}: {params} -> {outcome} [{time.perf_counter() - t0:.1f} s]", flush=True)

    # --- the worker ------------------------------------------------------------------------
    def run(self) -> dict:
        start = time.monotonic()
        if self.verbose:
            space = ", ".join(f"{k}={d.text()}" for k, d in self.space.items())
            print(f"study '{self.name}' ({self.storage_url}): {self.trials} trials of {self.cfg.recipe}, "
                  f"{self.direction} {self.monitor}; space {space}", flush=True)
        while self.timeout is None or time.monotonic() - start < self.timeout:
            nxt = self._next()
            if nxt is None:
                break
            try:
                self.run_trial(*nxt)
            finally:
                self.held.release()
                self.held = None
        return self.write_outputs()

    # --- results ---------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        rows = []
        for t in self.study.get_trials(deepcopy=False):
            state = t.state.name.lower()
            if "diverged" in t.user_attrs:
                state = "diverged"
            rows.append({"trial": t.number, "state": state,
                         self.monitor: "" if t.value is None else round(t.value, 6),
                         **{k: t.params.get(k, "") for k in self.space},
                         "epochs": t.user_attrs.get("epochs", ""),
                         "train_seconds": t.user_attrs.get("train_seconds", ""),
                         "run_dir": t.user_attrs.get("run_dir", f"trial-{t.number:04d}")})
        return rows

    def write_outputs(self) -> dict:
        rows = self.rows()
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        with open(self.folder / "trials.csv.tmp", "w", newline="") as f:
            w = csv.DictWriter(f, list(rows[0]) if rows else ["trial"])
            w.writeheader()
            w.writerows(rows)
        os.replace(self.folder / "trials.csv.tmp", self.folder / "trials.csv")
        result = {"study": self.name, "storage": self.storage_url, "folder": str(self.folder), "monitor": self.monitor,
                  "direction": self.direction, "trials": len(rows), "states": counts}
        complete = [t for t in self.study.get_trials(deepcopy=False)
                    if t.state == self.optuna.trial.TrialState.COMPLETE]
        if self.verbose:
            self._print_table(rows)
        if not complete:
            if self.verbose:
                print("no trial has finished yet: no best.toml.")
            return result
        best = self.study.best_trial
        run = Run.open(self.folder / best.user_attrs.get("run_dir", f"trial-{best.number:04d}"))
        header = (f"# deepstep tune {self.cfg.recipe}: trial {best.number} of study '{self.name}', best "
                  f"{self.monitor} {best.value:.6g} of {len(complete)} finished trials\n# "
                  + ", ".join(f"{k} = {_short(v)}" for k, v in best.params.items())
                  + "\n# reproduce: deepstep train best.toml\n")
        atomic_write(self.folder / "best.toml", (header + tomli_w.dumps(_drop_none(run.cfg.to_dict()))).encode())
        tests = {k: v for k, v in run.summary.items() if k.startswith("test/") and isinstance(v, (int, float))}
        result.update({"best_trial": best.number, "best_value": best.value, "best_params": best.params,
                       "best_run": str(run.path), "best_test": tests})
        result["plots"] = self._plots()
        atomic_write(self.folder / "tune.json", (json.dumps(result, indent=2) + "\n").encode())
        if self.verbose:
            test = "  ".join(f"{k} {v:.4f}" for k, v in tests.items())
            print(f"\nbest: trial {best.number}, {self.monitor} {best.value:.4f}: "
                  + ", ".join(f"{k}={_short(v)}" for k, v in best.params.items()))
            print(f"  its test metrics (seen once, never used by the search): {test}")
            print(f"  {self.folder / 'best.toml'} (deepstep train {self.folder / 'best.toml'}), trials.csv, "
                  + ", ".join(result["plots"]))
        return result

    def _print_table(self, rows: list[dict]) -> None:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"study '{self.name}': {len(rows)} trials")
        cols = ["trial", "state", self.monitor, *self.space, "epochs"]
        for c in cols:
            t.add_column(c, no_wrap=True)
        for r in rows:
            t.add_row(*(_short(r[c]) if c in self.space else str(r[c]) for c in cols))
        Console(width=200).print(t)

    def _plots(self) -> list[str]:
        """history.png and importance.png (Optuna's matplotlib visualizations); each is skipped
        when Optuna cannot draw it yet (importance needs two finished trials)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as vis

        made = []
        for name, draw in (("history.png", vis.plot_optimization_history), ("importance.png", vis.plot_param_importances)):
            try:
                with warnings.catch_warnings():  # "too few trials: importances will be equal" and the like
                    warnings.simplefilter("ignore")
                    ax = draw(self.study, target_name=self.monitor)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue
            fig = ax.figure
            fig.set_size_inches(7, 4.2)
            fig.tight_layout()
            fig.savefig(self.folder / name, dpi=110)
            plt.close(fig)
            made.append(name)
        return made


def pruner_last(pruner: TunePruner, summary: dict, monitor: str) -> float:
    """The last reported value of a pruned trial (its run's final validation metric when adopted)."""
    return pruner.reported[-1] if pruner.reported else float(summary.get(monitor, float("nan")))


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v
        return f"{f:.4g}" if "." in v or "e" in v else v
    return str(v)


def _drop_none(d):
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d
