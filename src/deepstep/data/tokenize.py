"""Tokenizers for text classification: characters, or words from a vocabulary built on the
training split only (so nothing about validation or test texts leaks into the model).

Ids: 0 = `<pad>`, 1 = `<unk>` (any token not in the vocabulary), then the kept tokens by
descending training frequency, ties in alphabetical order — the same texts always give the same
vocabulary. Sequences are truncated to `max_length` tokens and right-padded with 0; models find
each row's length as its number of non-zero ids (models/rnn.py, models/transformer.py).

Normalization before splitting, the same at training and predict time: HTML line breaks
(`<br />`, as in IMDB reviews) become spaces, then optional lower-casing. Words are runs of
letters/digits/underscores with inner apostrophes ("don't"), and every other non-space character
is a token of its own; the char tokenizer keeps every character, with runs of white space
collapsed to one space.

The tokenizer is saved as JSON (`tokenizer.json` in the run directory) and rebuilt from it by
`deepstep predict`, which therefore reproduces the training ids exactly.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ..engine.checkpoint import atomic_write
from ..engine.hub import check_local_folder, hub_offline, resolve_source
from ..errors import UserError

PAD, UNK = "<pad>", "<unk>"
TOKENIZER_FILE = "tokenizer.json"  # in the run directory
KINDS = ("word", "char")
BREAKS = re.compile(r"<br\s*/?>", re.IGNORECASE)
WORDS = re.compile(r"\w+(?:'\w+)*|[^\w\s]")
SPACES = re.compile(r"\s+")


class Tokenizer:
    """Text -> ids. Build with `Tokenizer.fit(train_texts, ...)`; save with `to_dict`."""

    def __init__(self, kind: str, vocab: list[str], lowercase: bool, max_length: int):
        if kind not in KINDS:
            raise UserError(f"data.tokenizer = '{kind}' is not valid: expected one of {', '.join(KINDS)}.")
        if vocab[:2] != [PAD, UNK]:
            raise UserError(f"A tokenizer vocabulary must start with {PAD!r}, {UNK!r}; got {vocab[:2]}.")
        self.kind, self.vocab, self.lowercase, self.max_length = kind, list(vocab), lowercase, max_length
        self.index = {t: i for i, t in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def split(self, text: str) -> list[str]:
        """The tokens of one text (before the vocabulary lookup)."""
        text = BREAKS.sub(" ", text)
        if self.lowercase:
            text = text.lower()
        if self.kind == "char":
            return list(SPACES.sub(" ", text).strip())
        return WORDS.findall(text)

    @classmethod
    def fit(cls, texts, kind: str = "word", lowercase: bool = True, min_freq: int = 1, max_vocab: int = 0,
            max_length: int = 0) -> Tokenizer:
        """Vocabulary of the tokens seen at least `min_freq` times in `texts` (the most frequent
        `max_vocab` of them; 0: all). `max_length` 0 means the longest of `texts`."""
        tok = cls(kind, [PAD, UNK], lowercase, max_length)
        counts: Counter = Counter()
        longest = 0
        for t in texts:
            tokens = tok.split(t)
            counts.update(tokens)
            longest = max(longest, len(tokens))
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_vocab:
            kept = kept[:max_vocab]
        return cls(kind, [PAD, UNK] + kept, lowercase, max_length or max(1, longest))

    @classmethod
    def from_config(cls, texts, data_cfg) -> Tokenizer:
        """`fit` with the text fields of a DataConfig (tokenizer, lowercase, min_freq, max_vocab, max_length)."""
        return cls.fit(texts, data_cfg.tokenizer, data_cfg.lowercase, data_cfg.min_freq, data_cfg.max_vocab,
                       data_cfg.max_length)

    def ids(self, text: str) -> list[int]:
        """Ids of one text, truncated to `max_length` (no padding)."""
        get = self.index.get
        return [get(t, 1) for t in self.split(text)[: self.max_length]]

    def encode(self, texts) -> np.ndarray:
        """Texts -> int64 ids (N, max_length), right-padded with 0."""
        out = np.zeros((len(texts), self.max_length), dtype=np.int64)
        for i, t in enumerate(texts):
            ids = self.ids(t)
            out[i, : len(ids)] = ids
        return out

    def decode(self, ids) -> str:
        """Ids -> tokens joined by spaces (words) or nothing (chars); padding dropped."""
        sep = "" if self.kind == "char" else " "
        return sep.join(self.vocab[i] for i in ids if i != 0)

    def save(self, run_path) -> None:
        """Write tokenizer.json into the run directory `run_path`."""
        atomic_write(Path(run_path) / TOKENIZER_FILE, json.dumps(self.to_dict()).encode())

    def to_dict(self) -> dict:
        return {"kind": self.kind, "lowercase": self.lowercase, "max_length": self.max_length,
                "vocab": self.vocab}

    @classmethod
    def from_dict(cls, d: dict, where: str = "tokenizer") -> Tokenizer:
        try:
            return cls(d["kind"], list(d["vocab"]), bool(d["lowercase"]), int(d["max_length"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where} is not a deepstep tokenizer (missing or bad field: {e}).") from None


PRETRAINED_DIR = "tokenizer"  # in the run directory: the pretrained tokenizer's files
PRETRAINED_SETTINGS = "deepstep.json"  # in that folder: max_length and the source


class PretrainedTokenizer:
    """The tokenizer of a pretrained encoder (data.tokenizer = "pretrained"; models/bert.py), with
    the interface of `Tokenizer`: `encode(texts)` -> int64 ids (N, max_length), right-padded with
    the tokenizer's pad id ([CLS] ... [SEP] for BERT, truncated to max_length). Its own rules decide
    lower-casing (data.lowercase does not apply); HTML line breaks become spaces as for `Tokenizer`.

    Saved into RUN/tokenizer/ with `save_pretrained` (plus deepstep.json), and rebuilt from there
    alone by `deepstep predict`."""

    def __init__(self, hf, max_length: int, source: str):
        hf.padding_side = "right"  # models cut batches to their longest row: padding must trail
        self.hf, self.max_length, self.source = hf, max_length, source
        self.pad_id = hf.pad_token_id if hf.pad_token_id is not None else 0

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @classmethod
    def from_pretrained(cls, pretrained: str, texts, max_length: int = 0) -> PretrainedTokenizer:
        """The tokenizer of model.pretrained; `max_length` 0: the longest of `texts` (in tokens),
        capped at the tokenizer's own limit either way."""
        source, local = resolve_source(pretrained)
        if local:
            check_local_folder(source, False, pretrained)
        tok = cls(_auto_tokenizer(source, local, f"model.pretrained = '{pretrained}'"), 1, pretrained)
        limit = tok.hf.model_max_length if 0 < tok.hf.model_max_length < 1_000_000 else 0
        if not max_length:
            max_length = max((len(ids) for ids in tok.hf([_clean(t) for t in texts])["input_ids"]), default=1)
        tok.max_length = min(max_length, limit) if limit else max_length
        return tok

    def encode(self, texts) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.max_length), dtype=np.int64)
        enc = self.hf([_clean(t) for t in texts], truncation=True, max_length=self.max_length,
                      padding="max_length", return_attention_mask=False)
        return np.asarray(enc["input_ids"], dtype=np.int64)

    def decode(self, ids) -> str:
        return self.hf.decode([i for i in ids if i != self.pad_id], skip_special_tokens=True)

    def save(self, run_path) -> None:
        folder = Path(run_path) / PRETRAINED_DIR
        self.hf.save_pretrained(folder)
        (folder / PRETRAINED_SETTINGS).write_text(json.dumps({"max_length": self.max_length, "source": self.source}))

    @classmethod
    def load(cls, run_path) -> PretrainedTokenizer:
        folder = Path(run_path) / PRETRAINED_DIR
        f = folder / PRETRAINED_SETTINGS
        if not f.is_file():
            raise UserError(f"'{folder}' holds no saved pretrained tokenizer ({PRETRAINED_SETTINGS} is missing); "
                            "the run did not finish?")
        try:
            settings = json.loads(f.read_text())
            max_length, source = int(settings["max_length"]), str(settings.get("source", ""))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"'{f}' is damaged or was edited ({type(e).__name__}: {e}); train the run again.") from None
        return cls(_auto_tokenizer(str(folder), True, f"the run's tokenizer '{folder}'"), max_length, source)


