"""Your own data, named by `data.path`: NumPy arrays (`npz`), CSV tables (`csv`) and image folders
(`images`). Every problem with the input — missing, empty, truncated, corrupt, wrong shape or a
non-numeric cell — is a UserError that names the file (and line/column where there is one) and
what was expected.

Choices:
- The kind follows the array rank: (N, C, H, W) -> image, (N, C, T) -> series, (N, F) -> table.
  A 4-D array whose last axis is 1 or 3 (and second is not) is taken as channels-last and
  transposed. uint8 images are scaled to [0, 1], like every built-in image set.
- Labels: integer arrays are class indices, float arrays are regression targets, string arrays
  (and CSV label columns holding any non-number) become class indices with their names kept
  (sorted). CSV labels that are all whole numbers count as integers.
- NumPy files are read with allow_pickle=False: object arrays are refused, never unpickled.
- `data.limit` keeps the first N training rows; for image folders, which are sorted by class, it
  keeps N files drawn with a fixed seed so that every class can appear.
"""

from __future__ import annotations

import csv
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import UserError, scrub
from ..registry import DATASETS
from .arrays import Arrays
from .io import (  # noqa: F401  (read_csv_rows: re-exported)
    IMAGE_SUFFIXES,
    csv_labels,
    load_npy,
    need_path,
    npy_header,
    open_image,
    read_csv_rows,
    read_image,
    read_table,
)
from .text import text_table

NPZ_EXPECTED = ("a .npz file with arrays x and y (or x_train, y_train and optionally x_test, y_test; "
                "class names optionally in classes), or a folder with x.npy and y.npy")
CSV_EXPECTED = "a CSV file with a header line (or a folder with train.csv and optionally test.csv)"
IMAGES_EXPECTED = "a folder with one sub-folder of images per class, optionally inside train/ and test/"


# --- arrays -> Arrays -----------------------------------------------------------------------

def kind_of(x: np.ndarray, source: str) -> str:
    kinds = {4: "image", 3: "series", 2: "table"}
    if x.ndim not in kinds:
        raise UserError(f"{source}: x has shape {x.shape}; expected (N, F) for a table, (N, C, T) for "
                        f"series or (N, C, H, W) for images.")
    return kinds[x.ndim]


def _inputs(x: np.ndarray, source: str) -> tuple[np.ndarray, str]:
    if x.dtype.kind not in "biuf":
        raise UserError(f"{source}: x must hold numbers, got dtype {x.dtype}.")
    if x.ndim == 1:
        x = x[:, None]  # one feature per example
    kind = kind_of(x, source)
    if kind == "image" and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        raise UserError(f"{source}: x holds NaN or infinite values (first in example {np.argwhere(bad)[0][0]}).")
    return np.ascontiguousarray(x), kind


def encode_labels(parts: list[np.ndarray], source: str) -> tuple[list[np.ndarray], list[str]]:
    """Label arrays -> int64 class indices (integers, booleans, strings) or float32 targets."""
    kinds = {p.dtype.kind for p in parts}
    if kinds & {"U", "S", "O"}:
        if "O" in kinds:
            raise UserError(f"{source}: labels must be numbers or strings, got Python objects.")
        text = [p.astype(str) for p in parts]
        classes = sorted(set().union(*(set(t.ravel().tolist()) for t in text)))
        index = {c: i for i, c in enumerate(classes)}
        return [np.array([index[v] for v in t.ravel()], dtype=np.int64).reshape(t.shape) for t in text], classes
    if kinds <= set("biu"):
        return [p.astype(np.int64) for p in parts], []
    if kinds <= set("biuf"):
        out = [p.astype(np.float32) for p in parts]
        if any(not np.isfinite(p).all() for p in out):
            raise UserError(f"{source}: y holds NaN or infinite values.")
        return out, []
    raise UserError(f"{source}: labels must be numbers or strings, got dtype {parts[0].dtype}.")


def make_arrays(x, y, x_test, y_test, source: str, cfg, classes=None) -> Arrays:
    """Check shapes and types, choose the kind, apply data.limit, and build `Arrays`."""
    x, kind = _inputs(np.asarray(x), source)
    if len(x) == 0:
        raise UserError(f"{source}: there are no examples (x has shape {x.shape}).")
    if (x_test is None) != (y_test is None):
        raise UserError(f"{source}: give both x_test and y_test, or neither.")
    if x_test is not None:
        x_test, test_kind = _inputs(np.asarray(x_test), source + " (test)")
        if x_test.shape[1:] != x.shape[1:]:
            raise UserError(f"{source}: test examples have shape {x_test.shape[1:]}, "
                            f"training examples {x.shape[1:]}.")
    ys = [np.asarray(y)] + ([np.asarray(y_test)] if y_test is not None else [])
    for arr, xx, part in zip(ys, (x, x_test), ("y", "y_test")):
        if arr.ndim not in (1, 2) or len(arr) != len(xx):
            raise UserError(f"{source}: {part} has shape {arr.shape}; expected ({len(xx)},) — one label "
                            f"per example — or ({len(xx)}, K) regression targets.")
    ys, names = encode_labels(ys, source)
    if classes is not None and len(classes) and not names and ys[0].dtype == np.int64:
        names = [str(c) for c in np.asarray(classes).ravel().tolist()]
        if max(int(a.max()) for a in ys) >= len(names):
            raise UserError(f"{source}: 'classes' names {len(names)} classes, but the labels go up to "
                            f"{max(int(a.max()) for a in ys)}.")
    y, y_test = ys[0], (ys[1] if len(ys) > 1 else None)
    if cfg.limit:
        x, y = x[: cfg.limit], y[: cfg.limit]
    return Arrays(x_train=x, y_train=y, x_test=x_test, y_test=y_test, classes=names, kind=kind, source=source)


