"""The run directory: everything a run leaves behind, and all the report ever reads.

    config.toml       resolved configuration
    metrics.jsonl     one JSON object per logged point (prefixed keys: train/loss, val/acc, ...)
    summary.json      final metrics, train_seconds, samples_per_second, device, versions, seed
    meta.json         what predict needs besides weights: classes, input shape, normalization
    model.safetensors final weights
    checkpoint.pt     resumable state (atomic, every `train.checkpoint_every` epochs)

Ownership (docs/reliability.md): `train` and `resume` hold an exclusive lock on `RUN/.lock`
(flock, released by the kernel when the process ends, even by `kill -9`), and the file names the
holder's pid, so a second process is refused with that pid. A run is created only in a new or
empty folder, no file of a run directory is read or written through a symbolic link, and the
temporaries a kill during an atomic write leaves (`.NAME.*.tmp`) are removed on resume.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import sys
import time
from pathlib import Path

import tomli_w

from ..errors import UserError
from .checkpoint import atomic_write

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a run directory is then not guarded
    fcntl = None

LOCK = ".lock"
NAMES = ("config.toml", "metrics.jsonl", "summary.json", "meta.json", "model.safetensors", "checkpoint.pt")


def _ours(name: str) -> bool:
    """The lock, the write probe and atomic-write temporaries: left by a killed attempt, not a user's."""
    return name in (LOCK, ".write-test") or (name.startswith(".") and name.endswith(".tmp"))


def quoted(path) -> str:
    """A path as a shell would need it typed: 'my runs/x' quoted, runs/x as it is."""
    return shlex.quote(str(path))


