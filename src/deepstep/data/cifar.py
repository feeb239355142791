"""CIFAR-10 (Krizhevsky 2009) in its "python version": the folder `cifar-10-batches-py` with
`data_batch_1` .. `data_batch_5` (50,000 training images), `test_batch` (10,000) and `batches.meta`.

Search order: `data.path` (that folder, its parent, or the archive `cifar-10-python.tar.gz`), the
download cache, then the official archive (MD5-checked) unless data.download = false. Archives are
extracted by file name only — nothing outside the expected names is written, so a crafted archive
cannot place files elsewhere (no path traversal, no links).

Why a restricted unpickler: the batch files are Python pickles, and unpickling calls whatever
functions the file names, so a tampered file could run code. `SafeUnpickler` resolves only what
these files need — NumPy array and dtype reconstruction and the latin-1 `_codecs.encode` that
Python 3 writes for bytes — each behind a wrapper that refuses object arrays; every other global
(builtins included: the files need none) is refused before anything is called. The result is then
checked against the documented layout (uint8 `data` of shape (N, 3072), N integer `labels` 0-9).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..registry import DATASETS
from .arrays import Arrays
from .download import cache_dir, extract_archive, fetch, missing_message

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
FILES = BATCHES + ("batches.meta",)
SOURCES = {
    "cifar10": {"mirrors": ["https://www.cs.toronto.edu/~kriz/"], "md5": "c58f30108f718f92721af3b95e74349a"},
}
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# --- restricted unpickling ------------------------------------------------------------------

class UnsafePickle(pickle.UnpicklingError):
    """The pickle names something outside the allow-list."""


def _dtype(spec, align=False, copy=False) -> np.dtype:
    d = np.dtype(spec.decode("ascii") if isinstance(spec, bytes) else spec, align, copy)
    if d.hasobject:
        raise UnsafePickle("an array of Python objects")
    return d


def _reconstruct(subtype, shape, dtype_code):
    # NumPy pickles an empty array here and fills it from the state that follows
    if subtype is not np.ndarray or int(np.prod(shape)) != 0:
        raise UnsafePickle(f"array reconstruction of {subtype!r} with shape {shape!r}")
    return np.ndarray(shape, _dtype(dtype_code))


def _frombuffer(buf, dtype, shape, order):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickle("an array of Python objects")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _encode(text, encoding):
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafePickle(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,   # NumPy 1.x (the files are from 2009)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # NumPy 2.x
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,        # protocol 5 pickles
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _encode,                            # bytes in Python 3 protocol-2 pickles
}


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals in `ALLOWED`; anything else is refused."""

    def find_class(self, module, name):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickle(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise UnsafePickle("a persistent id")


def safe_load(path: Path):
    """Unpickle `path` with `SafeUnpickler` (bytes strings stay bytes, as Python 2 wrote them)."""
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, encoding="bytes").load()
    except UnsafePickle as e:
        raise UserError(
            f"'{path}' asks to load {e}, which a CIFAR-10 batch never contains; refusing to unpickle it "
            f"(the file may have been tampered with). Delete it and download the archive {ARCHIVE} again."
        ) from None
    except OSError as e:
        raise UserError(f"Cannot read '{path}': {e.strerror or e}.") from None
    except Exception as e:  # any other failure of a restricted load means a damaged file
        raise UserError(
            f"'{path}' is not a readable CIFAR-10 batch: the pickle is truncated or corrupt "
            f"({type(e).__name__}: {e}). Delete it and download {ARCHIVE} again."
        ) from None


# --- reading --------------------------------------------------------------------------------

def _text_keys(d, path: Path) -> dict:
    if not isinstance(d, dict):
        raise UserError(f"'{path}' holds a {type(d).__name__}, not the dictionary of a CIFAR-10 batch.")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    d = _text_keys(safe_load(path), path)
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"'{path}': expected 'data' to be a uint8 array of shape (N, 3072), got {got}.")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise UserError(f"'{path}': 'labels' must be a list of integers, got {type(labels).__name__}.") from None
    if len(y) != len(data):
        raise UserError(f"'{path}' holds {len(data)} images but {len(y)} labels.")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise UserError(f"'{path}': labels must be class indices 0-9, found {y.min()}..{y.max()}.")
    return data.reshape(-1, 3, 32, 32), y  # rows are 1024 red, 1024 green, 1024 blue values


def read_classes(folder: Path) -> list[str]:
    """Class names from `batches.meta` when present, else the documented ten."""
    meta = folder / "batches.meta"
    if not meta.is_file():
        return list(CLASSES)
    names = _text_keys(safe_load(meta), meta).get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise UserError(f"'{meta}': expected 'label_names' to be a list of 10 class names.")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


# --- finding, downloading, extracting -------------------------------------------------------

def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in BATCHES)


def extract(archive: Path, where: Path) -> Path:
    """Extract the CIFAR-10 batch files from `archive` into `where/cifar-10-batches-py`, by name only."""

    def select(name: str) -> str | None:
        folder, _, base = name.rpartition("/")
        return base if folder.removeprefix("./") == FOLDER and base in FILES else None

    def check(tmp: Path, n: int) -> str | None:
        missing = [f for f in BATCHES if not (tmp / f).is_file()]
        return missing and ("the CIFAR-10 python archive: it lacks "
                            f"{', '.join(f'{FOLDER}/{f}' for f in missing)}")

    return extract_archive(archive, where, FOLDER, select, check, ARCHIVE)


def locate(cfg) -> Path:
    """The folder holding the batch files, extracting or downloading the archive if needed."""
    where = cache_dir() / "cifar10"
    if cfg.path:
        p = Path(cfg.path).expanduser()
        if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
            return where / FOLDER if _complete(where / FOLDER) else extract(p, where)
        for folder in (p, p / FOLDER):
            if _complete(folder):
                return folder
        if (p / ARCHIVE).is_file():
            return extract(p / ARCHIVE, where)
        what = "does not exist" if not p.exists() else "holds no complete CIFAR-10 python batches"
        raise UserError(f"data.path = '{p}' {what}: expected the files {', '.join(BATCHES)} in it or in "
                        f"'{p / FOLDER}', or the archive {ARCHIVE}.")
    if _complete(where / FOLDER):
        return where / FOLDER
    if not (where / ARCHIVE).is_file():
        files = f"{ARCHIVE} (or its extracted folder {FOLDER})"
        if not cfg.download:
            raise UserError(missing_message("cifar10", where, files, "downloads are off (data.download = false)."))
        src = SOURCES["cifar10"]
        try:
            fetch(ARCHIVE, src["mirrors"], where, src["md5"], timeout=60.0)
        except UserError as e:
            raise UserError(missing_message("cifar10", where, files, str(e))) from None
    folder = extract(where / ARCHIVE, where)
    (where / ARCHIVE).unlink()  # the extracted batches are all we read
    return folder


@DATASETS.register("cifar10")
def cifar10(cfg):
    """CIFAR-10: 50,000 train / 10,000 test 32x32 colour images in 10 classes (python batches)."""
    folder = locate(cfg)
    parts = [read_batch(folder / f) for f in BATCHES[:-1]]
    xs, ys = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    xt, yt = read_batch(folder / "test_batch")
    if cfg.limit:
        xs, ys = xs[: cfg.limit], ys[: cfg.limit]
    return Arrays(
        x_train=xs.astype(np.float32) / 255.0, y_train=ys,
        x_test=xt.astype(np.float32) / 255.0, y_test=yt,
        classes=read_classes(folder), kind="image", source=f"cifar10 ({folder})",
    )
