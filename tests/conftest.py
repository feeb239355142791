"""Shared test helpers. Keep this small: fixtures used by more than one test file only."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from deepstep.engine.plugin import Plugin

SRC = Path(__file__).resolve().parents[1] / "src"
# downloads and the cached feature classifiers of samples/frechet go to a fresh folder: the tests
# neither read nor write the user's cache (~/.cache/deepstep)
os.environ.setdefault("DEEPSTEP_CACHE", tempfile.mkdtemp(prefix="deepstep-test-cache-"))


def _pin_xdist_worker() -> None:
    """Under pytest-xdist (`-n N`, as scripts/test.sh runs the suite), give each worker its own share
    of the cores: N workers with torch's default threads would run N times as many threads as there
    are cores, and small models slow down many times over when their threads wait for a busy core.
    The share is the worker's CPU affinity, which its subprocesses inherit and deepstep's
    `train.threads = "auto"` reads as the usable cores."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not worker.startswith("gw") or not count.isdigit() or not hasattr(os, "sched_setaffinity"):
        return
    cores, n, i = sorted(os.sched_getaffinity(0)), int(count), int(worker[2:])
    if n < 2 or len(cores) < n:
        return
    share = set(cores[i::n])
    os.sched_setaffinity(0, share)
    import torch

    torch.set_num_threads(len(share))


_pin_xdist_worker()


def cli_env() -> dict:
    """Environment for `python -m deepstep` subprocesses: this checkout's sources, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m deepstep ARGS...` in a subprocess (cwd: tmp_path); returns CompletedProcess."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "deepstep", *map(str, args)], cwd=tmp_path,
                              env=cli_env(), capture_output=True, text=True, timeout=timeout)

    return run


# --- small files in the IDX format (MNIST / Fashion-MNIST) -----------------------------------

def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train=12, n_test=4, size=5) -> dict:
    """Write the four gzip IDX files of a random MNIST-like set; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, size, size)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, size, size)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test),
    }
    arrays["train-images-idx3-ubyte.gz"][0, 0, 0] = 255
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        (folder / name).write_bytes(gzip.compress(idx_bytes(a)))
    return arrays


# --- simulating a run killed mid-epoch (used by the exact-resume tests) ------------------------

class Killed(Exception):
    """Raised by KillAt to stop a Loop as a SIGKILL would, between two steps."""


class KillAt(Plugin):
    """Stop the loop at global step `step`."""

    def __init__(self, step):
        self.step = step

    def on_batch_end(self, run, step):
        if step == self.step:
            raise Killed


def interrupted_and_resumed(cfg, tmp_path, monkeypatch, kill_step: int):
    """Train `cfg` uninterrupted into tmp_path/ref, then again into tmp_path/cut killed at global
    step `kill_step` and resumed with `deepstep.run.resume`; returns (reference, resumed) Results."""
    from deepstep import run as run_mod

    ref = run_mod.train(cfg, tmp_path / "ref", verbose=0)
    with pytest.raises(Killed):
        run_mod.train(cfg, tmp_path / "cut", verbose=0, plugins=[KillAt(kill_step)])
    return ref, run_mod.resume(tmp_path / "cut", verbose=0)
