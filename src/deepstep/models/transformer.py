"""A Transformer encoder written out in deepstep (Vaswani et al. 2017, "Attention Is All You Need",
with the pre-LayerNorm placement of Xiong et al. 2020), for sequence and text classification.

    tokens (B, T) ids / series (B, C, T)
      -> embedding (nn.Embedding / a Conv1d over `patch` steps) [+ a learned [CLS] vector in front]
      -> + positions (sinusoidal or learned)
      -> L x [ x + MHSA(LN(x)),  x + FFN(LN(x)) ]  -> LN -> pool ([CLS] or masked mean) -> Linear

Attention has two paths that compute the same function: the explicit one,
softmax(QK^T / sqrt(d) + mask) V, which also returns the weights (B, heads, T, T), and a fast one
through `torch.nn.functional.scaled_dot_product_attention` (fused kernels; no weights). `forward`
takes the fast path unless `fast=False` or the weights are asked for (`return_attention=True` or
`attention(x)`); tests/test_sequence.py checks that both give the same output.

Inputs and the vocabulary size follow models/rnn.py: series (C, T) or token ids (T,) right-padded
with 0, and `vocab_size` as the third positional argument (data, not config). Padding keys get no
attention weight (a mask of -inf before the softmax). Token batches are cut to their longest row
first (one device->host read of the length per batch), which saves the work on trailing padding
and changes no output. Position 0 (the [CLS] vector, or the first token) is never masked, so an
empty text still has one key to attend to instead of a row of NaNs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError, unknown
from ..registry import MODELS
from .rnn import step_features

POSITIONS = ("sinusoidal", "learned", "none")
POOLINGS = ("cls", "mean")


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) table: sin at even, cos at odd features, wavelengths 2*pi .. 10000*2*pi."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with a padding mask; explicit (weights) or fused (SDPA) path."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise UserError(f"model.dim = {dim} must be divisible by model.heads = {heads}.")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None, weights: bool = False):
        """x (B, T, D); pad (B, T) True at padding. Returns (B, T, D) and (B, heads, T, T) or None."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, T, dh)
        p = self.dropout if self.training else 0.0
        if weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, h, T, T)
            if pad is not None:
                scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
            w = scores.softmax(-1)
            out = F.dropout(w, p) @ v
        else:
            keep = None if pad is None else ~pad[:, None, None, :]  # SDPA: True = may attend
            out, w = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p), None
        return self.proj(out.transpose(1, 2).reshape(b, t, d)), w


