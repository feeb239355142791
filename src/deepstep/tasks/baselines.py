"""Non-deep baselines scored on exactly the split the deep model sees, so a summary shows honestly
whether the network helps. Text: TF-IDF features + logistic regression (scikit-learn)."""

from __future__ import annotations

import numpy as np

from ..data.tokenize import Tokenizer

C_GRID = (0.1, 1.0, 10.0, 100.0)


def tfidf_logreg(texts: list[str], y: np.ndarray, test_texts: list[str], val=None, lowercase: bool = True,
                 seed: int = 0) -> np.ndarray:
    """Fit TF-IDF (word 1-2-grams, sublinear tf, on `texts` only) + logistic regression; return the
    predicted classes of `test_texts`. With `val = (texts, y)` the inverse regularization C is
    chosen on it from C_GRID (the test part is never looked at); without, C = 10.

    Words are split as deepstep's word tokenizer splits them (data/tokenize.py): punctuation marks
    count as tokens, unlike scikit-learn's default pattern, which drops them and single letters.
    The baseline thus sees the same tokens as the networks; on fortunes the default pattern scored
    about 0.82 and these tokens 0.95."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    words = Tokenizer("word", ["<pad>", "<unk>"], lowercase, 1).split
    vec = TfidfVectorizer(tokenizer=words, token_pattern=None, lowercase=False, ngram_range=(1, 2),
                          sublinear_tf=True)
    x = vec.fit_transform(texts)

    def fit(c):
        # one BLAS thread: lbfgs makes many small calls, and threads that wait for a shared core
        # made it ten times slower here
        with threadpool_limits(1):
            return LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)

    best = 10.0
    if val is not None and len(val[1]):
        xv = vec.transform(val[0])
        scores = [(fit(c).score(xv, val[1]), c) for c in C_GRID]
        best = max(scores, key=lambda s: (s[0], -s[1]))[1]  # ties: the stronger regularization
    return fit(best).predict(vec.transform(test_texts))