def _clean(text: str) -> str:
    return BREAKS.sub(" ", str(text))


def _auto_tokenizer(source: str, local: bool, what: str):
    from transformers import AutoTokenizer

    try:
        with hub_offline(local):
            return AutoTokenizer.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{what}: cannot load a Hugging Face tokenizer from '{source}' "
                        f"({str(e).splitlines()[0]}). Expected tokenizer files (tokenizer.json or vocab.txt "
                        "with tokenizer_config.json) next to config.json.") from None


def build_tokenizer(texts, data_cfg, model_cfg: dict):
    """The tokenizer a text run uses: deepstep's own `Tokenizer` fitted on `texts` (the training
    split), or with data.tokenizer = "pretrained" the tokenizer of model.pretrained."""
    if data_cfg.tokenizer != "pretrained":
        return Tokenizer.from_config(texts, data_cfg)
    pretrained = model_cfg.get("pretrained")
    if not isinstance(pretrained, str):
        raise UserError(f"data.tokenizer = 'pretrained' takes the tokenizer of model.pretrained, but model "
                        f"'{model_cfg.get('name')}' has no `pretrained` source; use it with model 'bert', or set "
                        "data.tokenizer = 'word' or 'char'.")
    return PretrainedTokenizer.from_pretrained(pretrained, texts, data_cfg.max_length)

