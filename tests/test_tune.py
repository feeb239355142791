"""`deepstep tune`: search spaces and their errors, the pruning plug-in (validation metric only),
and a real study: two worker processes on one SQLite study, both killed with SIGKILL mid-trial,
then two reruns that adopt and resume the orphaned trials; best.toml reproduces the best trial."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_env
from deepstep import cli
from deepstep.config import load_config
from deepstep.engine.fit import fit
from deepstep.engine.rundir import RunDir
from deepstep.errors import UserError
from deepstep.plugins.tune_pruner import TunePruner
from deepstep.tune import Tuner, parse_dist, parse_space, recipe_space

pytest.importorskip("optuna")

TINY = ["data.limit=300", "model.hidden=[16]", "train.threads=1"]


# --- spaces --------------------------------------------------------------------------------

def test_distributions_parse():
    d = parse_dist("optim.lr", "loguniform(1e-4, 1e-1)")
    assert (d.kind, d.low, d.high) == ("loguniform", 1e-4, 0.1)
    assert parse_dist("train.epochs", "int(2,8)").corners() == ["2", "8"]
    c = parse_dist("model.hidden", "choice([64], [128, 64], 'a,b')")
    assert c.choices == ("[64]", "[128, 64]", "'a,b'")
    assert parse_space(["model.dropout=uniform(0, 0.5)"])["model.dropout"].kind == "uniform"
    assert recipe_space("digits-mlp")["optim.lr"].kind == "loguniform"  # the recipe's [tune] table
    assert load_config("digits-mlp").optim.lr == 2e-3  # which training ignores


@pytest.mark.parametrize("text, says", [
    ("normal(0, 1)", "not a distribution"),
    ("uniform(1)", "two bounds"),
    ("uniform(0.5, 0.1)", "must be below"),
    ("loguniform(0, 1)", "positive bounds"),
    ("int(1.5, 4)", "whole-number"),
    ("choice()", "one or more values"),
    ("choice(a, a)", "twice"),
    ("uniform(a, b)", "finite numbers"),
])
def test_bad_distributions_are_named(text, says):
    with pytest.raises(UserError, match=says):
        parse_dist("optim.lr", text)


@pytest.mark.parametrize("space, says", [
    ("optim.lrr=loguniform(1e-4,1e-1)", "Unknown key 'optim.lrr'"),
    ("data.val_split=uniform(0.1,1.5)", "out of range"),
    ("train.epochs=uniform(1,5)", "expected int"),
    ("model.hidden=choice([16],[x])", "model.hidden"),
    ("optim.lr=loguniform(0,1)", "positive bounds"),
])
def test_bad_space_exits_2_before_any_trial(tmp_path, capsys, space, says):
    study = tmp_path / "study"
    assert cli.main(["tune", "digits-mlp", "--trials", "2", "--space", space, "--dir", str(study)]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not study.exists()  # nothing written, no trial started


def test_tune_needs_a_validation_metric(tmp_path, capsys):
    args = ["tune", "digits-mlp", "--space", "optim.lr=loguniform(1e-3,1e-1)", "--dir", str(tmp_path / "s")]
    assert cli.main([*args, "--set", "data.val_split=0"]) == 2
    assert "validation split" in capsys.readouterr().err
    assert cli.main([*args, "--set", "train.monitor=train/loss"]) == 2
    assert "validation metric" in capsys.readouterr().err


def test_missing_optuna_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'optuna>=3.5'"):
        Tuner("digits-mlp", TINY, parse_space(["optim.lr=loguniform(1e-3,1e-1)"]), folder=tmp_path / "s")


# --- the pruning plug-in -------------------------------------------------------------------

class FakeTrial:
    """Records what is reported; prunes after epoch `at`."""

    def __init__(self, at):
        self.at, self.reports = at, []

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return self.reports[-1][0] >= self.at


def test_pruner_reports_the_validation_metric_and_stops(tmp_path):
    trial = FakeTrial(at=2)
    run = fit(load_config("digits-mlp", [*TINY, "train.epochs=5"]), run_dir=tmp_path / "r",
              plugins=[TunePruner(trial)], verbose=0)
    assert run.summary["epochs"] == 2 and run.summary["tune/pruned_at"] == 2
    epochs = [r for r in RunDir(tmp_path / "r").read_metrics() if "epoch" in r]
    assert trial.reports == [(r["epoch"], r["val/acc"]) for r in epochs]  # validation, never test


def test_a_study_refuses_other_arguments(tmp_path):
    space = parse_space(["optim.lr=loguniform(1e-3,1e-1)"])
    Tuner("digits-mlp", [*TINY, "train.epochs=1"], space, trials=1, folder=tmp_path / "s", verbose=0).run()
    with pytest.raises(UserError, match="searches something else"):
        Tuner("digits-mlp", [*TINY, "train.epochs=2"], space, trials=2, folder=tmp_path / "s", verbose=0)


# --- a real study: two workers, SIGKILL, rerun ----------------------------------------------

TRIALS = 6
ARGS = ["--trials", str(TRIALS), "--space", "optim.lr=loguniform(1e-3,3e-2)",
        "--space", "model.dropout=uniform(0,0.4)", "--set", "train.epochs=5",
        *[a for s in TINY for a in ("--set", s)]]


def worker(study: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deepstep", "tune", "digits-mlp", *ARGS, "--dir", str(study)],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def mid_trial(study: Path) -> bool:
    """At least two trials finished and one is between its first checkpoint and its summary."""
    done = list(study.glob("trial-*/summary.json"))
    running = [d for d in study.glob("trial-*") if (d / "checkpoint.pt").exists() and not (d / "summary.json").exists()]
    return len(done) >= 2 and bool(running)


@pytest.mark.slow
def test_two_workers_killed_and_rerun_finish_the_study(tmp_path):
    study = tmp_path / "study"
    first = [worker(study), worker(study)]
    deadline = time.monotonic() + 150
    while not mid_trial(study):
        for p in first:
            assert p.poll() is None, f"a worker ended before it could be killed: {p.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "the workers made no progress"
        time.sleep(0.002)
    for p in first:
        os.kill(p.pid, signal.SIGKILL)
    lines = [ln for p in first for ln in p.communicate()[0].splitlines() if ln.startswith("trial ")]
    orphans = {d.name for d in study.glob("trial-*") if not (d / "summary.json").exists()}
    assert orphans

    second = [worker(study), worker(study)]
    outs = []
    for p in second:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    lines += [ln for out in outs for ln in out.splitlines() if ln.startswith("trial ")]

    rows = list(csv.DictReader(open(study / "trials.csv")))
    assert len(rows) == TRIALS and {r["state"] for r in rows} <= {"complete", "pruned"}
    numbers = [int(ln.split(":")[0].split()[1]) for ln in lines]
    assert sorted(numbers) == list(range(TRIALS))  # every trial told once: no trial run twice, none lost
    assert all(out.count("trial ") for out in outs)  # both reruns took trials: they ran in parallel
    resumed = [ln for ln in lines if "resumed" in ln]
    assert resumed, lines  # an orphan was adopted and continued from its checkpoint
    # a resumed trial equals the same config trained without interruption
    n = int(resumed[0].split(":")[0].split()[1])
    trial_dir = study / f"trial-{n:04d}"
    got = json.loads((trial_dir / "summary.json").read_text())
    want = fit(load_config(str(trial_dir / "config.toml")), run_dir=tmp_path / "again", verbose=0).summary
    assert got["val/acc"] == want["val/acc"] and got["test/loss"] == pytest.approx(want["test/loss"], abs=1e-6)

    # best.toml is a recipe that reproduces the best trial
    result = json.loads((study / "tune.json").read_text())
    assert result["trials"] == TRIALS and (study / "history.png").exists() and (study / "importance.png").exists()
    again = fit(load_config(str(study / "best.toml")), run_dir=tmp_path / "best", verbose=0).summary
    assert again["val/acc"] == pytest.approx(result["best_value"], abs=1e-9)
    assert again["test/acc"] == pytest.approx(result["best_test"]["test/acc"], abs=1e-9)
