"""Text data sets for classification: the offline `fortunes` topics, IMDB in its `aclImdb` layout,
and your own CSV/JSONL files with a text and a label column; plus reading raw texts for
`deepstep predict`.

Loaders return `Arrays` of kind "text" whose x arrays hold the raw strings (object arrays). The
supervised task splits them, builds the tokenizer on the training part only and encodes every
part to int64 ids (data/tokenize.py, tasks/supervised.py).

- fortunes: the Debian package `fortunes` (/usr/share/games/fortunes/): one file per topic, entries
  separated by lines holding only '%'. Backspace over-striking (`_\\bX`, underlined text in a few
  files) is removed. No test split of its own: the task holds out a stratified part fixed by the
  seed (data.test_split).
- imdb: `aclImdb/{train,test}/{pos,neg}/*.txt` (Maas et al. 2011; 25,000 + 25,000 reviews); `train/unsup`
  is ignored. data.path names that folder, its parent or the archive; otherwise the cache, then
  the official archive (MD5-checked) unless data.download = false. Extraction writes only the
  review files, by validated names (no path traversal, no links).
- csv / jsonl: data.path = a file, or a folder with train.csv|jsonl and optionally test.csv|jsonl;
  columns data.text_column and data.label_column. `data.name=csv` reads text whenever the header
  holds data.text_column and numeric tables otherwise (data/files.py). The plain CSV/JSONL readers
  live in data/io.py.

Every problem with the input — an empty file or entry, a missing column, a label in the test file
that training never saw — is a UserError naming the file (and line where there is one).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..registry import DATASETS
from .arrays import Arrays
from .download import cache_dir, extract_archive, fetch, missing_message
from .io import (  # noqa: F401  (read_text_csv, read_jsonl: re-exported)
    READERS,
    csv_labels,
    need_path,
    read_jsonl,
    read_text_csv,
    read_text_file,
)

FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNE_TOPICS = ["startrek", "linux", "definitions", "zippy", "songs-poems"]
OVERSTRIKE = re.compile(r".\x08")

IMDB = {"folder": "aclImdb", "archive": "aclImdb_v1.tar.gz", "md5": "7c2ac02c03563afcf9b574c7e56c153a",
        "mirrors": ["https://ai.stanford.edu/~amaas/data/sentiment/"]}
IMDB_CLASSES = ["neg", "pos"]
IMDB_MEMBER = re.compile(r"(?:\./)?aclImdb/(train|test)/(neg|pos)/([0-9]+_[0-9]+\.txt)")
TABLE_EXPECTED = ("a .csv or .jsonl file with a text and a label column (or a folder with train.csv|jsonl "
                  "and optionally test.csv|jsonl)")


def text_arrays(texts, labels, test_texts, test_labels, classes, source: str, cfg) -> Arrays:
    """Build kind-"text" Arrays; `data.limit` keeps N training texts drawn with a fixed seed (the
    files are ordered by class, so the first N would be one class)."""
    x, y = np.array(texts, dtype=object), np.asarray(labels)
    if cfg.limit and cfg.limit < len(x):
        keep = np.sort(np.random.default_rng(0).permutation(len(x))[: cfg.limit])
        x, y = x[keep], y[keep]
    xt = None if test_texts is None else np.array(test_texts, dtype=object)
    yt = None if test_labels is None else np.asarray(test_labels)
    return Arrays(x_train=x, y_train=y, x_test=xt, y_test=yt, classes=list(classes), kind="text", source=source)


# --- fortunes -------------------------------------------------------------------------------

def read_fortunes(path: Path) -> list[str]:
    """Entries of one fortune file (separated by lines holding only '%'), over-striking removed."""
    try:
        raw = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"Cannot read '{path}': {e.strerror or e}.") from None
    raw = OVERSTRIKE.sub("", raw)
    entries = [e.strip() for e in re.split(r"^%[ \t]*$", raw, flags=re.MULTILINE)]
    entries = [e for e in entries if e]
    if not entries:
        raise UserError(f"'{path}' is empty: expected fortune entries separated by lines holding only '%'.")
    return entries


@DATASETS.register("fortunes")
def fortunes(cfg):
    """Fortune-cookie topics (Debian package `fortunes`): classify an entry's topic file; data.topics picks them."""
    folder = Path(cfg.path).expanduser() if cfg.path else FORTUNES_DIR
    topics = list(cfg.topics) or FORTUNE_TOPICS
    if not folder.is_dir():
        hint = (" Install the Debian package with `apt-get install fortunes`, or set data.path to a folder "
                "of fortune files." if not cfg.path else "")
        raise UserError(f"The fortunes folder '{folder}' does not exist.{hint}")
    if len(set(topics)) < 2 or len(set(topics)) != len(topics):
        raise UserError(f"data.topics = {topics}: name at least two different topic files.")
    texts, labels = [], []
    for i, topic in enumerate(topics):
        f = folder / topic
        if not f.is_file():
            have = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.suffix)
            raise UserError(f"There is no fortunes topic '{topic}' in '{folder}'. Topics there: "
                            f"{', '.join(have) or '(none)'}.")
        entries = read_fortunes(f)
        texts += entries
        labels += [i] * len(entries)
    return text_arrays(texts, np.array(labels, dtype=np.int64), None, None, topics, f"fortunes ({folder})", cfg)


