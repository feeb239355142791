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

import re
from collections import Counter

import numpy as np

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

    def to_dict(self) -> dict:
        return {"kind": self.kind, "lowercase": self.lowercase, "max_length": self.max_length,
                "vocab": self.vocab}

    @classmethod
    def from_dict(cls, d: dict, where: str = "tokenizer") -> Tokenizer:
        try:
            return cls(d["kind"], list(d["vocab"]), bool(d["lowercase"]), int(d["max_length"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where} is not a deepstep tokenizer (missing or bad field: {e}).") from None
