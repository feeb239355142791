"""Reliability (issue 15): every bad option, input or run directory ends in exit 2 with one
paragraph naming what is wrong and what would be valid; faults of the world (full disk, read-only
places, huge or undecodable files) are errors, not tracebacks; a run directory has one owner.
The random counterparts are in test_fuzz.py."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env
from deepstep import cli
from deepstep.engine import fit as fit_mod
from deepstep.engine import loop as loop_mod
from deepstep.engine.rundir import RunDir

TINY = ["--set", "train.epochs=1", "--set", "model.hidden=[16]", "--set", "train.threads=1", "--quiet"]


def run_main(capsys, *args) -> tuple[int, str]:
    rc = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    return rc, err


def assert_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err and "error:" in err, err
    assert "weights_only" not in err and "allow_pickle" not in err, err
    for n in needles:
        assert n in err, f"{n!r} not in {err}"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-epoch digits-mlp run."""
    path = tmp_path_factory.mktemp("rel") / "run"
    assert cli.main(["train", "digits-mlp", *TINY, "--run-dir", str(path)]) == 0
    return path


def interrupted(path: Path, monkeypatch, *sets: str, recipe: str = "digits-mlp") -> Path:
    """A run stopped (as by Ctrl-C) right after its first checkpoint: 3 epochs planned."""
    real = loop_mod.Loop.save

    def save_then_stop(self):
        real(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop_mod.Loop, "save", save_then_stop)
    args = ["train", recipe, *TINY, "--set", "train.epochs=3", *[a for s in sets for a in ("--set", s)]]
    assert cli.main([*args, "--run-dir", str(path)]) == 130
    monkeypatch.setattr(loop_mod.Loop, "save", real)
    assert (path / "checkpoint.pt").is_file() and not (path / "summary.json").exists()
    return path


# --- 1. options carry their constraints ------------------------------------------------------

@pytest.mark.parametrize("override,needle", [
    ("optim.lr=nan", "optim.lr"), ("optim.weight_decay=-1", "optim.weight_decay"), ("optim.eps=-1", "optim.eps"),
    ("train.threads=-1", "train.threads"), ("model.hidden=[-5]", "model.hidden[0]"),
    ("model.dropout=1.5", "model.dropout"), ("train.label_smoothing=2.0", "train.label_smoothing"),
    ("train.grad_clip=-1", "train.grad_clip"), ("sched.gamma=-1", "sched.gamma"), ("data.limit=-1", "data.limit"),
    ("sched.warmup_epochs=-1", "sched.warmup_epochs"), ("train.early_stop=-1", "train.early_stop"),
    ("optim.betas=[0.9, inf]", "optim.betas[1]"), ("sched.factor=1.5", "sched.factor"),
    ("train.monitor=val/nonexistent", "val/acc"),
])
def test_bad_option_exits_2_before_anything_is_made(override, needle, tmp_path, capsys):
    rc, err = run_main(capsys, "train", "digits-mlp", *TINY, "--set", override, "--run-dir", tmp_path / "run")
    assert_error(rc, err, needle)
    assert "expected" in err or "Valid" in err  # what would be valid
    assert not (tmp_path / "run").exists()


def test_model_options_of_other_families_are_checked(capsys):
    for args in (["model.name=transformer", "model.heads=0"], ["model.name=lstm", "model.hidden_size=-1"],
                 ["model.name=convnet", "model.channels=[8, 0]"]):
        rc, err = run_main(capsys, "train", "mnist1d-mlp", *[a for s in args for a in ("--set", s)], "--dry-run")
        assert_error(rc, err, args[1].split("=")[0].split(".")[1])


def test_scratch_refuses_nan_rate(capsys):
    assert_error(*run_main(capsys, "scratch", "--lr", "nan"), "--lr nan")


