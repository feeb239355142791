"""Data parallel, correct: per-rank random streams (dropout, augmentation) over one shared data
permutation; 2 ranks with batch B equal 1 process with batch 2B (no dropout) to 1e-5; and a
`torchrun` job killed with SIGKILL (launcher and workers), resumed under `torchrun`, equals the
uninterrupted job, dropout included (each rank's random state is in the checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import cli_env
from deepstep.config import load_config
from deepstep.engine.checkpoint import load_checkpoint, load_weights
from deepstep.engine.fit import fit
from deepstep.engine.runtime import Runtime

BASE = ["train.epochs=4", "model.hidden=[32]", "train.threads=1", "optim.lr=0.003"]


def test_rank_seeds_differ_and_rank0_keeps_the_single_process_stream(monkeypatch):
    draws = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))  # WORLD_SIZE stays 1: no process group is joined
        rt = Runtime(device="cpu", seed=7)
        rt.seed_rank()
        draws[rank] = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(draws[0], torch.rand(4))  # rank 0: the stream of a plain run with seed 7
    torch.manual_seed(8)
    assert torch.equal(draws[1], torch.rand(4))  # rank 1: seed + 1


def torchrun(*args: str, cwd: Path, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "deepstep", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def finish(p: subprocess.Popen) -> None:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]


def sets(overrides) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def weights(run_dir: Path) -> dict:
    return load_weights(run_dir / "model.safetensors")


def epochs_of(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    recs = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # being written
            continue
        if "epoch" in rec:
            recs.append(rec)
    return recs


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (torchrun's workers run in sessions of their own)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_two_ranks_batch_b_equal_one_process_batch_2b(tmp_path):
    # digits, 50/50 split, 10 % validation: 808 training examples, 404 per rank; no dropout
    cfg = [*BASE, "model.dropout=0"]
    finish(torchrun("train", "digits-mlp", "--quiet", "--run-dir", "ddp", *sets([*cfg, "train.batch_size=16"]),
                    cwd=tmp_path))
    one = fit(load_config("digits-mlp", [*cfg, "train.batch_size=32"]), run_dir=tmp_path / "one", verbose=0)
    two, single = weights(tmp_path / "ddp"), weights(tmp_path / "one")
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2
    assert one.summary["epochs"] == 4 and two.keys() == single.keys()
    diff = max((two[k] - single[k]).abs().max().item() for k in two)
    print(f"max |w_2ranks - w_1process| = {diff:.2e}")
    assert diff <= 1e-5


@pytest.mark.slow
def test_torchrun_sigkill_then_torchrun_resume_equals_uninterrupted(tmp_path):
    cfg = sets([*BASE, "train.epochs=8", "train.batch_size=16"])  # the recipe's dropout 0.2 stays
    ref = torchrun("train", "digits-mlp", "--quiet", "--run-dir", "ref", *cfg, cwd=tmp_path)
    cut = torchrun("train", "digits-mlp", "--quiet", "--run-dir", "cut", *cfg, cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 200
    while not ((tmp_path / "cut" / "checkpoint.pt").exists() and len(epochs_of(tmp_path / "cut")) >= 3):
        assert cut.poll() is None, cut.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the torchrun job made no progress"
        time.sleep(0.005)
    pids = [cut.pid, *children(cut.pid)]
    assert len(pids) == 3  # the launcher and its two workers
    for pid in pids:  # all at once, as a crash would: killing only the launcher leaves the workers running
        os.kill(pid, signal.SIGKILL)
    cut.communicate()
    time.sleep(0.5)
    assert not (tmp_path / "cut" / "summary.json").exists()
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert 1 <= state["loop"]["epoch"] < 8
    streams = [r["torch"] for r in state["rng_ranks"]]
    assert len(streams) == 2 and not torch.equal(*streams)  # each rank's own dropout stream is saved

    finish(torchrun("resume", "cut", "--quiet", cwd=tmp_path))
    finish(ref)
    want, got = weights(tmp_path / "ref"), weights(tmp_path / "cut")
    assert max((want[k] - got[k]).abs().max().item() for k in want) <= 1e-6
    a, b = epochs_of(tmp_path / "ref"), epochs_of(tmp_path / "cut")
    assert [r["epoch"] for r in b] == list(range(1, 9))
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=1e-6)
