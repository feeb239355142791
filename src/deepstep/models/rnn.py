"""Recurrent sequence models (CURRICULUM rows 8-10): torch's fused `nn.RNN`, `nn.LSTM` and `nn.GRU`
(Elman 1990; Hochreiter & Schmidhuber 1997; Cho et al. 2014) with a readout and a linear/MLP head.
No Python loop over time steps: the whole sequence goes through one cuDNN/oneDNN kernel.

Inputs — one model reads either kind, decided by the data:
- float series (B, C, T), channels first as every deepstep series loader returns them (MNIST-1D,
  forecasting windows); transposed to (B, T, C) inside. `in_shape` = (C, T).
- integer token ids (B, T) for text, right-padded with 0 (`<pad>`); `in_shape` = (T,).

How the vocabulary size reaches the factory: the registry rule is "positional arguments come from
the data, keyword-only arguments are the typed config". The vocabulary is data (it is built from the
training split), so every sequence factory takes it as a third positional argument,
`vocab_size=0` meaning "not text"; the supervised task passes it for data of kind "text" and stores
it in the run's meta.json, and `load_run` passes it back. It never appears in a recipe's [model].

Variable length (tokens): lengths are the number of non-zero ids per row; the embedded batch is
packed (`pack_padded_sequence`), so padding never enters the recurrence — also not in the backward
direction of a bidirectional net — and `h_n` is each sequence's state at its own last token.
Packing needs the lengths on the host: one small device->host copy per batch.

Readouts: "last" (final hidden state of the top layer, both directions concatenated), "mean" or
"max" over the valid time steps of the top layer's outputs.

Threads: a recurrence is a chain of small matrix products, one per step. On a shared CPU, torch's
second thread waiting for a busy core made a GRU step (batch 100, hidden 64, 40 steps) over 100x
slower than one thread (1.3 s vs 0.01 s forward here), so the sequence recipes set train.threads = 1.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..errors import UserError, unknown
from ..registry import MODELS
from .layers import activation as act

READOUTS = ("last", "mean", "max")
_TAGS = ("classifier", "series", "sequence", "text")
_CHECKS = {"hidden_size": ">= 1", "layers": ">= 1", "dropout": "[0, 1)", "embed_dim": ">= 1", "head_hidden": ">= 1"}
CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def step_features(in_shape, vocab_size: int, model: str) -> int | None:
    """Features per time step for series (C, T) -> C; None for token ids (T,). Else a UserError."""
    if vocab_size:
        if len(in_shape) != 1:
            raise UserError(f"Model '{model}' reads token ids of shape (T,), but the text data has shape "
                            f"{tuple(in_shape)}.")
        return None
    if len(in_shape) != 2:
        raise UserError(f"Model '{model}' reads series (C, T) or token ids (text), but the data has shape "
                        f"{tuple(in_shape)}. Use 'mlp' or 'convnet' for tables and images.")
    return in_shape[0]


def head(in_features: int, hidden: list[int], num_classes: int, activation: str, dropout: float) -> nn.Sequential:
    """[Dropout] -> (Linear -> act -> [Dropout]) per hidden width -> Linear."""
    layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout else []
    for h in hidden:
        layers += [nn.Linear(in_features, h), act(activation)] + ([nn.Dropout(dropout)] if dropout else [])
        in_features = h
    return nn.Sequential(*layers, nn.Linear(in_features, num_classes))


class RecurrentNet(nn.Module):
    """[Embedding] -> nn.RNN/LSTM/GRU (batch_first) -> readout -> head."""

    def __init__(self, cell: str, in_features: int | None, vocab_size: int, num_classes: int, *,
                 hidden_size: int, layers: int, bidirectional: bool, dropout: float, readout: str,
                 embed_dim: int, head_hidden: list[int], activation: str, **cell_kw):
        super().__init__()
        if readout not in READOUTS:
            raise unknown("readout", readout, READOUTS)
        if hidden_size < 1 or layers < 1:
            raise UserError(f"model.hidden_size = {hidden_size} and model.layers = {layers} must be at least 1.")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"model.dropout = {dropout} must be in [0, 1).")
        self.readout, self.is_lstm = readout, cell == "lstm"
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0) if vocab_size else None
        self.drop = nn.Dropout(dropout)
        self.rnn = CELLS[cell](embed_dim if vocab_size else in_features, hidden_size, num_layers=layers,
                               batch_first=True, bidirectional=bidirectional,
                               dropout=dropout if layers > 1 else 0.0, **cell_kw)
        self.dirs = 2 if bidirectional else 1
        self.head = head(self.dirs * hidden_size, list(head_hidden), num_classes, activation, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Sequence features (B, dirs * hidden_size) after the readout."""
        lengths = None
        if self.embed is None:  # (B, C, T) series
            out, state = self.rnn(x.transpose(1, 2))  # out (B, T, dirs*H)
        else:  # (B, T) token ids, 0 = padding
            # an empty text still runs one (padding) step, so every row has a state
            lengths = (x != 0).sum(1).clamp(min=1)
            packed = pack_padded_sequence(self.drop(self.embed(x)), lengths.cpu(), batch_first=True,
                                          enforce_sorted=False)
            out, state = self.rnn(packed)
        if self.readout == "last":
            h_n = state[0] if self.is_lstm else state  # (layers*dirs, B, H)
            return h_n[-self.dirs:].transpose(0, 1).reshape(h_n.shape[1], -1)  # top layer, (B, dirs*H)
        if lengths is None:
            return out.mean(1) if self.readout == "mean" else out.amax(1)
        out, _ = pad_packed_sequence(out, batch_first=True)  # (B, T_max, dirs*H), zeros past each length
        if self.readout == "mean":
            return out.sum(1) / lengths[:, None].to(out.dtype)
        valid = torch.arange(out.shape[1], device=out.device)[None, :] < lengths[:, None].to(out.device)
        return out.masked_fill(~valid[..., None], float("-inf")).amax(1)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head[:-1](feats) if pre_logits else self.head(feats)

    def target_layer(self) -> nn.Module:
        """The fused recurrent module (all its layers are one kernel): its output's first element is
        the top layer's per-step outputs, (B, T, dirs * hidden_size) for series, packed for text."""
        return self.rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) or (B, T) ids -> (B, classes)
        return self.forward_head(self.forward_features(x))

    def exportable(self) -> nn.Module:
        """The same function for graph exporters (ONNX, TorchScript): token ids go through
        `MaskedRecurrent` (no packing, whose host-side lengths no exporter can follow); series
        need no packing, so the model itself is returned."""
        return self if self.embed is None else MaskedRecurrent(self)


