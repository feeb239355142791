"""Crash safety: `deepstep resume` after a real SIGKILL equals an uninterrupted run; a diverging run
stops cleanly and keeps its last good checkpoint; checkpoints never unpickle arbitrary objects;
atomic writes leave either the old or the new file, never half of one, and no temp files."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import cli_env
from deepstep import cli
from deepstep.config import load_config
from deepstep.engine import checkpoint as ckpt_mod
from deepstep.engine.checkpoint import atomic_write, load_checkpoint, load_weights, save_checkpoint
from deepstep.engine.rundir import RunDir
from deepstep.errors import UserError
from deepstep.run import train

EPOCHS = 30
OVERRIDES = [f"train.epochs={EPOCHS}", "model.hidden=[64]", "train.threads=1"]


def start(run_dir: pathlib.Path, *extra: str) -> subprocess.Popen:
    sets = [arg for o in [*OVERRIDES, *extra] for arg in ("--set", o)]
    cmd = [sys.executable, "-m", "deepstep", "train", "digits-mlp", *sets, "--quiet", "--run-dir", str(run_dir)]
    return subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def epoch_records(run_dir: pathlib.Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text().split("\n") if ln.strip()]
    out = []
    for ln in lines:
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:  # a line being written right now
            continue
        if "epoch" in rec:
            out.append(rec)
    return out


def kill_when(conditions: dict, timeout: float = 150) -> None:
    """SIGKILL each process {name: (proc, ready)} as soon as its ready() holds, polling all at once."""
    deadline = time.monotonic() + timeout
    pending = dict(conditions)
    while pending:
        for name, (proc, ready) in list(pending.items()):
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                assert proc.returncode == -signal.SIGKILL
                del pending[name]
            elif proc.poll() is not None:
                pytest.fail(f"run '{name}' ended before it could be killed: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            for proc, _ in pending.values():
                proc.kill()
            pytest.fail(f"runs {list(pending)} made no progress")
        time.sleep(0.002)


def finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """Two runs are killed with SIGKILL: one after a few checkpoints, one before its first. Both
    resume to the result of an uninterrupted run. (The reference and one resume run in this
    process to spare interpreter start-ups; the other resume is a fresh `python -m deepstep`.)"""
    ref, mid, early = tmp_path / "ref", tmp_path / "mid", tmp_path / "early"
    # `early` checkpoints only at the end: it is killed after some epochs but before any checkpoint
    early_proc = start(early, f"train.checkpoint_every={EPOCHS * 10}")
    mid_proc = start(mid)
    kill_when({"early": (early_proc, lambda: len(epoch_records(early)) >= 2),
               "mid": (mid_proc, lambda: (mid / "checkpoint.pt").exists() and len(epoch_records(mid)) >= 5)})
    assert not (early / "checkpoint.pt").exists()
    assert not (mid / "summary.json").exists() and not (early / "summary.json").exists()
    killed_at = load_checkpoint(mid / "checkpoint.pt")["loop"]["epoch"]
    assert 1 <= killed_at < EPOCHS

    resume_mid = subprocess.Popen([sys.executable, "-m", "deepstep", "resume", str(mid), "--quiet"],
                                  env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert cli.main(["resume", str(early), "--quiet"]) == 0
    want = train(load_config("digits-mlp", OVERRIDES), ref, verbose=0).summary
    finish(resume_mid)

    reference = epoch_records(ref)
    assert [r["epoch"] for r in reference] == list(range(1, EPOCHS + 1))
    for d in (mid, early):
        got = json.loads((d / "summary.json").read_text())
        assert got["epochs"] == EPOCHS
        for key in ("test/acc", "test/loss", "val/acc", "val/loss"):
            assert abs(got[key] - want[key]) <= 1e-4, (d.name, key, got[key], want[key])
        records = epoch_records(d)
        assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1)), f"{d.name}: duplicated or lost epochs"
        for a, b in zip(records, reference):
            assert a == pytest.approx(b, abs=1e-6)


@pytest.mark.slow
def test_diverging_run_exits_2_and_keeps_last_good_checkpoint(tmp_path, run_cli):
    # the step schedule multiplies the rate by 1e30 after 2 epochs: epoch 3 diverges
    p = run_cli("train", "digits-mlp", "--set", "train.epochs=4", "--set", "model.hidden=[32]",
                "--set", "train.threads=1", "--set", "sched.name=step", "--set", "sched.step_epochs=2",
                "--set", "sched.gamma=1e30", "--quiet", "--run-dir", "run")
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert "diverged at epoch 3" in p.stderr and "optim.lr" in p.stderr
    run = RunDir(tmp_path / "run")
    assert "run/checkpoint.pt" in p.stderr
    state = load_checkpoint(run.checkpoint)
    assert state["loop"]["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["task"]["model"].values())
    assert [r["epoch"] for r in run.read_metrics() if "epoch" in r] == [1, 2]
    assert not run.summary.exists()


# --- safe loading ---------------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


class Plain:
    def __init__(self):
        self.x = 1


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"task": {"model": {}}, "extra": Payload(marker)}, evil)
    torch.load(evil, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError, match=re.escape(f"Checkpoint '{evil}' cannot be read safely")):
        load_checkpoint(evil)
    assert not marker.exists()

    plain = tmp_path / "plain.pt"
    torch.save({"obj": Plain()}, plain)
    with pytest.raises(UserError, match="cannot be read safely"):
        load_checkpoint(plain)


def test_corrupt_missing_and_good_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    state = {"w": torch.arange(4.0), "n": 3, "nested": {"s": "text", "l": [1.5, None]}}
    save_checkpoint(state, good)
    back = load_checkpoint(good)
    assert torch.equal(back["w"], state["w"]) and back["nested"] == state["nested"]
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="cannot be read safely"):
        load_checkpoint(cut)
    with pytest.raises(UserError, match="No checkpoint at"):
        load_checkpoint(tmp_path / "none.pt")
    with pytest.raises(UserError, match="not a valid safetensors file"):
        load_weights(good)  # a pickle is not accepted as weights either


def test_resume_with_unsafe_checkpoint_exits_2(tmp_path, capsys):
    cfg = load_config("digits-mlp", ["train.epochs=2", "model.hidden=[16]", "train.threads=1"])
    run = RunDir.create(tmp_path / "run", cfg.to_dict())
    marker = tmp_path / "pwned"
    torch.save({"loop": Payload(marker)}, run.checkpoint)
    assert cli.main(["resume", str(run.path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot be read safely" in err and str(run.checkpoint) in err and "Traceback" not in err
    assert not marker.exists()


# --- atomic writes ---------------------------------------------------------------------------------------


def leftovers(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "target.bin")


def test_atomic_write_replaces_whole_file_with_plain_mode(tmp_path):
    target = tmp_path / "target.bin"
    atomic_write(target, b"old")
    atomic_write(target, b"new" * 1000)
    assert target.read_bytes() == b"new" * 1000
    assert leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize("fail", ["write", "fsync", "replace"])
def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch, fail):
    target = tmp_path / "target.bin"
    atomic_write(target, b"old content")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    if fail == "write":  # the disk fills up half way through the data
        real_fdopen = os.fdopen

        class HalfFile:
            def __init__(self, fd, mode):
                self.f = real_fdopen(fd, mode)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                boom()

        monkeypatch.setattr(ckpt_mod.os, "fdopen", HalfFile)
    else:
        monkeypatch.setattr(ckpt_mod.os, fail, boom)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, b"new content that never lands")
    monkeypatch.undo()
    assert target.read_bytes() == b"old content"
    assert leftovers(tmp_path) == []