class EncoderBlock(nn.Module):
    """Pre-LN block: x + MHSA(LN(x)), then x + FFN(LN(x)); FFN = Linear -> GELU -> Linear."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, dropout)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, pad=None, weights: bool = False):
        a, w = self.attn(self.ln1(x), pad, weights)
        x = x + self.drop(a)
        return x + self.drop(self.ff(self.ln2(x))), w


class TransformerEncoder(nn.Module):
    """Transformer encoder classifier/regressor over series or token ids."""

    def __init__(self, in_features: int | None, vocab_size: int, max_len: int, num_classes: int, *,
                 dim: int, heads: int, layers: int, ff_dim: int, dropout: float, positions: str,
                 pooling: str, fast: bool, patch: int = 1):
        super().__init__()
        if positions not in POSITIONS:
            raise unknown("positions", positions, POSITIONS)
        if pooling not in POOLINGS:
            raise unknown("pooling", pooling, POOLINGS)
        self.pooling, self.fast, self.positions = pooling, fast, positions
        # series: each token is `patch` consecutive steps (patch 1: one step, a per-step linear map)
        self.embed = (nn.Embedding(vocab_size, dim, padding_idx=0) if vocab_size
                      else nn.Conv1d(in_features, dim, patch, stride=patch))
        self.tokens = bool(vocab_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if pooling == "cls" else None
        n_pos = max_len + (pooling == "cls")
        if positions == "learned":
            self.pos = nn.Parameter(torch.randn(1, n_pos, dim) * 0.02)
        else:
            self.register_buffer("pos", sinusoidal_positions(n_pos, dim)[None] if positions == "sinusoidal"
                                 else torch.zeros(1, n_pos, dim), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, ff_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def _embed(self, x: torch.Tensor, trim: bool = True):
        """-> h (B, T', D) with positions added, and pad (B, T') True at padding, or None. `trim`
        drops the columns that are padding in every row (no output changes; exporters need it off:
        the cut depends on the data)."""
        pad = None
        if self.tokens:  # (B, T) ids, 0 = padding
            if trim:
                x = x[:, : max(1, int((x != 0).sum(1).max()))]
            pad = x == 0
            h = self.embed(x)
        else:  # (B, C, T) series -> (B, D, T / patch) -> (B, T / patch, D)
            h = self.embed(x).transpose(1, 2)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], 1)
            pad = None if pad is None else F.pad(pad, (1, 0), value=False)
        elif pad is not None:
            pad = pad.clone()
            pad[:, 0] = False  # never mask every key of a row
        if h.shape[1] > self.pos.shape[1]:
            raise UserError(f"The sequence has {h.shape[1]} positions, but the model was built for at most "
                            f"{self.pos.shape[1]} (its training inputs' length).")
        return self.drop(h + self.pos[:, : h.shape[1]]), pad

    def features_and_attention(self, x: torch.Tensor, weights: bool = False, trim: bool = True):
        """Pooled features (B, D) and, when `weights`, each layer's attention (B, heads, T', T')."""
        h, pad = self._embed(x, trim)
        maps = []
        for block in self.blocks:
            h, w = block(h, pad, weights or not self.fast)
            maps.append(w)
        h = self.norm(h)
        if self.pooling == "cls":
            return h[:, 0], maps
        if pad is None:
            return h.mean(1), maps
        keep = (~pad)[..., None].to(h.dtype)
        return (h * keep).sum(1) / keep.sum(1), maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D): the final LayerNorm's [CLS] position or masked mean."""
        return self.features_and_attention(x)[0]

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return feats if pre_logits else self.head(feats)

    def target_layer(self) -> nn.Module:
        """The last encoder block: its output's first element is (B, T', D), one vector per position
        (T' counts the [CLS] position)."""
        return self.blocks[-1]

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """(B, C, T) series or (B, T) ids -> logits (B, classes); with `return_attention`, also the
        list of every layer's attention weights (B, heads, T', T'), T' counting the [CLS] position."""
        feats, maps = self.features_and_attention(x, return_attention)
        out = self.forward_head(feats)
        return (out, maps) if return_attention else out

    def exportable(self) -> nn.Module:
        """The same function for graph exporters (ONNX, TorchScript): token batches are not cut to
        their longest row, a cut that depends on the data."""
        return _Untrimmed(self)

    @torch.no_grad()
    def attention(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's attention weights for inputs `x` (rows sum to 1; padding columns are 0)."""
        return self.forward(x, return_attention=True)[1]


class _Untrimmed(nn.Module):
    """`TransformerEncoder.forward` without the cut to the longest row (for exporters)."""

    def __init__(self, net: TransformerEncoder):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.features_and_attention(x, trim=False)[0])


@MODELS.register("transformer", tags=("classifier", "series", "sequence", "text", "attention"),
                 checks={"dim": ">= 1", "heads": ">= 1", "layers": ">= 1", "ff_dim": ">= 0", "dropout": "[0, 1)",
                         "patch": ">= 1"})
def transformer(in_shape, num_classes, vocab_size: int = 0, *, dim: int = 64, heads: int = 4, layers: int = 2,
                ff_dim: int = 0, dropout: float = 0.1, positions: str = "sinusoidal", pooling: str = "cls",
                patch: int = 1, fast: bool = True) -> TransformerEncoder:
    """A pre-LayerNorm Transformer encoder for series or text, written out in deepstep.

    Options: dim, heads, layers, ff_dim (0: 4*dim), dropout, positions sinusoidal|learned|none,
    pooling cls|mean, patch (series: steps per token), fast (SDPA attention when no weights are
    asked)."""
    in_features = step_features(in_shape, vocab_size, "transformer")
    if patch < 1 or (vocab_size and patch != 1) or patch > in_shape[-1]:
        raise UserError(f"model.patch = {patch} must be at least 1 and at most the series length "
                        f"{in_shape[-1]}; token ids (text) need patch = 1.")
    if dim < 1 or heads < 1 or layers < 1:
        raise UserError(f"model.dim, model.heads and model.layers must be at least 1 (got {dim}, {heads}, {layers}).")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"model.dropout = {dropout} must be in [0, 1).")
    return TransformerEncoder(in_features, vocab_size, in_shape[-1] // patch, num_classes, dim=dim, heads=heads,
                              layers=layers, ff_dim=ff_dim or 4 * dim, dropout=dropout, positions=positions,
                              pooling=pooling, fast=fast, patch=patch)