class RunDir:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock_fd: int | None = None

    config = property(lambda self: self.path / "config.toml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "summary.json")
    meta = property(lambda self: self.path / "meta.json")
    weights = property(lambda self: self.path / "model.safetensors")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")

    @classmethod
    def check_new(cls, path: Path | str, locked: bool = False) -> None:
        """Raise a UserError unless `path` can take a new run: a new folder under a writable one,
        or an empty folder (nothing is created here: the run directory is made after the
        configuration and the data have been checked)."""
        p = Path(path)
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise UserError(f"Run directory '{p}' is a file, not a folder. Choose another with --run-dir.")
            run = cls(p)
            holder = None if locked else run.holder()
            if holder:
                raise UserError(f"Run directory '{p}' is in use by another deepstep process (pid {holder}). "
                                "Wait for it to finish, or choose another --run-dir.")
            if any((p / n).exists() for n in ("config.toml", "checkpoint.pt", "summary.json")):
                raise UserError(f"Run directory '{p}' already holds a run. Use `deepstep resume {quoted(p)}` to "
                                "continue it, or choose a new --run-dir.")
            others = sorted(e.name for e in p.iterdir() if not _ours(e.name))
            if others:
                shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
                raise UserError(f"Run directory '{p}' is not empty (it holds {shown}): deepstep creates a run only "
                                "in a new or empty folder, so that none of your files is overwritten. Choose a new "
                                "--run-dir.")
            if not os.access(p, os.W_OK | os.X_OK):
                raise UserError(f"Run directory '{p}' is not writable (permission denied). Choose another with --run-dir.")
            return
        parent = p.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"Run directory '{p}' is not writable: '{parent}' is not a folder this process may write "
                            "in. Choose another with --run-dir.")

    @classmethod
    def create(cls, path: Path | str, config: dict, hold: bool = False) -> RunDir:
        """Make the run directory (new or empty), lock it and write config.toml and an empty
        metrics.jsonl. With `hold` the lock is kept, and the caller releases it (`unlock`) when the
        run ends."""
        cls.check_new(path)
        run = cls(path)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"Run directory '{run.path}' cannot be created ({e.strerror}). Choose another with "
                            "--run-dir.") from None
        run.lock()
        try:
            cls.check_new(path, locked=True)  # again, under the lock: another process may have been quicker
            run.clean_temporaries()  # of an earlier attempt killed while it wrote config.toml
            run._probe()
            run.write_config(config)
            atomic_write(run.metrics, b"")
        except BaseException:
            run.unlock()
            raise
        if not hold:
            run.unlock()
        return run

    def _probe(self) -> None:
        """Write (and remove) 64 KiB with fsync: a full or read-only disk shows here, not mid-run."""
        probe = self.path / ".write-test"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                os.write(fd, bytes(65536))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise UserError(f"Run directory '{self.path}' is not writable ({e.strerror}"
                            f"{': the disk is full' if e.errno == errno.ENOSPC else ''}). Free some space or "
                            "choose another with --run-dir.") from None
        finally:
            try:
                probe.unlink()
            except OSError:
                pass

    @classmethod
    def open(cls, path: Path | str) -> RunDir:
        """An existing run directory; a run file that is a symbolic link is refused (deepstep never
        reads or writes through a link inside a run directory)."""
        run = cls(path)
        if not run.path.is_dir():
            what = "it does not exist" if not run.path.exists() else "it is a file"
            raise UserError(f"'{run.path}' is not a deepstep run directory ({what}; a run directory is a folder "
                            "holding config.toml).")
        for name in NAMES:
            if (run.path / name).is_symlink():
                raise UserError(f"'{run.path / name}' is a symbolic link: deepstep never follows links inside a "
                                "run directory. Replace it with the file itself (or remove it).")
        if not run.config.is_file():
            raise UserError(f"'{run.path}' is not a deepstep run directory (no config.toml).")
        return run

    # --- ownership --------------------------------------------------------------------------
    def holder(self) -> int | None:
        """The pid of the process holding this run's lock, or None when it is free."""
        if fcntl is None or not (self.path / LOCK).is_file() or self._lock_fd is not None:
            return None
        try:
            fd = os.open(self.path / LOCK, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)
        return None

    def lock(self) -> None:
        """Take the run's exclusive lock, or raise a UserError naming the process that holds it."""
        if fcntl is None or self._lock_fd is not None:
            return
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise UserError(f"Cannot lock the run directory '{self.path}' ({e.strerror}): "
                            f"{'RUN/.lock is a symbolic link' if e.errno == errno.ELOOP else 'is it writable?'}.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise UserError(f"Run directory '{self.path}' is in use by another deepstep process (pid "
                            f"{text if text.isdigit() else 'unknown'}): two processes must not write one run. Wait "
                            "for it to finish (or stop it), then try again, or choose another --run-dir.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock; the file stays (removing it would race)
            self._lock_fd = None

    def clean_temporaries(self) -> list[str]:
        """Remove what an atomic write killed half-way leaves (`.NAME.XXXX.tmp`); call under the lock."""
        removed = []
        for p in self.path.glob(".*.tmp"):
            if p.is_file() or p.is_symlink():
                p.unlink()
                removed.append(p.name)
        return removed

    def write_config(self, config: dict) -> None:
        atomic_write(self.config, tomli_w.dumps(_drop_none(config)).encode())

    def log(self, record: dict) -> None:
        append_line(self.metrics, json.dumps(record))

    def metric_lines(self) -> int:
        return sum(1 for _ in open(self.metrics)) if self.metrics.exists() else 0

    def truncate_metrics(self, n: int) -> None:
        """Keep the first n lines (those covered by the checkpoint being resumed)."""
        lines = self.metrics.read_text().splitlines(keepends=True) if self.metrics.exists() else []
        atomic_write(self.metrics, "".join(lines[:n]).encode())

    def read_metrics(self) -> list[dict]:
        """Every record of metrics.jsonl. A line that is not a JSON object (torn by a kill while it
        was written, or edited) is skipped with a warning: the metrics are a log, and one bad line
        must not cost the run its summary."""
        if not self.metrics.exists():
            return []
        out, bad = [], []
        for n, line in enumerate(self.metrics.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if isinstance(rec, dict):
                out.append(rec)
            else:
                bad.append(n)
        if bad:
            print(f"warning: {self.metrics}: line{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad[:5]))}"
                  f"{' ...' if len(bad) > 5 else ''} not a JSON object; skipped", file=sys.stderr)
        return out

    def write_json(self, path: Path, obj: dict) -> None:
        atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, path: Path) -> dict:
        """A JSON object of the run directory, or a UserError naming the file and what is wrong."""
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError:
            why = ("the run has not finished (resume it with `deepstep resume "
                   f"{quoted(self.path)}`)" if path.name == "summary.json" else
                   "the run directory is incomplete or was edited")
            raise UserError(f"'{path}' is missing: {why}.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"'{path}' is not valid JSON ({e}): the file was damaged or edited.") from None
        except OSError as e:
            raise UserError(f"Cannot read '{path}' ({e.strerror}).") from None
        if not isinstance(obj, dict):
            raise UserError(f"'{path}' holds {type(obj).__name__} {str(obj)[:40]!r}, not a JSON object: the file "
                            "was damaged or edited.")
        return obj


def append_line(path: Path, line: str) -> None:
    """Append one line to a file of a run directory, never through a symbolic link."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    with os.fdopen(fd, "a") as f:
        f.write(line + "\n")


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
