"""Shared test helpers. Keep this small: fixtures used by more than one test file only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


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