def _reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row's first `length` steps in reverse order, the padding after them left in place:
    x (B, T, F), lengths (B,). Applying it twice gives x back."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, T)
    last = lengths[:, None] - 1
    idx = torch.where(t <= last, last - t, t)  # (B, T)
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[2]))


class MaskedRecurrent(nn.Module):
    """A text `RecurrentNet` computed without packing, for exporters: each layer and direction runs
    as its own one-layer recurrence over the padded batch (the same weights), the backward
    direction on each row reversed within its length, so padding never reaches a valid step.
    Outputs past a row's length are never read: "last" takes the step at length - 1 (the forward
    direction) and step 0 (the backward one), "mean" and "max" mask them. Equal to the packed
    forward (tests/test_export.py), and slower: it is for export, not for training."""

    def __init__(self, net: RecurrentNet):
        super().__init__()
        rnn = net.rnn
        self.net, self.dirs, self.layers = net, net.dirs, rnn.num_layers
        kw = {"nonlinearity": rnn.nonlinearity} if isinstance(rnn, nn.RNN) else {}
        self.cells = nn.ModuleList()
        for layer in range(rnn.num_layers):
            for suffix in ("", "_reverse")[: self.dirs]:
                cell = type(rnn)(rnn.input_size if layer == 0 else self.dirs * rnn.hidden_size, rnn.hidden_size,
                                 batch_first=True, bias=rnn.bias, **kw)
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")[: 4 if rnn.bias else 2]:
                    setattr(cell, f"{name}_l0", getattr(rnn, f"{name}_l{layer}{suffix}"))  # shared, not copied
                self.cells.append(cell)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) ids, 0 = padding -> (B, classes)
        net = self.net
        lengths = (x != 0).sum(1).clamp(min=1)  # an empty text runs one padding step, as packed
        h = net.embed(x)  # (B, T, E); dropout is off in evaluation mode
        for layer in range(self.layers):
            outs = [self.cells[layer * self.dirs](h)[0]]  # forward direction (B, T, H)
            if self.dirs == 2:
                outs.append(_reverse_within(self.cells[layer * self.dirs + 1](_reverse_within(h, lengths))[0], lengths))
            h = torch.cat(outs, -1)  # (B, T, dirs * H), original time order
        if net.readout == "last":
            hidden = h.shape[2] // self.dirs
            at_end = h.gather(1, (lengths - 1)[:, None, None].expand(-1, 1, h.shape[2]))[:, 0]  # (B, dirs*H)
            feats = at_end if self.dirs == 1 else torch.cat([at_end[:, :hidden], h[:, 0, hidden:]], -1)
        else:
            valid = (torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None])[..., None]  # (B, T, 1)
            if net.readout == "mean":
                feats = (h * valid).sum(1) / lengths[:, None].to(h.dtype)
            else:
                feats = h.masked_fill(~valid, float("-inf")).amax(1)
        return net.forward_head(feats)