# --- IMDB -----------------------------------------------------------------------------------

def _imdb_complete(folder: Path) -> bool:
    return all((folder / s / c).is_dir() for s in ("train", "test") for c in IMDB_CLASSES)


def extract_imdb(archive: Path, where: Path) -> Path:
    """Extract the review files of `archive` into `where/aclImdb`, by validated name only."""

    def select(name: str) -> str | None:
        match = IMDB_MEMBER.fullmatch(name)
        return "/".join(match.groups()) if match else None

    def check(tmp: Path, n: int) -> str | None:
        if not _imdb_complete(tmp):
            return f"the aclImdb archive: it lacks aclImdb/{{train,test}}/{{pos,neg}} review files (found {n})"
        return None

    return extract_archive(archive, where, IMDB["folder"], select, check, IMDB["archive"])


def locate_imdb(cfg) -> Path:
    """The aclImdb folder: data.path (folder, parent or archive), the cache, or a download."""
    where = cache_dir() / "imdb"
    expected = f"an aclImdb folder with train/ and test/ (each with pos/ and neg/), its parent, or {IMDB['archive']}"
    if cfg.path:
        p = Path(cfg.path).expanduser()
        if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
            return extract_imdb(p, where)
        for folder in (p, p / IMDB["folder"]):
            if _imdb_complete(folder):
                return folder
        if (p / IMDB["archive"]).is_file():
            return extract_imdb(p / IMDB["archive"], where)
        what = "does not exist" if not p.exists() else "is not in the aclImdb layout"
        raise UserError(f"data.path = '{p}' {what}: expected {expected}.")
    if _imdb_complete(where / IMDB["folder"]):
        return where / IMDB["folder"]
    if not (where / IMDB["archive"]).is_file():
        files = f"{IMDB['archive']} (or its extracted folder aclImdb)"
        if not cfg.download:
            raise UserError(missing_message("imdb", where, files, "downloads are off (data.download = false)."))
        try:
            fetch(IMDB["archive"], IMDB["mirrors"], where, IMDB["md5"], timeout=120.0)
        except UserError as e:
            raise UserError(missing_message("imdb", where, files, str(e))) from None
    folder = extract_imdb(where / IMDB["archive"], where)
    (where / IMDB["archive"]).unlink()
    return folder


def read_review_folder(folder: Path) -> tuple[list[str], list[int]]:
    """Texts and labels (index in IMDB_CLASSES) of `folder/{neg,pos}/*.txt`, in sorted file order."""
    texts, labels = [], []
    for label, name in enumerate(IMDB_CLASSES):
        files = sorted((folder / name).glob("*.txt"))
        if not files:
            raise UserError(f"'{folder / name}' holds no .txt reviews; expected one review per .txt file.")
        for f in files:
            text = read_text_file(f)
            texts.append(text)
            labels.append(label)
    return texts, labels