# --- npz / npy ------------------------------------------------------------------------------

def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    return load_npy(path, mmap)  # header checked first: numbers only, a size that fits the file


def _npz_member(z, key: str, source: str) -> np.ndarray:
    """One array of an open .npz, its header checked against the member's size before reading."""
    name = f"{key}.npy"
    try:
        info = z.zip.getinfo(name)
        with z.zip.open(name) as f:
            npy_header(f, info.file_size, f"{source} (array '{key}')", numbers=False)
    except KeyError:
        pass  # np.load names members without .npy too; let it read them
    return z[key]


def _pick(arrays: dict, source: str, expected: str) -> tuple:
    names = sorted(arrays)
    if "x" in arrays and "y" in arrays:
        keys = ("x", "y", None, None)
    elif "x_train" in arrays and "y_train" in arrays:
        keys = ("x_train", "y_train", "x_test" if "x_test" in arrays else None, "y_test" if "y_test" in arrays else None)
    else:
        raise UserError(f"{source} holds the arrays {', '.join(names) or '(none)'}; expected {expected}.")
    return tuple(arrays[k]() if k else None for k in keys) + ((arrays["classes"]() if "classes" in arrays else None),)


@DATASETS.register("npz")
def npz(cfg):
    """Your NumPy arrays: data.path = a .npz with x, y (or x_train, y_train, x_test, y_test), or a folder of x.npy, y.npy."""
    path = need_path(cfg, NPZ_EXPECTED)
    if path.is_dir() and cfg.stream:
        return _streamed(path, cfg)
    if path.is_dir():
        files = {p.stem: p for p in path.glob("*.npy")}
        arrays = {k: (lambda p=p: _load_npy(p)) for k, p in files.items()}
        parts = _pick(arrays, f"folder '{path}'", "x.npy and y.npy (or x_train.npy, y_train.npy)")
        return make_arrays(*parts[:4], f"npy files in '{path}'", cfg, classes=parts[4])
    broken = f"'{path}' is not a readable .npz archive (truncated, corrupt or holding Python objects, which are never unpickled"
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{broken}: {scrub(e)}).") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise UserError(f"'{path}' is a single array of shape {z.shape}; expected {NPZ_EXPECTED}.")
    with z:
        try:
            arrays = {k: (lambda k=k: _npz_member(z, k, f"'{path}'")) for k in z.files}
            parts = _pick(arrays, f"'{path}'", "arrays x and y (or x_train, y_train, and optionally x_test, y_test)")
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise UserError(f"{broken}: {scrub(e)}).") from None
    return make_arrays(*parts[:4], f"'{path}'", cfg, classes=parts[4])


def _streamed(path: Path, cfg) -> Arrays:
    """data.stream: x.npy (and x_test.npy) stay on disk, memory-mapped; labels are read into memory.
    Inputs must already be channels-first; uint8 inputs are scaled by 1/255 as they are read."""
    files = {p.stem: p for p in path.glob("*.npy")}
    pre = "" if "x" in files else "x_train" in files and "_train"
    if pre is False or f"y{pre}" not in files:
        raise UserError(f"Folder '{path}' needs x.npy and y.npy (or x_train.npy, y_train.npy) for data.stream; "
                        f"found {', '.join(sorted(files)) or 'no .npy files'}.")
    x = _load_npy(files[f"x{pre}"], mmap=True)
    has_test = "x_test" in files and "y_test" in files
    x_test = _load_npy(files["x_test"], mmap=True) if has_test else None
    source = f"npy files in '{path}' (streamed)"
    for arr in (x,) + ((x_test,) if has_test else ()):
        if arr.dtype.kind not in "biuf":
            raise UserError(f"{source}: x must hold numbers, got dtype {arr.dtype}.")
        kind = kind_of(arr, source)
        if kind == "image" and arr.shape[1] not in (1, 3):
            raise UserError(f"{source}: streamed images must be channels-first (N, C, H, W) with 1 or 3 channels; "
                            f"got shape {arr.shape}.")
    ys = [_load_npy(files[f"y{pre}"])] + ([_load_npy(files["y_test"])] if has_test else [])
    for arr, xx in zip(ys, (x, x_test)):
        if len(arr) != len(xx):
            raise UserError(f"{source}: {len(xx)} inputs but {len(arr)} labels.")
    ys, classes = encode_labels(ys, source)
    y = ys[0][: cfg.limit] if cfg.limit else ys[0]
    x = x[: cfg.limit] if cfg.limit else x
    return Arrays(x_train=x, y_train=y, x_test=x_test, y_test=ys[1] if has_test else None, classes=classes,
                  kind=kind_of(x, source), source=source, scale=1 / 255 if x.dtype == np.uint8 else 1.0)