def test_unknown_expect_key_is_an_error_not_a_missed_target(tmp_path, capsys):
    rc, err = run_main(capsys, "train", "digits-mlp", *TINY, "--set", "expect.test/accuracy=0.5",
                       "--run-dir", tmp_path / "run")
    assert_error(rc, err, "test/accuracy", "test/acc")
    assert "NOT met" not in err and (tmp_path / "run" / "summary.json").is_file()


def test_one_class_data_is_refused(tmp_path, capsys):
    table = tmp_path / "one.csv"
    table.write_text("a,b,label\n" + "".join(f"{i},{i * 2},x\n" for i in range(40)))
    rc, err = run_main(capsys, "train", "digits-mlp", *TINY, "--set", "data.name=csv", "--set",
                       f"data.path={table}", "--run-dir", tmp_path / "run")
    assert_error(rc, err, "one class", "at least two")
    assert not (tmp_path / "run").exists()


def test_exploding_loss_is_divergence(tmp_path, capsys):
    rc, err = run_main(capsys, "train", "digits-mlp", *TINY, "--set", "optim.lr=1e6", "--run-dir", tmp_path / "r")
    assert_error(rc, err, "diverged", "exploded", "optim.lr")


# --- 2. errors of the world ------------------------------------------------------------------

def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/full/disk/file")


def test_full_disk_at_start(tmp_path, capsys, monkeypatch):
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: enospc() if len(data) == 65536 else real(fd, data))
    rc, err = run_main(capsys, "train", "digits-mlp", *TINY, "--run-dir", tmp_path / "run")
    assert_error(rc, err, "disk is full", "run")


def test_full_disk_at_a_checkpoint_keeps_the_last_one(tmp_path, capsys, monkeypatch):
    real, calls = loop_mod.save_checkpoint, []

    def second_fails(state, path):
        calls.append(path)
        if len(calls) == 2:
            enospc()
        real(state, path)

    monkeypatch.setattr(loop_mod, "save_checkpoint", second_fails)
    run = tmp_path / "my run"
    rc, err = run_main(capsys, "train", "digits-mlp", *TINY, "--set", "train.epochs=3", "--run-dir", run)
    assert_error(rc, err, "No space left", "'/full/disk/file'", f"deepstep resume {shlex.quote(str(run))}")
    assert not list(run.glob(".*.tmp"))
    monkeypatch.setattr(loop_mod, "save_checkpoint", real)
    assert cli.main(["resume", str(run), "--quiet"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_full_disk_at_the_final_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fit_mod, "save_weights", enospc)
    rc, err = run_main(capsys, "train", "digits-mlp", *TINY, "--run-dir", tmp_path / "run")
    assert_error(rc, err, "No space left", "is kept")
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


@pytest.mark.parametrize("code,needle", [(errno.EROFS, "read-only"), (errno.EACCES, "Permission denied"),
                                         (errno.EEXIST, "already exists")])
def test_os_errors_of_any_command_are_one_paragraph(code, needle, capsys, monkeypatch):
    def fails(args):
        raise OSError(code, os.strerror(code), "/some/out.png")

    monkeypatch.setitem(cli.COMMANDS, "sample", fails)
    assert_error(*run_main(capsys, "sample", "somewhere"), needle, "/some/out.png")


def test_memory_error_is_one_paragraph(capsys, monkeypatch):
    def fails(args):
        raise MemoryError

    monkeypatch.setitem(cli.COMMANDS, "eval", fails)
    assert_error(*run_main(capsys, "eval", "somewhere"), "Out of memory")


def test_predict_bad_inputs(finished, tmp_path, capsys):
    from numpy.lib import format as npf
    from PIL import Image

    np.save(tmp_path / "nan.npy", np.full((2, 64), np.nan, np.float32))
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    with open(tmp_path / "huge.npy", "wb") as f:  # a header claiming 24 TB
        npf.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (3_000_000, 2_000_000)})
    Image.new("L", (15000, 15000)).save(tmp_path / "bomb.png")
    for name, needle in [("nan.npy", "NaN"), ("words.npy", "dtype <U1"), ("huge.npy", "claims"),
                         ("bomb.png", "too large"), (".", "is a folder")]:
        assert_error(*run_main(capsys, "predict", finished, tmp_path / name), needle)