@DATASETS.register("imdb")
def imdb(cfg):
    """IMDB movie reviews, positive vs negative (aclImdb layout; 25,000 train / 25,000 test; downloaded when missing)."""
    folder = locate_imdb(cfg)
    x, y = read_review_folder(folder / "train")
    xt, yt = read_review_folder(folder / "test")
    return text_arrays(x, np.array(y, dtype=np.int64), xt, np.array(yt, dtype=np.int64), IMDB_CLASSES,
                       f"imdb ({folder})", cfg)


# --- CSV / JSONL ----------------------------------------------------------------------------

def text_table(cfg, suffix: str):
    """Text classification from CSV (suffix '.csv') or JSON-lines ('.jsonl') files."""
    path = need_path(cfg, TABLE_EXPECTED)
    files = [path]
    if path.is_dir():
        files = [path / f"train{suffix}"] + ([path / f"test{suffix}"] if (path / f"test{suffix}").is_file() else [])
        if not files[0].is_file():
            raise UserError(f"data.path = '{path}' is a folder without train{suffix}; expected {TABLE_EXPECTED}.")
    tables = [READERS[suffix](f, cfg) for f in files]
    ys = csv_labels([t[1] for t in tables])
    if len(tables) > 1 and ys[0].dtype.kind != "f":  # classes: the test file may not bring new ones
        known = set(tables[0][1])
        for value, line in zip(tables[1][1], tables[1][2]):
            if value not in known:
                raise UserError(f"'{files[1]}' line {line}: label '{value}' does not occur in '{files[0]}' "
                                f"(labels there: {', '.join(sorted(known))}).")
    classes: list[str] = []
    if ys[0].dtype.kind == "U":
        classes = sorted(set(ys[0].tolist()))
        index = {c: i for i, c in enumerate(classes)}
        ys = [np.array([index[v] for v in y], dtype=np.int64) for y in ys]
    test = (tables[1][0], ys[1]) if len(tables) > 1 else (None, None)
    return text_arrays(tables[0][0], ys[0], *test, classes, f"'{path}'", cfg)


@DATASETS.register("jsonl")
def jsonl(cfg):
    """Your texts as JSON lines: objects with data.text_column and data.label_column (file or folder with train.jsonl)."""
    return text_table(cfg, ".jsonl")


# --- predict inputs -------------------------------------------------------------------------

def read_texts(inputs: list[str], cfg, classes: list[str]) -> tuple[list[str], list[str], list[str] | None]:
    """Inputs for `deepstep predict` on a text run -> (texts, names, labels or None).

    Each argument is a text, unless it names a file: a .txt file is one text; a .csv or .jsonl file
    gives one text per row (its label column, when present, must hold labels the run knows)."""
    texts, names, labels = [], [], []
    for arg in inputs:
        path = Path(arg)
        suffix = path.suffix.lower()
        looks_like_file = suffix in (".txt", ".csv", ".jsonl") and not any(c.isspace() for c in arg)
        if path.is_dir():
            raise UserError(f"Input '{arg}' is a folder; give the files themselves (.txt, .csv or .jsonl), or a text.")
        if not path.is_file():
            if looks_like_file:
                raise UserError(f"Input file '{arg}' does not exist. (To classify the words themselves, "
                                f"add a space or drop the file suffix.)")
            if not arg.strip():
                raise UserError("An input text is empty: give some text to classify.")
            texts.append(arg)
            names.append(arg if len(arg) <= 40 else arg[:37] + "...")
            labels.append(None)
        elif suffix in READERS:
            t, y, lines = READERS[suffix](path, cfg, need_label=False)
            texts += t
            names += [f"{arg}:line{n}" for n in lines]
            labels += y or [None] * len(t)
        else:
            texts.append(read_text_file(path, strict=True))  # binary data is not classified
            names.append(arg)
            labels.append(None)
    known = set(classes)
    for value, name in zip(labels, names):
        if value is not None and known and value not in known:
            raise UserError(f"{name}: label '{value}' is not one this run knows ({', '.join(classes)}).")
    return texts, names, labels if any(v is not None for v in labels) else None