def _build(cell: str, name: str, in_shape, num_classes, vocab_size, **kw) -> RecurrentNet:
    return RecurrentNet(cell, step_features(in_shape, vocab_size, name), vocab_size, num_classes, **kw)


@MODELS.register("rnn", tags=_TAGS, checks=_CHECKS)
def rnn(in_shape, num_classes, vocab_size: int = 0, *, hidden_size: int = 128, layers: int = 1,
        bidirectional: bool = False, dropout: float = 0.0, readout: str = "last", embed_dim: int = 64,
        head_hidden: list[int] = (), activation: str = "relu", nonlinearity: str = "tanh") -> RecurrentNet:
    """An Elman RNN (fused nn.RNN) for series or text, with a readout and a linear or MLP head.

    Options: hidden_size, layers, bidirectional, dropout, readout last|mean|max, embed_dim (text),
    head_hidden widths with activation, nonlinearity tanh|relu."""
    if nonlinearity not in ("tanh", "relu"):
        raise unknown("RNN nonlinearity", nonlinearity, ("tanh", "relu"))
    return _build("rnn", "rnn", in_shape, num_classes, vocab_size, hidden_size=hidden_size, layers=layers,
                  bidirectional=bidirectional, dropout=dropout, readout=readout, embed_dim=embed_dim,
                  head_hidden=head_hidden, activation=activation, nonlinearity=nonlinearity)


@MODELS.register("lstm", tags=_TAGS, checks=_CHECKS)
def lstm(in_shape, num_classes, vocab_size: int = 0, *, hidden_size: int = 128, layers: int = 1,
         bidirectional: bool = False, dropout: float = 0.0, readout: str = "last", embed_dim: int = 64,
         head_hidden: list[int] = (), activation: str = "relu") -> RecurrentNet:
    """An LSTM (fused nn.LSTM) for series or text, with a readout and a linear or MLP head.

    Options: hidden_size, layers, bidirectional, dropout, readout last|mean|max, embed_dim (text),
    head_hidden widths with activation."""
    return _build("lstm", "lstm", in_shape, num_classes, vocab_size, hidden_size=hidden_size, layers=layers,
                  bidirectional=bidirectional, dropout=dropout, readout=readout, embed_dim=embed_dim,
                  head_hidden=head_hidden, activation=activation)


@MODELS.register("gru", tags=_TAGS, checks=_CHECKS)
def gru(in_shape, num_classes, vocab_size: int = 0, *, hidden_size: int = 128, layers: int = 1,
        bidirectional: bool = False, dropout: float = 0.0, readout: str = "last", embed_dim: int = 64,
        head_hidden: list[int] = (), activation: str = "relu") -> RecurrentNet:
    """A GRU (fused nn.GRU) for series or text, with a readout and a linear or MLP head.

    Options: hidden_size, layers, bidirectional, dropout, readout last|mean|max, embed_dim (text),
    head_hidden widths with activation."""
    return _build("gru", "gru", in_shape, num_classes, vocab_size, hidden_size=hidden_size, layers=layers,
                  bidirectional=bidirectional, dropout=dropout, readout=readout, embed_dim=embed_dim,
                  head_hidden=head_hidden, activation=activation)
