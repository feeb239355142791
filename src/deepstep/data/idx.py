"""MNIST and Fashion-MNIST in the original IDX gzip format.

Search order for the four files: `data.path` (a folder), the Debian package location
(`dataset-fashion-mnist` installs /usr/share/datasets/fashion-mnist/), the download cache, then
the official mirrors with MD5 checks (unless data.download = false)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..registry import DATASETS
from .arrays import Arrays
from .download import cache_dir, fetch, missing_message

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

SOURCES = {
    "mnist": {
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"],
        "md5": ["f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"],
        "system": [],
        "classes": [str(i) for i in range(10)],
    },
    "fashion-mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "md5": ["8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"],
        "system": ["/usr/share/datasets/fashion-mnist"],
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    },
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip or plain). Raises UserError for truncated or malformed files."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"'{path}' cannot be read as gzip IDX ({e}). Delete it and download again.") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"'{path}' is not an IDX file of unsigned bytes (bad magic number).")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"'{path}' is truncated: its header is incomplete.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise UserError(
            f"'{path}' is truncated or corrupt: the header promises shape {shape} ({expected} bytes) "
            f"but {len(data) - header} bytes follow. Delete it and download again."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def locate(name: str, cfg) -> Path:
    """The folder that holds all four files, downloading them if allowed."""
    src = SOURCES[name]
    if cfg.path:  # the user's folder or nothing: never silently fall back to another copy
        missing = [f for f in FILES if not (Path(cfg.path) / f).is_file()]
        if missing:
            raise UserError(f"data.path = '{cfg.path}' lacks {', '.join(missing)} (the IDX files of {name}).")
        return Path(cfg.path)
    for folder in [Path(p) for p in src["system"]] + [cache_dir() / name]:
        if all((folder / f).is_file() for f in FILES):
            return folder
    where = cache_dir() / name
    if not cfg.download:
        raise UserError(_missing_msg(name, where, "downloads are off (data.download = false)."))
    try:
        for f, checksum in zip(FILES, src["md5"]):
            if not (where / f).is_file():
                fetch(f, src["mirrors"], where, checksum)
    except UserError as e:
        raise UserError(_missing_msg(name, where, str(e))) from None
    return where


def _missing_msg(name, where, why) -> str:
    hint = " On Debian: apt-get install dataset-fashion-mnist." if name == "fashion-mnist" else ""
    return missing_message(name, where, f"the files {', '.join(FILES)}", why, hint)


def load_idx(name: str, cfg) -> Arrays:
    folder = locate(name, cfg)
    xs, ys, xt, yt = (read_idx(folder / f) for f in FILES)
    if len(xs) != len(ys) or len(xt) != len(yt):
        raise UserError(f"{folder}: image and label files of {name} have different lengths.")
    if cfg.limit:
        xs, ys = xs[: cfg.limit], ys[: cfg.limit]
    return Arrays(
        x_train=(xs.astype(np.float32) / 255.0)[:, None], y_train=ys.astype(np.int64),
        x_test=(xt.astype(np.float32) / 255.0)[:, None], y_test=yt.astype(np.int64),
        classes=SOURCES[name]["classes"], kind="image", source=f"{name} ({folder})",
    )


@DATASETS.register("mnist")
def mnist(cfg):
    """MNIST handwritten digits, 60,000 train / 10,000 test, 28x28 (IDX gzip; downloaded when missing)."""
    return load_idx("mnist", cfg)


@DATASETS.register("fashion-mnist")
def fashion_mnist(cfg):
    """Fashion-MNIST, 60,000 train / 10,000 test, 28x28 clothing images in 10 classes (IDX gzip)."""
    return load_idx("fashion-mnist", cfg)
