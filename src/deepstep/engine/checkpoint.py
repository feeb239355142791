"""Atomic writes and safe loads. Nothing a user hands us is unpickled: weights are safetensors and
checkpoints are read with `torch.load(weights_only=True)`."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import UserError


def atomic_write(path: Path | str, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see old or new, never half."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # named by the file meant, not by the temporary's random name
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode a plain open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(state: dict, path: Path | str) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: Path | str, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No checkpoint at '{path}': the run never finished an epoch, or the folder is not a run.")
    if path.is_symlink():
        raise UserError(f"Checkpoint '{path}' is a symbolic link: deepstep never follows links inside a run directory.")
    if path.stat().st_size == 0:
        raise UserError(f"Checkpoint '{path}' is empty (0 bytes): it was truncated. Remove it to start the run "
                        "over, or restore it from a copy.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise UserError(f"Checkpoint '{path}' cannot be read safely ({type(e).__name__}: {_first_line(e)}). It is "
                        "damaged, or holds Python objects, which deepstep never unpickles. Remove it to start the "
                        "run over.") from None
    if not isinstance(state, dict):
        raise UserError(f"Checkpoint '{path}' holds a {type(state).__name__}, not a deepstep checkpoint. Remove it "
                        "to start the run over.")
    return state


def _first_line(e: BaseException) -> str:
    """The first line of an error, without torch's advice to unpickle (weights_only=False)."""
    for line in str(e).splitlines():
        line = line.strip()
        if line and "weights_only" not in line and "allow_pickle" not in line and "pickle" not in line.lower():
            return line[:200]
    return "not a readable checkpoint"


def save_weights(tensors: dict[str, torch.Tensor], path: Path | str, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, st_save(tensors, metadata=metadata))


def load_weights(path: Path | str) -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        return st_load(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"No weights file at '{path}'.") from None
    except (SafetensorError, ValueError, OSError) as e:
        raise UserError(f"Weights file '{path}' is not a valid safetensors file ({e}).") from None


def load_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with a clear error listing missing and unexpected keys."""
    missing, unexpected = [], []
    own = module.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
             if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if wrong:
            parts.append(f"shape mismatches {wrong[:8]}")
        raise UserError(f"Weights in '{source}' do not fit the model: {'; '.join(parts)}.")
    module.load_state_dict(tensors)