# --- CSV ------------------------------------------------------------------------------------

def _header(path: Path) -> list[str]:
    """The column names in the first line of a CSV file ([] if unreadable: read_table explains)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError):
        return []
    delim = max(",;\t", key=first.count) if first.strip() else ","
    return [c.strip() for c in next(csv.reader([first], delimiter=delim), [])]


@DATASETS.register("csv")
def csv_table(cfg):
    """Your CSV table: numeric feature columns plus data.label_column; or texts when the header has data.text_column."""
    path = need_path(cfg, CSV_EXPECTED)
    files = [path]
    if path.is_dir():
        files = [path / "train.csv"] + ([path / "test.csv"] if (path / "test.csv").is_file() else [])
        if not files[0].is_file():
            raise UserError(f"data.path = '{path}' is a folder without train.csv; expected {CSV_EXPECTED}.")
    header = _header(files[0])
    if cfg.text_column in header:  # text classification (data/text.py)
        return text_table(cfg, ".csv")
    try:
        tables = [read_table(f, cfg.label_column) for f in files]
    except UserError as e:
        if "not a finite number" not in str(e):
            raise
        raise UserError(f"{e} If this is text data, set data.text_column to the column holding the text "
                        f"(now '{cfg.text_column}', which '{files[0]}' lacks).") from None
    if len(tables) > 1 and tables[1][0] != tables[0][0]:
        raise UserError(f"'{files[1]}' has the feature columns {tables[1][0]}, but '{files[0]}' has {tables[0][0]}.")
    ys = csv_labels([t[2] for t in tables])
    test = (tables[1][1], ys[1]) if len(tables) > 1 else (None, None)
    return make_arrays(tables[0][1], ys[0], *test, f"'{path}'", cfg)


# --- image folders --------------------------------------------------------------------------

def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _listing(folder: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """(files, class indices, class names) of `folder`/<class>/<image>."""
    dirs = _class_dirs(folder)
    if not dirs:
        raise UserError(f"'{folder}' has no class sub-folders; expected {IMAGES_EXPECTED}.")
    names = classes or [d.name for d in dirs]
    files, labels = [], []
    for d in dirs:
        if d.name not in names:
            raise UserError(f"'{d}' is a class the training images lack (training classes: {', '.join(names)}).")
        found = _image_files(d)
        if not found and classes is None:
            raise UserError(f"'{d}' holds no image files; expected images in every class folder.")
        files += found
        labels += [names.index(d.name)] * len(found)
    if not files:
        raise UserError(f"'{folder}' holds no image files; expected {IMAGES_EXPECTED}.")
    return files, labels, names


def _read_images(files: list[Path], shape: tuple) -> np.ndarray:
    out = np.empty((len(files), *shape), dtype=np.float32)
    for i, f in enumerate(files):
        out[i] = read_image(f, shape)
    return out


@DATASETS.register("images")
def image_folder(cfg):
    """Your image folder: one sub-folder per class (optionally under train/ and test/), read with Pillow."""
    root = need_path(cfg, IMAGES_EXPECTED)
    if not root.is_dir():
        raise UserError(f"data.path = '{root}' is a file; expected {IMAGES_EXPECTED}.")
    split = (root / "train").is_dir()
    files, labels, classes = _listing(root / "train" if split else root, None)
    if cfg.limit and cfg.limit < len(files):
        keep = np.sort(np.random.default_rng(0).permutation(len(files))[: cfg.limit])
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    if cfg.image_size:
        h = w = cfg.image_size
    else:
        with open_image(files[0]) as img:
            w, h = img.size
    shape = (1 if cfg.grayscale else 3, h, w)
    x = _read_images(files, shape)
    x_test = y_test = None
    if split and (root / "test").is_dir():
        test_files, test_labels, _ = _listing(root / "test", classes)
        x_test, y_test = _read_images(test_files, shape), np.array(test_labels, dtype=np.int64)
    return Arrays(x_train=x, y_train=np.array(labels, dtype=np.int64), x_test=x_test, y_test=y_test,
                  classes=classes, kind="image", source=f"image folder '{root}'")
