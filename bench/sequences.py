"""Sequence throughput: sequences per second of deepstep's LSTM, GRU and Transformer, training
(forward, cross-entropy, backward, Adam step) and inference (eval mode, no autograd), each next to
the same network built from torch's own modules in the same run.

Inputs:
- series: MNIST-1D-shaped batches (100, 1, 40), as in the mnist1d-* recipes.
- tokens: fortunes-shaped batches of 32 ids (T = 128, right-padded; lengths drawn like fortunes
  entries, median ~20). deepstep packs the recurrent input and cuts the transformer's batch to its
  longest row; the torch references run over every padded position (nn.TransformerEncoder with a
  key-padding mask), which is what a plain implementation does.

The torch references: `nn.LSTM`/`nn.GRU` + `nn.Linear` on the last step, and
`nn.TransformerEncoder(norm_first=True)` with the same width, heads, layers, feed-forward size and
dropout, mean-pooled. Rounds alternate deepstep and reference, so load from other processes hits
both alike; the table shows the median sequences/s of each and the ratio deepstep / torch.

    python bench/sequences.py                  # 3 rounds, 1 thread
    python bench/sequences.py --rounds 5 --threads 2 --models gru transformer
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from deepstep.models.layers import create_model

CLASSES, VOCAB = 10, 5000
SPECS = {  # name -> deepstep options, per input kind
    "lstm": {"series": {"hidden_size": 128}, "tokens": {"hidden_size": 128, "embed_dim": 64}},
    "gru": {"series": {"hidden_size": 128}, "tokens": {"hidden_size": 128, "embed_dim": 64}},
    "transformer": {"series": {"dim": 64, "heads": 4, "layers": 3, "dropout": 0.1, "pooling": "mean"},
                    "tokens": {"dim": 64, "heads": 4, "layers": 2, "dropout": 0.1, "pooling": "mean"}},
}


class TorchRecurrent(nn.Module):
    """nn.LSTM/GRU over every step (padding included), last step -> Linear."""

    def __init__(self, cell, in_features, hidden, vocab=0, embed=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed, padding_idx=0) if vocab else None
        self.rnn = cell(embed if vocab else in_features, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, CLASSES)

    def forward(self, x):
        h = self.embed(x) if self.embed is not None else x.transpose(1, 2)
        out, _ = self.rnn(h)
        return self.fc(out[:, -1])


class TorchTransformer(nn.Module):
    """nn.TransformerEncoder (pre-LN) with a key-padding mask, mean-pooled."""

    def __init__(self, in_features, dim, heads, layers, dropout, vocab=0):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0) if vocab else nn.Linear(in_features, dim)
        self.tokens = bool(vocab)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.fc = nn.Linear(dim, CLASSES)

    def forward(self, x):
        pad = (x == 0) if self.tokens else None
        h = self.embed(x) if self.tokens else self.embed(x.transpose(1, 2))
        return self.fc(self.enc(h, src_key_padding_mask=pad).mean(1))


def batch(kind: str, g: torch.Generator):
    if kind == "series":
        return torch.randn(100, 1, 40, generator=g), torch.randint(0, CLASSES, (100,), generator=g)
    lengths = torch.distributions.LogNormal(3.0, 0.8).sample((32,)).clamp(1, 128).long()
    x = torch.randint(1, VOCAB, (32, 128), generator=g)
    x[torch.arange(128)[None, :] >= lengths[:, None]] = 0
    return x, torch.randint(0, CLASSES, (32,), generator=g)


def models(name: str, kind: str):
    opts = SPECS[name][kind]
    if kind == "series":
        ours = create_model(name, (1, 40), CLASSES, **opts)
    else:
        ours = create_model(name, (128,), CLASSES, VOCAB, **opts)
    vocab = VOCAB if kind == "tokens" else 0
    if name == "transformer":
        ref = TorchTransformer(1, opts["dim"], opts["heads"], opts["layers"], opts["dropout"], vocab)
    else:
        ref = TorchRecurrent(nn.LSTM if name == "lstm" else nn.GRU, 1, opts["hidden_size"], vocab)
    return ours, ref


def throughput(model: nn.Module, batches, train: bool) -> float:
    """Sequences per second over `batches` (one warm-up batch not counted)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3) if train else None
    model.train(train)
    n, t0 = 0, None
    for i, (x, y) in enumerate(batches):
        if i == 1:
            t0 = time.perf_counter()
        if train:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode():
                model(x)
        n += len(y) if i >= 1 else 0
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS))
    p.add_argument("--inputs", nargs="+", default=["series", "tokens"], choices=["series", "tokens"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=12, help="batches per measurement (first is warm-up)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds of {args.batches} batches")
    print(f"{'model':<12}{'input':<8}{'mode':<7}{'deepstep seq/s':>15}{'torch seq/s':>13}{'ratio':>7}")
    for name in args.models:
        for kind in args.inputs:
            g = torch.Generator().manual_seed(0)
            data = [batch(kind, g) for _ in range(args.batches)]
            torch.manual_seed(0)
            ours, ref = models(name, kind)
            for train in (True, False):
                a, b = [], []
                for _ in range(args.rounds):
                    a.append(throughput(ours, data, train))
                    b.append(throughput(ref, data, train))
                ma, mb = statistics.median(a), statistics.median(b)
                mode = "train" if train else "infer"
                print(f"{name:<12}{kind:<8}{mode:<7}{ma:>15.0f}{mb:>13.0f}{ma / mb:>7.2f}")


if __name__ == "__main__":
    main()
