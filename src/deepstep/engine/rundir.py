"""The run directory: everything a run leaves behind, and all the report ever reads.

    config.toml       resolved configuration
    metrics.jsonl     one JSON object per logged point (prefixed keys: train/loss, val/acc, ...)
    summary.json      final metrics, train_seconds, samples_per_second, device, versions, seed
    meta.json         what predict needs besides weights: classes, input shape, normalization
    model.safetensors final weights
    checkpoint.pt     resumable state (atomic, every `train.checkpoint_every` epochs)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import tomli_w

from ..errors import UserError
from .checkpoint import atomic_write


class RunDir:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.toml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "summary.json")
    meta = property(lambda self: self.path / "meta.json")
    weights = property(lambda self: self.path / "model.safetensors")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")

    @classmethod
    def create(cls, path: Path | str, config: dict) -> RunDir:
        run = cls(path)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            probe = run.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UserError(f"Run directory '{run.path}' is not writable ({e.strerror}). Choose another with --run-dir.") from None
        if run.checkpoint.exists() or run.summary.exists():
            raise UserError(
                f"Run directory '{run.path}' already holds a run. Use `deepstep resume {run.path}` to continue it, "
                "or choose a new --run-dir."
            )
        run.write_config(config)
        run.metrics.write_text("")
        return run

    @classmethod
    def open(cls, path: Path | str) -> RunDir:
        run = cls(path)
        if not run.config.is_file():
            raise UserError(f"'{run.path}' is not a deepstep run directory (no config.toml).")
        return run

    def write_config(self, config: dict) -> None:
        atomic_write(self.config, tomli_w.dumps(_drop_none(config)).encode())

    def log(self, record: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def metric_lines(self) -> int:
        return sum(1 for _ in open(self.metrics)) if self.metrics.exists() else 0

    def truncate_metrics(self, n: int) -> None:
        """Keep the first n lines (those covered by the checkpoint being resumed)."""
        lines = self.metrics.read_text().splitlines(keepends=True) if self.metrics.exists() else []
        atomic_write(self.metrics, "".join(lines[:n]).encode())

    def read_metrics(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def write_json(self, path: Path, obj: dict) -> None:
        atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"'{path}' is missing: the run has not finished.") from None
        except json.JSONDecodeError as e:
            raise UserError(f"'{path}' is not valid JSON ({e}).") from None


def default_run_dir(recipe: str) -> Path:
    root = Path(os.environ.get("DEEPSTEP_RUNS", "runs"))
    base = root / f"{recipe or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _drop_none(d):
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d
