"""Plain readers of files: no registry, no loaders. The registered loaders (data/files.py,
data/text.py, data/series.py) and the predict-time input readers (data/inputs.py, `read_texts` in
data/text.py) import them at the top of the module; this module imports no other data module,
so the data package has no import circle.

- `need_path`: `data.path` as an existing Path, or a UserError saying what it should name.
- Images: `IMAGE_SUFFIXES`, `read_image` (Pillow, imported when first used).
- CSV tables: `read_csv_rows`, `read_table` (numeric features plus a label column), `csv_labels`.
- Text tables: `read_text_csv`, `read_jsonl` (by suffix in `READERS`) and `read_text_file`.

Every problem with a file is a UserError naming it (and the line/column where there is one).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..errors import UserError, scrub


def need_path(cfg, expected: str) -> Path:
    """`data.path` as an existing Path, or a UserError saying what it should name."""
    if not cfg.path:
        raise UserError(f"data.name = '{cfg.name}' reads your files: set data.path to {expected} "
                        f"(e.g. --set data.path=DIR).")
    p = Path(cfg.path).expanduser()
    if not p.exists():
        raise UserError(f"data.path = '{p}' does not exist: expected {expected}.")
    return p


# --- images -------------------------------------------------------------------------------

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


MAX_PIXELS = 50_000_000  # larger images are refused before they are decoded (a 15000x15000 PNG: 4 GB as floats)


def open_image(path: Path):
    """An opened (not yet decoded) Pillow image, its size checked before any pixel is decoded; every
    problem (not an image, truncated, a decompression bomb) a UserError naming the file."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(f"'{path}' is too large an image to read ({e}); deepstep reads images of at most "
                        f"{MAX_PIXELS:,} pixels: shrink it first.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"'{path}' is not a readable image ({e}).") from None
    w, h = img.size
    if w * h > MAX_PIXELS or w < 1 or h < 1:
        img.close()
        raise UserError(f"'{path}' is an image of {w}x{h} pixels; deepstep reads images of 1 to {MAX_PIXELS:,} "
                        "pixels: shrink it first.")
    return img


def read_image(path: Path, in_shape: tuple) -> np.ndarray:
    """One image file -> (C, H, W) float32 in [0, 1], converted to the run's channels and size."""
    from PIL import Image

    c, h, w = in_shape
    try:
        with open_image(path) as img:
            img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            a = np.asarray(img, dtype=np.float32) / 255.0
    except UserError:
        raise
    except Exception as e:  # Pillow's decoders raise OSError, ValueError, SyntaxError, zlib.error, ...
        raise UserError(f"'{path}' is not a readable image ({type(e).__name__}: {e}).") from None
    return a[None] if c == 1 else a.transpose(2, 0, 1)


# --- NumPy files --------------------------------------------------------------------------

def npy_header(f, size: int, source: str, numbers: bool = True, word: str = "readable") -> tuple[tuple, np.dtype]:
    """(shape, dtype) from an open .npy stream's header, checked before any data is read: no
    Python objects (with `numbers`, no strings either) and a header whose size fits the `size`
    bytes there are (a header may claim terabytes)."""
    from numpy.lib import format as npf

    try:
        version = npf.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npf.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = npf.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise UserError(f"{source} is not a {word} .npy array ({scrub(e)}).") from None
    if dtype.hasobject or dtype.kind not in ("biuf" if numbers else "biufUS"):
        raise UserError(f"{source} holds an array of dtype {dtype}; expected numbers (bool, int or float). Arrays "
                        "of Python objects are never unpickled.")
    need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if need > size:
        raise UserError(f"{source}: its header claims an array of shape {tuple(shape)} ({need:,} bytes), but the "
                        f"file holds only {size:,} bytes: it is truncated or damaged.")
    return tuple(shape), dtype


def load_npy(path: Path, mmap: bool = False, numbers: bool = False, word: str = "readable") -> np.ndarray:
    """A .npy file, its header checked before anything is allocated (`npy_header`; `numbers`:
    refuse strings too)."""
    try:
        with open(path, "rb") as f:
            npy_header(f, path.stat().st_size, f"'{path}'", numbers, word)
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except UserError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"'{path}' is not a {word} .npy array (truncated or corrupt: "
                        f"{scrub(str(e).splitlines()[0]) if str(e) else type(e).__name__}).") from None


# --- CSV tables ---------------------------------------------------------------------------