def test_training_on_a_decompression_bomb_and_a_huge_npy(tmp_path, capsys):
    from numpy.lib import format as npf
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "img" / c).mkdir(parents=True)
        Image.new("L", (15000, 15000) if c == "b" else (8, 8)).save(tmp_path / "img" / c / "1.png")
    (tmp_path / "npy").mkdir()
    with open(tmp_path / "npy" / "x.npy", "wb") as f:
        npf.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**7, 10**6)})
    np.save(tmp_path / "npy" / "y.npy", np.zeros(3, np.int64))
    for name, folder, needle in [("images", "img", "too large"), ("npz", "npy", "claims")]:
        rc, err = run_main(capsys, "train", "digits-mlp", *TINY, "--set", f"data.name={name}", "--set",
                           f"data.path={tmp_path / folder}", "--run-dir", tmp_path / f"run-{name}")
        assert_error(rc, err, needle)
        assert not (tmp_path / f"run-{name}").exists()


def test_random_bytes_in_a_txt_are_not_classified(tmp_path):
    from deepstep.config import DataConfig
    from deepstep.data.text import read_texts
    from deepstep.errors import UserError

    (tmp_path / "noise.txt").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UserError, match="not UTF-8 text"):
        read_texts([str(tmp_path / "noise.txt")], DataConfig(), ["a", "b"])


