"""CLI smoke runs and user errors, each in a subprocess (`python -m deepstep ...`): a user error
exits 2 with one paragraph on stderr and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import deepstep
from conftest import write_idx_set
from deepstep.registry import MODELS, recipe_paths

SRC = str(Path(deepstep.__file__).resolve().parents[1])
FAST = ["--set", "train.epochs=1", "--quiet"]


def cli(*args, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "deepstep", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_user_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, one paragraph on stderr naming `needles`, no traceback."""
    err = r.stderr.strip()
    assert r.returncode == 2, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert err and "\n\n" not in err, f"stderr is not one paragraph:\n{err}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"
    return err


def digit(index: int = 0) -> tuple[np.ndarray, int]:
    """One 8x8 digit from scikit-learn, scaled to [0, 1] like the training data, and its label."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[index] / 16.0).astype(np.float32), int(d.target[index])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short digits-mlp run shared by the tests that read a finished run."""
    cwd = tmp_path_factory.mktemp("cli")
    r = cli("train", "digits-mlp", "--set", "train.epochs=2", "--run-dir", "D", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return cwd, cwd / "D", r


# --- listing ---------------------------------------------------------------------------

def test_list_shows_every_recipe_and_model(tmp_path, capsys):
    r = cli("list", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in [*recipe_paths(), *MODELS.names()]:
        assert f" {name} " in r.stdout, f"{name} missing from `deepstep list` (or cut short)"
    only = inproc(["list", "models"], capsys)
    assert only.returncode == 0 and " mlp " in only.stdout and "digits-mlp" not in only.stdout


def test_options_lists_keys_and_model_options(tmp_path, capsys):
    r = cli("options", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for key in ("optim.lr", "train.epochs", "data.val_split", "sched.name"):
        assert key in r.stdout
    for name in MODELS.names():
        assert f"  {name}: " in r.stdout
    one = inproc(["options", "cnn-guide"], capsys)
    assert one.returncode == 0 and "flat_features" in one.stdout and "5408" in one.stdout


def test_dry_run_prints_resolved_config(tmp_path):
    import tomllib

    r = cli("train", "digits-mlp", "--set", "optim.lr=3e-4", "--set", "model.name=convnet", "--dry-run",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = tomllib.loads(r.stdout)
    assert d["optim"]["lr"] == 3e-4 and d["model"]["name"] == "convnet" and "channels" in d["model"]
    assert not any(tmp_path.iterdir()), "--dry-run must not write anything"


# --- a real run --------------------------------------------------------------------------

def test_train_writes_the_run_directory(trained):
    _, run, r = trained
    for f in ("config.toml", "metrics.jsonl", "summary.json", "model.safetensors", "checkpoint.pt", "meta.json"):
        assert (run / f).is_file(), f"{f} missing"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(isinstance(rec, dict) for rec in records)
    epochs = [rec for rec in records if "epoch" in rec]
    assert [rec["epoch"] for rec in epochs] == [1, 2]
    assert all("train/loss" in rec and "val/acc" in rec for rec in epochs)
    s = json.loads((run / "summary.json").read_text())
    for key in ("test/acc", "test/loss", "val/acc", "train_seconds", "samples_per_second", "device",
                "versions", "seed"):
        assert key in s, key
    assert 0.0 <= s["test/acc"] <= 1.0 and s["test/loss"] > 0 and s["train_seconds"] > 0
    assert s["samples_per_second"] > 0 and s["seed"] == 0 and s["epochs"] == 2
    assert s["versions"]["torch"] and s["versions"]["deepstep"] == deepstep.__version__
    # 2 epochs are enough to be far better than chance (0.1) on digits
    assert s["test/acc"] > 0.5
    assert f"test/acc {s['test/acc']:.4f}" in r.stdout
    assert "run directory" in r.stdout


def test_config_toml_of_the_run_round_trips(trained):
    from deepstep.config import RunConfig, load_config, read_toml

    _, run, _ = trained
    cfg = RunConfig.from_dict(read_toml(run / "config.toml"), where="config.toml")
    assert cfg == load_config("digits-mlp", ["train.epochs=2"])


def test_eval_reproduces_the_summary(trained, monkeypatch, capsys):
    cwd, run, _ = trained
    monkeypatch.chdir(cwd)
    s = json.loads((run / "summary.json").read_text())
    r = cli("eval", "D", "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert abs(m["test/acc"] - s["test/acc"]) < 1e-6
    assert abs(m["test/loss"] - s["test/loss"]) < 1e-5
    assert abs(m["val/acc"] - s["val/acc"]) < 1e-6
    text = inproc(["eval", "D"], capsys)
    assert text.returncode == 0 and f"test/acc {s['test/acc']:.4f}" in text.stdout


def test_predict_npy_and_png(trained, monkeypatch, capsys):
    from PIL import Image

    cwd, _, _ = trained
    monkeypatch.chdir(cwd)
    x, label = digit(0)
    np.save(cwd / "x.npy", x)
    Image.fromarray((x * 255).round().astype(np.uint8), mode="L").save(cwd / "x.png")
    r = cli("predict", "D", "x.npy", "x.png", cwd=cwd)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("x.npy: ") and lines[1].startswith("x.png: ")
    j = inproc(["predict", "D", "x.npy", "x.png", "--json", "--top", "3"], capsys)
    assert j.returncode == 0, j.stderr
    rows = [json.loads(line) for line in j.stdout.splitlines()]
    for row in rows:
        top = row["top"]
        assert len(top) == 3
        probs = [t["probability"] for t in top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert top[0]["class"] in [str(i) for i in range(10)]
    # the text output shows the most likely class and its probability
    cls, p = rows[0]["top"][0]["class"], rows[0]["top"][0]["probability"]
    assert lines[0] == f"x.npy: {cls} ({p:.3f})"
    # the PNG holds the same digit (8-bit rounding aside): same prediction
    assert rows[1]["top"][0]["class"] == cls
    assert abs(rows[1]["top"][0]["probability"] - p) < 0.05
    assert cls == str(label)  # digit 0 of the set is an easy "0"


def test_predict_several_examples_in_one_npy(trained, monkeypatch, capsys):
    cwd, _, _ = trained
    monkeypatch.chdir(cwd)
    xs = np.stack([digit(i)[0] for i in range(5)])[:, None]  # (5, 1, 8, 8)
    np.save(cwd / "five.npy", xs)
    r = inproc(["predict", "D", "five.npy"], capsys)
    assert r.returncode == 0, r.stderr
    assert [line.split(":")[0] for line in r.stdout.strip().splitlines()] == [f"five.npy[{i}]" for i in range(5)]


def test_train_into_existing_run_dir_points_to_resume(trained):
    cwd, run, _ = trained
    before = (run / "summary.json").read_bytes()
    r = cli("train", "digits-mlp", *FAST, "--run-dir", "D", cwd=cwd)
    assert_user_error(r, "resume", "D")
    assert (run / "summary.json").read_bytes() == before


def test_resume_a_finished_run_is_a_user_error(trained, monkeypatch, capsys):
    cwd, _, _ = trained
    monkeypatch.chdir(cwd)
    assert_user_error(inproc(["resume", "D"], capsys), "already finished")


def test_predict_input_errors(trained, monkeypatch, capsys):
    cwd, _, _ = trained
    monkeypatch.chdir(cwd)
    assert_user_error(cli("predict", "D", "missing.npy", cwd=cwd), "missing.npy", "does not exist")
    np.save(cwd / "bad.npy", np.zeros(7, dtype=np.float32))
    assert_user_error(inproc(["predict", "D", "bad.npy"], capsys), "bad.npy", "(1, 8, 8)")
    (cwd / "notes.txt").write_text("hello")
    assert_user_error(inproc(["predict", "D", "notes.txt"], capsys), "notes.txt", ".npy")


# --- user errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("override,needles", [
    ("optim.lrr=1e-3", ["'optim.lrr'", "Did you mean 'lr'?", "Valid keys", "momentum"]),
    ("train.epochs=abc", ["train.epochs", "'abc'", "expected int"]),
])
def test_config_errors_exit_2_without_traceback(override, needles, tmp_path):
    r = cli("train", "digits-mlp", *FAST, "--set", override, cwd=tmp_path)  # the bad value comes last
    assert_user_error(r, *needles)
    assert not (tmp_path / "runs").exists(), "nothing is written for a bad config"


def test_unknown_recipe_exit_2(tmp_path):
    assert_user_error(cli("train", "digts-mlp", *FAST, cwd=tmp_path),
                      "Unknown recipe 'digts-mlp'", "Did you mean 'digits-mlp'?")


def inproc(argv, capsys) -> subprocess.CompletedProcess:
    """`deepstep.cli.main(argv)` in this process (fast; for errors raised before any training)."""
    from deepstep.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, rc, out, err)


@pytest.mark.parametrize("args,needles", [
    (["--set", "optimm.lr=1e-3"], ["Unknown section 'optimm'", "'optim'"]),
    (["--set", "model.hidden=5"], ["model.hidden", "expected a list"]),
    (["--set", "data.val_split=1.5"], ["data.val_split", "[0, 1)"]),
    (["--set", "model.name=mpl"], ["Unknown model 'mpl'", "'mlp'"]),
    (["--set", "model.hiden=[8]"], ["'hiden'", "'hidden'"]),
    (["--set", "data.name=digitz"], ["Unknown data set 'digitz'", "'digits'"]),
    (["--set", "train.epochs"], ["key=value"]),
    (["--set", "train.device=gpu"], ["train.device", "cpu"]),
])
def test_more_config_errors_exit_2(args, needles, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert_user_error(inproc(["train", "digits-mlp", "--quiet", "--set", "train.epochs=1", *args], capsys), *needles)


@pytest.mark.parametrize("args,needles", [
    (["train", "nosuch.toml"], ["nosuch.toml", "does not exist"]),
    (["eval", "nowhere"], ["nowhere", "not a deepstep run directory"]),
    (["predict", "nowhere", "x.npy"], ["nowhere", "not a deepstep run directory"]),
    (["resume", "nowhere"], ["nowhere", "not a deepstep run directory"]),
])
def test_missing_paths_exit_2(args, needles, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert_user_error(inproc(args, capsys), *needles)


def test_unknown_command_is_usage_error(tmp_path):
    r = cli("trian", cwd=tmp_path)
    assert r.returncode == 2 and "invalid choice" in r.stderr and "Traceback" not in r.stderr


def test_missing_data_file(tmp_path):
    r = cli("train", "digits-mlp", "--set", "data.name=fashion-mnist", "--set", "data.path=/nonexistent",
            "--set", "data.download=false", "--set", "data.limit=200", *FAST, "--run-dir", "R", cwd=tmp_path)
    assert_user_error(r, "/nonexistent", "data.path", "train-images-idx3-ubyte.gz")


def test_shape_mismatch_names_layer_and_shapes(tmp_path):
    write_idx_set(tmp_path / "idx", n_train=200, n_test=20, size=28)  # 28x28 like Fashion-MNIST
    r = cli("train", "digits-mlp", "--set", "data.name=fashion-mnist", "--set", f"data.path='{tmp_path / 'idx'}'",
            "--set", "model.name=cnn-guide", "--set", "model.flat_features=1152", *FAST, "--run-dir", "R",
            cwd=tmp_path)
    assert_user_error(r, "'head.1'", "Linear", "1152", "(2, 5408)", "(1, 28, 28)")
    assert not (tmp_path / "R" / "checkpoint.pt").exists()


def test_series_data_with_an_image_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    r = inproc(["train", "mnist1d-mlp", "--set", "model.name=cnn-guide", "--set", "data.limit=200", *FAST,
                "--run-dir", "R"], capsys)
    assert_user_error(r, "cnn-guide", "(1, 40)")


def test_unwritable_run_dir(tmp_path, monkeypatch, capsys):
    (tmp_path / "plain-file").write_text("not a folder")
    # tests may run as root, where permissions do not stop writes: a file as parent always does
    assert_user_error(cli("train", "digits-mlp", *FAST, "--run-dir", "plain-file/run", cwd=tmp_path),
                      "plain-file/run", "not writable", "--run-dir")
    monkeypatch.chdir(tmp_path)
    assert_user_error(inproc(["train", "digits-mlp", *FAST, "--run-dir", "plain-file"], capsys),
                      "plain-file", "--run-dir")
    assert (tmp_path / "plain-file").read_text() == "not a folder"


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    """Epoch 1 trains normally; a step schedule then multiplies the rate by 1e15 and the loss
    becomes NaN in epoch 2: exit 2 with advice, and epoch 1's checkpoint remains."""
    from deepstep.engine.checkpoint import load_checkpoint

    r = cli("train", "digits-mlp", "--set", "train.epochs=3", "--set", "optim.name=sgd",
            "--set", "sched.name=step", "--set", "sched.step_epochs=1", "--set", "sched.gamma=1e15",
            "--quiet", "--run-dir", "R", cwd=tmp_path)
    assert_user_error(r, "diverged", "epoch 2", "optim.lr", "checkpoint")
    run = tmp_path / "R"
    assert (run / "checkpoint.pt").is_file()
    assert load_checkpoint(run / "checkpoint.pt")["loop"]["epoch"] == 1
    assert not (run / "summary.json").exists()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [rec["epoch"] for rec in records if "epoch" in rec] == [1]


def test_non_finite_loss_in_first_epoch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    r = inproc(["train", "digits-mlp", "--set", "optim.lr=1e12", "--set", "optim.name=sgd", *FAST,
                "--run-dir", "R"], capsys)
    assert_user_error(r, "diverged", "optim.lr")
    assert not (tmp_path / "R" / "summary.json").exists()