def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_csv_rows(path: Path, expected: str) -> tuple[list[list[str]], list[int]]:
    """Non-blank rows of a UTF-8 CSV file and their line numbers; the delimiter is the one of
    `, ; tab` found most often in the first line. Unreadable files raise UserError naming
    `expected`."""
    reader = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = f.readline()
            f.seek(0)
            delim = max(",;\t", key=first.count) if first.strip() else ","
            reader = csv.reader(f, delimiter=delim)
            rows, lines = [], []
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append(row)
                    lines.append(reader.line_num)
    except UnicodeDecodeError:
        raise UserError(f"'{path}' is not UTF-8 text; expected {expected}.") from None
    except csv.Error as e:
        where = f" line {reader.line_num}" if reader is not None else ""
        raise UserError(f"'{path}'{where}: not valid CSV ({e}); expected {expected}.") from None
    except OSError as e:
        raise UserError(f"Cannot read '{path}': {e.strerror or e}.") from None
    return rows, lines


def read_table(path: Path, label_column: str | None, need_label: bool = True, need_header: bool = True):
    """Read a numeric CSV table.

    Returns (feature names, features (N, F) float32, labels as strings or None). Blank lines are
    skipped; the delimiter is the one of `, ; tab` found most often in the first line."""
    rows, lines = read_csv_rows(path, "a CSV file")
    if not rows:
        raise UserError(f"'{path}' is empty; expected a CSV table with a header line and one row per example.")
    if all(_is_number(c) for c in rows[0]):
        if need_header:
            raise UserError(f"'{path}' has no header line: its first line holds only numbers. Add a line "
                            f"naming the columns, including the label column '{label_column}'.")
        header, first_line = [f"column {i + 1}" for i in range(len(rows[0]))], 0
    else:
        header, first_line = [c.strip() for c in rows[0]], 1
    rows, lines = rows[first_line:], lines[first_line:]
    if not rows:
        raise UserError(f"'{path}' has a header but no data rows.")
    label = header.index(label_column) if label_column in header else None
    if label is None and need_label:
        raise UserError(f"'{path}' has no label column '{label_column}'. Its columns are: "
                        f"{', '.join(repr(h) for h in header)}. Set data.label_column to one of them.")
    for row, line in zip(rows, lines):
        if len(row) != len(header):
            raise UserError(f"'{path}' line {line}: {len(row)} fields, but the header names {len(header)} columns.")
    keep = [i for i in range(len(header)) if i != label]
    if not keep:
        raise UserError(f"'{path}' has no feature columns, only the label column '{label_column}'.")
    cells = np.array([[row[i] for i in keep] for row in rows], dtype=str).reshape(len(rows), len(keep))
    try:
        x = np.char.strip(cells).astype(np.float32)
    except ValueError:  # find the culprit cell the slow way
        x = np.array([[float(c) if _is_number(c) else np.nan for c in r] for r in cells], dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        value = cells[r, c].strip()
        what = "is empty" if not value else f"holds '{value}', which is not a finite number"
        raise UserError(f"'{path}' line {lines[r]}, column '{header[keep[c]]}' {what}. Feature columns must "
                        f"be numeric" + (f"; only the label column '{label_column}' may hold text." if label is not None else "."))
    labels = None
    if label is not None:
        labels = [row[label].strip() for row in rows]
        for value, line in zip(labels, lines):
            if not value:
                raise UserError(f"'{path}' line {line}: the label column '{label_column}' is empty.")
    return [header[i] for i in keep], x, labels


def csv_labels(parts: list[list[str]]) -> list[np.ndarray]:
    """CSV label strings -> int64 (whole numbers), float32 (other numbers) or string arrays."""
    flat = [v for p in parts for v in p]
    if all(_is_number(v) for v in flat):
        values = [np.array([float(v) for v in p]) for p in parts]
        if all(np.isfinite(v).all() and (v == np.round(v)).all() for v in values):
            return [v.astype(np.int64) for v in values]
        return [v.astype(np.float32) for v in values]
    return [np.array(p, dtype=str) for p in parts]


# --- text tables --------------------------------------------------------------------------

def read_text_file(path: Path, strict: bool = False) -> str:
    """A whole UTF-8 text file; an empty (or blank) one is a UserError, and with `strict` so is one
    that is not UTF-8 text (binary data: NUL bytes or invalid UTF-8)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"Cannot read '{path}': {e.strerror or e}.") from None
    if strict:
        try:
            if b"\x00" in data:
                raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"'{path}' is not UTF-8 text (it looks like binary data); expected a text file.") from None
    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        raise UserError(f"'{path}' is empty: expected a text.")
    return text


def _columns_error(path: Path, found, cfg, what: str) -> UserError:
    missing = [c for c in (cfg.text_column, cfg.label_column) if c not in found]
    return UserError(f"'{path}' has no {what} {', '.join(repr(c) for c in missing)}. Its columns are: "
                     f"{', '.join(repr(c) for c in found) or '(none)'}. Set data.text_column and "
                     f"data.label_column to the columns holding the text and the label.")


def read_text_csv(path: Path, cfg, need_label: bool = True) -> tuple[list[str], list[str] | None, list[int]]:
    """(texts, labels or None, line numbers) of a CSV file with a header line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = f.readline()
            f.seek(0)
            reader = csv.reader(f, delimiter=max(",;\t", key=first.count) if first.strip() else ",")
            rows = [(row, reader.line_num) for row in reader if any(c.strip() for c in row)]
    except UnicodeDecodeError:
        raise UserError(f"'{path}' is not UTF-8 text; expected a CSV file.") from None
    except csv.Error as e:
        raise UserError(f"'{path}': not valid CSV ({e}).") from None
    except OSError as e:
        raise UserError(f"Cannot read '{path}': {e.strerror or e}.") from None
    if not rows:
        raise UserError(f"'{path}' is empty; expected a header line naming the columns "
                        f"'{cfg.text_column}' and '{cfg.label_column}', then one row per text.")
    header = [c.strip() for c in rows[0][0]]
    if cfg.text_column not in header or (need_label and cfg.label_column not in header):
        raise _columns_error(path, header, cfg, "column")
    ti = header.index(cfg.text_column)
    li = header.index(cfg.label_column) if cfg.label_column in header else None
    texts, labels, lines = [], [] if li is not None else None, []
    for row, line in rows[1:]:
        if len(row) != len(header):
            raise UserError(f"'{path}' line {line}: {len(row)} fields, but the header names {len(header)} columns.")
        texts.append(row[ti])
        lines.append(line)
        if li is not None:
            labels.append(row[li].strip())
    return _checked(path, texts, labels, lines, cfg)


def read_jsonl(path: Path, cfg, need_label: bool = True) -> tuple[list[str], list[str] | None, list[int]]:
    """(texts, labels or None, line numbers) of a JSON-lines file: one object per line."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"'{path}' is not UTF-8 text; expected JSON lines.") from None
    except OSError as e:
        raise UserError(f"Cannot read '{path}': {e.strerror or e}.") from None
    texts, labels, numbers = [], [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"'{path}' line {n}: not valid JSON ({e.msg}).") from None
        if not isinstance(obj, dict) or cfg.text_column not in obj or (need_label and cfg.label_column not in obj):
            found = list(obj) if isinstance(obj, dict) else []
            raise _columns_error(path, found, cfg, f"key (line {n})")
        if not isinstance(obj[cfg.text_column], str):
            raise UserError(f"'{path}' line {n}: '{cfg.text_column}' must be a string, got {obj[cfg.text_column]!r}.")
        value = obj.get(cfg.label_column)  # optional at predict time
        if isinstance(value, (dict, list)) or (value is None and cfg.label_column in obj):
            raise UserError(f"'{path}' line {n}: the label '{cfg.label_column}' must be a string or number, "
                            f"got {value!r}.")
        labels.append(None if value is None else str(value).lower() if isinstance(value, bool) else str(value))
        texts.append(obj[cfg.text_column])
        numbers.append(n)
    if not texts:
        raise UserError(f"'{path}' is empty; expected one JSON object per line with the keys "
                        f"'{cfg.text_column}' and '{cfg.label_column}'.")
    return _checked(path, texts, labels if any(v is not None for v in labels) else None, numbers, cfg)


def _checked(path, texts, labels, lines, cfg):
    if not texts:
        raise UserError(f"'{path}' has a header but no rows.")
    for text, line in zip(texts, lines):
        if not text.strip():
            raise UserError(f"'{path}' line {line}: the text column '{cfg.text_column}' is empty.")
    for value, line in zip(labels or [], lines):
        if value == "":
            raise UserError(f"'{path}' line {line}: the label column '{cfg.label_column}' is empty.")
    return texts, labels, lines


READERS = {".csv": read_text_csv, ".jsonl": read_jsonl}