def test_predict_out_onto_an_existing_file_is_refused(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    (tmp_path / "taken").write_text("mine")
    run = SimpleNamespace(path=tmp_path, meta=SimpleNamespace(kind="image"))
    args = SimpleNamespace(out=str(tmp_path / "taken"))
    from deepstep.errors import UserError

    with pytest.raises(UserError, match="existing file"):
        cli._predict_reconstructions(run, np.zeros((1, 1, 2, 2), np.float32), ["x"], args)
    assert (tmp_path / "taken").read_text() == "mine"


# --- 3. tampered or mismatched run directories -----------------------------------------------

def test_tampered_files_of_a_finished_run(finished, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(finished, run)
    (run / "meta.json").write_text("{}")
    for cmd in (["eval", run], ["predict", run, "x.npy"]):
        assert_error(*run_main(capsys, *cmd), "meta.json", "lacks")
    (run / "meta.json").unlink()
    assert_error(*run_main(capsys, "predict", run, "x.npy"), "meta.json", "is missing")
    (run / "summary.json").write_text("[1, 2]")
    assert_error(*run_main(capsys, "eval", run), "summary.json", "not a JSON object")


def test_empty_checkpoint(tmp_path, capsys, monkeypatch):
    run = interrupted(tmp_path / "run", monkeypatch)
    (run / "checkpoint.pt").write_bytes(b"")
    assert_error(*run_main(capsys, "resume", run), "checkpoint.pt", "empty")


def test_checkpoint_of_another_model(tmp_path, capsys, monkeypatch):
    run = interrupted(tmp_path / "run", monkeypatch)
    other = interrupted(tmp_path / "other", monkeypatch, "model.hidden=[24]")
    shutil.copy(other / "checkpoint.pt", run / "checkpoint.pt")
    assert_error(*run_main(capsys, "resume", run), "another model", "checkpoint (24, 64) vs model (16, 64)")


def test_changed_data_is_refused_on_resume(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(0)
    table = tmp_path / "t.csv"
    rows = [f"{a:.3f},{b:.3f},{int(a > b)}" for a, b in rng.normal(size=(120, 2))]
    table.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    run = interrupted(tmp_path / "run", monkeypatch, "data.name=csv", f"data.path={table}")
    table.write_text("a,b,label\n" + "\n".join(rows[:-1] + ["9.000,1.000,1"]) + "\n")  # same shape
    assert_error(*run_main(capsys, "resume", run), "data", "changed", "same shapes")
    table.write_text("a,b,c,label\n" + "\n".join(r.replace(",", ",0,", 1) for r in rows) + "\n")  # a column more
    assert_error(*run_main(capsys, "resume", run), "changed", "in_shape [2] -> [3]")


def test_torn_metrics_and_leftover_temporaries_are_survived(tmp_path, capsys, monkeypatch):
    run = interrupted(tmp_path / "run", monkeypatch)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[0] = lines[0][:-5]  # a damaged record, and a torn last line of a kill during a write
    (run / "metrics.jsonl").write_text("\n".join([*lines, '{"epoch": 2, "tr']))
    (run / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    rc, err = run_main(capsys, "resume", run)
    assert rc == 0, err
    assert (run / "summary.json").is_file() and not list(run.glob(".*.tmp"))


# --- 4. ownership of a run directory ---------------------------------------------------------

def test_a_locked_run_is_refused_with_the_holders_pid(tmp_path, capsys, monkeypatch):
    run = interrupted(tmp_path / "run", monkeypatch)
    holder = RunDir(run)
    holder.lock()
    try:
        for cmd in (["resume", run], ["train", "digits-mlp", "--run-dir", run]):
            assert_error(*run_main(capsys, *cmd), f"pid {os.getpid()}")
    finally:
        holder.unlock()


def test_a_users_folder_is_never_overwritten(tmp_path, capsys):
    folder = tmp_path / "my files"
    folder.mkdir()
    (folder / "config.toml").write_text("mine = 1\n")
    (folder / "notes.txt").write_text("mine")
    rc, err = run_main(capsys, "train", "digits-mlp", *TINY, "--run-dir", folder)
    assert_error(rc, err, "already holds a run", f"'{folder}'")
    (folder / "config.toml").unlink()
    assert_error(*run_main(capsys, "train", "digits-mlp", *TINY, "--run-dir", folder), "not empty", "notes.txt")
    assert (folder / "notes.txt").read_text() == "mine" and sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_symlinks_inside_a_run_are_not_followed(tmp_path, capsys, monkeypatch):
    run = interrupted(tmp_path / "run", monkeypatch)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(outside)
    assert_error(*run_main(capsys, "resume", run), "symbolic link", "metrics.jsonl")
    assert outside.read_text() == "precious"


def _start(run_dir, *extra, env=None):
    cmd = [sys.executable, "-m", "deepstep", "train", "digits-mlp", "--set", "train.epochs=400", "--set",
           "model.hidden=[16]", "--set", "train.threads=1", "--quiet", *extra]
    if run_dir is not None:
        cmd += ["--run-dir", str(run_dir)]
    return subprocess.Popen(cmd, env=env or cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=run_dir.parent if run_dir is not None else None)


def _wait_for(path: Path, proc, timeout=90):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_second_process_refused_then_sigterm_is_resumable(tmp_path, run_cli):
    run = tmp_path / "run"
    first = _start(run)
    try:
        _wait_for(run / "checkpoint.pt", first)
        for args in (["train", "digits-mlp", "--run-dir", run], ["resume", run]):
            p = run_cli(*args)
            assert p.returncode == 2 and f"pid {first.pid}" in p.stderr and "Traceback" not in p.stderr, p.stderr
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 143 and "terminated" in err and f"deepstep resume {run}" in err, err
    assert RunDir(run).holder() is None  # the lock went with the process


def test_ctrl_c_without_run_dir_names_the_run(tmp_path):
    env = {**cli_env(), "DEEPSTEP_RUNS": str(tmp_path / "runs")}
    proc = _start(None, env=env)
    try:
        deadline = time.monotonic() + 90
        while not list((tmp_path / "runs").glob("*/checkpoint.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    (run,) = (tmp_path / "runs").iterdir()
    assert proc.returncode == 130 and f"deepstep resume {run}" in err, err
