"""Reading raw inputs for `deepstep predict`: image files, .npy arrays and CSV rows, shaped to
the run's input shape. Scaling matches training ([0, 1] images); normalization is the run's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import UserError
from .io import IMAGE_SUFFIXES, load_npy, read_image, read_table


def _fit(a: np.ndarray, in_shape: tuple, source: str) -> np.ndarray:
    """Reshape an array of one or more examples to (N, *in_shape), or explain why it cannot be."""
    size = math.prod(in_shape)
    if a.size % size or a.size == 0:
        raise UserError(
            f"'{source}' holds an array of shape {a.shape}, which is not a whole number of examples of "
            f"shape {tuple(in_shape)} ({size} values each)."
        )
    return a.reshape(-1, *in_shape).astype(np.float32)


def read_inputs(paths: list[str], in_shape: tuple, kind: str,
                label_column: str = "label") -> tuple[np.ndarray, list[str]]:
    """Inputs for predict -> (array (N, *in_shape), a label per example). CSV files may hold the
    training label column `label_column`; it is dropped."""
    xs, names = [], []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            raise UserError(f"Input '{p}' is a folder; give the files themselves (e.g. '{path / '*.png'}').")
        if not path.is_file():
            raise UserError(f"Input file '{p}' does not exist.")
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            if kind != "image" or len(in_shape) != 3:
                raise UserError(f"'{p}' is an image, but this run's model reads {kind} inputs of shape {tuple(in_shape)}.")
            xs.append(read_image(path, in_shape)[None])
            names.append(p)
        elif suffix == ".npy":
            a = _fit(np.asarray(load_npy(path, numbers=True, word="valid")), in_shape, p)
            xs.append(a)
            names += [f"{p}[{i}]" for i in range(len(a))] if len(a) > 1 else [p]
        elif suffix == ".csv":
            rows = read_csv_rows(path, math.prod(in_shape), label_column)
            xs.append(_fit(rows, in_shape, p))
            names += [f"{p}:row{i + 1}" for i in range(len(rows))]
        else:
            raise UserError(f"'{p}': unsupported input type '{suffix}'. Use images ({', '.join(sorted(IMAGE_SUFFIXES))}), .npy or .csv.")
    x = np.concatenate(xs)
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise UserError(f"Input {names[int(np.argmax(bad))]} holds NaN or infinite values "
                        f"({int(bad.sum())} of {len(x)} examples do); every input value must be a finite number.")
    return x, names


def read_csv_rows(path: Path, width: int, label_column: str = "label") -> np.ndarray:
    """Numeric CSV rows, `width` numbers each. A header line is optional; if it names
    `label_column`, that column is dropped (a training CSV can be passed as it is)."""
    _, x, _ = read_table(path, label_column, need_label=False, need_header=False)
    if x.shape[1] != width:
        raise UserError(f"'{path}': expected {width} numbers per row (the run's inputs), got {x.shape[1]} "
                        f"columns besides the label column '{label_column}'.")
    return x
