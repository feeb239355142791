"""Sequence models: attention checked against a naive softmax(QK^T/sqrt(d))V written out per head,
padding masks (padded keys get zero weight; padding never changes an output), the SDPA fast path
against the explicit path, recurrent readouts against nn.GRU/LSTM run on the unpadded sequence,
and forward/backward shapes of every sequence model on series and on token ids."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deepstep.errors import UserError
from deepstep.models.layers import create_model, text_models
from deepstep.models.transformer import MultiHeadSelfAttention, sinusoidal_positions

SEQUENCE_MODELS = ["rnn", "lstm", "gru", "transformer"]
VOCAB, CLASSES = 30, 5


def naive_attention(att: MultiHeadSelfAttention, x: torch.Tensor, pad: torch.Tensor | None):
    """Per example and head, by the textbook formula, with the module's own weights."""
    b, t, d = x.shape
    h = att.heads
    dh = d // h
    w_q, w_k, w_v = att.qkv.weight.split(d)
    b_q, b_k, b_v = att.qkv.bias.split(d)
    outs, weights = [], []
    for i in range(b):
        heads_out, heads_w = [], []
        for j in range(h):
            cols = slice(j * dh, (j + 1) * dh)
            q = x[i] @ w_q[cols].T + b_q[cols]  # (T, dh)
            k = x[i] @ w_k[cols].T + b_k[cols]
            v = x[i] @ w_v[cols].T + b_v[cols]
            scores = q @ k.T / math.sqrt(dh)  # (T, T)
            if pad is not None:
                scores = scores + torch.where(pad[i], float("-inf"), 0.0)[None, :]
            a = torch.exp(scores - scores.max(-1, keepdim=True).values)
            a = a / a.sum(-1, keepdim=True)
            heads_out.append(a @ v)
            heads_w.append(a)
        outs.append(torch.cat(heads_out, -1) @ att.proj.weight.T + att.proj.bias)
        weights.append(torch.stack(heads_w))
    return torch.stack(outs), torch.stack(weights)


def tokens(lengths, t=None, seed=0):
    """Right-padded random ids (B, T) with the given lengths (ids 1..VOCAB-1, 0 = padding)."""
    g = torch.Generator().manual_seed(seed)
    t = t or max(lengths)
    x = torch.randint(1, VOCAB, (len(lengths), t), generator=g)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    return x


@pytest.mark.parametrize("masked", [False, True])
def test_attention_matches_naive_formula(masked):
    torch.manual_seed(0)
    att = MultiHeadSelfAttention(16, 4).eval()
    x = torch.randn(3, 6, 16)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [False] + [True] * 5]) if masked else None
    want_out, want_w = naive_attention(att, x, pad)
    out, w = att(x, pad, weights=True)
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, want_w, atol=1e-6, rtol=1e-5)
    fast, none = att(x, pad, weights=False)
    assert none is None
    torch.testing.assert_close(fast, want_out, atol=1e-5, rtol=1e-5)


def test_padded_keys_get_zero_weight_and_rows_sum_to_one():
    torch.manual_seed(0)
    model = create_model("transformer", (8,), CLASSES, VOCAB, dim=16, heads=2, layers=3, pooling="mean").eval()
    x = tokens([8, 5, 2])
    maps = model.attention(x)
    assert len(maps) == 3
    for w in maps:
        assert w.shape == (3, 2, 8, 8)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 8))
        assert torch.all(w[1, :, :, 5:] == 0) and torch.all(w[2, :, :, 2:] == 0)
        assert torch.all(w[1, :, :, :5] > 0)  # valid keys all get some weight


def test_cls_position_is_counted_in_the_attention_maps():
    model = create_model("transformer", (8,), CLASSES, VOCAB, dim=16, heads=4, layers=2, pooling="cls").eval()
    x = tokens([6, 3])  # the batch is cut to its longest row (6) and [CLS] is put in front
    logits, maps = model(x, return_attention=True)
    assert logits.shape == (2, CLASSES)
    assert [w.shape for w in maps] == [(2, 4, 7, 7)] * 2
    assert torch.all(maps[0][1, :, :, 4:] == 0) and torch.all(maps[0][1, :, :, 0] > 0)


@pytest.mark.parametrize("inputs", ["tokens", "series"])
@pytest.mark.parametrize("pooling,positions", [("cls", "sinusoidal"), ("mean", "learned"), ("mean", "none")])
def test_sdpa_fast_path_equals_explicit_path(inputs, pooling, positions):
    torch.manual_seed(0)
    if inputs == "tokens":
        shape, extra, x = (10,), (VOCAB,), tokens([10, 7, 1, 4])
    else:
        shape, extra, x = (3, 12), (), torch.randn(4, 3, 12)
    kw = dict(dim=32, heads=4, layers=2, pooling=pooling, positions=positions, dropout=0.1)
    fast = create_model("transformer", shape, CLASSES, *extra, **kw, fast=True).eval()
    slow = create_model("transformer", shape, CLASSES, *extra, **kw, fast=False)
    slow.load_state_dict(fast.state_dict())
    slow.eval()
    want = slow(x)
    torch.testing.assert_close(fast(x), want, atol=1e-5, rtol=1e-4)
    out, maps = fast(x, return_attention=True)  # asking for weights takes the explicit path
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)
    assert len(maps) == 2 and all(m is not None for m in maps)


@pytest.mark.parametrize("name,kw", [
    ("transformer", {"pooling": "cls"}), ("transformer", {"pooling": "mean"}),
    ("lstm", {"readout": "last", "bidirectional": True}), ("gru", {"readout": "mean", "layers": 2}),
    ("rnn", {"readout": "max", "bidirectional": True}),
])
def test_padding_never_changes_the_output(name, kw):
    """The same texts padded to 6 or to 15 positions, alone or in a batch, give the same logits."""
    torch.manual_seed(0)
    model = create_model(name, (15,), CLASSES, VOCAB, **kw).eval()
    x = tokens([6, 3, 5], t=6)
    wide = torch.cat([x, torch.zeros(3, 9, dtype=torch.long)], 1)
    with torch.no_grad():
        a, b = model(x), model(wide)
        alone = torch.cat([model(x[i:i + 1, : int((x[i] != 0).sum())]) for i in range(3)])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_last_readout_is_the_state_at_each_rows_own_last_token(cell):
    torch.manual_seed(0)
    model = create_model(cell, (9,), CLASSES, VOCAB, hidden_size=8, bidirectional=True).eval()
    x = tokens([9, 4])
    with torch.no_grad():
        feats = model.forward_features(x)
        for i, n in enumerate([9, 4]):
            out, _ = model.rnn(model.embed(x[i:i + 1, :n]))  # (1, n, 2H), no padding at all
            forward_last, backward_first = out[0, n - 1, :8], out[0, 0, 8:]
            torch.testing.assert_close(feats[i], torch.cat([forward_last, backward_first]), atol=1e-6, rtol=1e-5)


def test_series_readouts_against_torch_gru():
    torch.manual_seed(0)
    x = torch.randn(4, 2, 11)  # (B, C, T), channels first as the loaders give it
    model = create_model("gru", (2, 11), CLASSES, hidden_size=6, readout="mean").eval()
    with torch.no_grad():
        out, _ = model.rnn(x.transpose(1, 2))
        torch.testing.assert_close(model.forward_features(x), out.mean(1))
        model.readout = "max"
        torch.testing.assert_close(model.forward_features(x), out.amax(1))
        model.readout = "last"
        torch.testing.assert_close(model.forward_features(x), out[:, -1])


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
@pytest.mark.parametrize("inputs", ["series", "tokens"])
def test_forward_backward_shapes(name, inputs):
    torch.manual_seed(0)
    if inputs == "series":
        model, x = create_model(name, (3, 16), CLASSES), torch.randn(4, 3, 16)
    else:
        model, x = create_model(name, (12,), CLASSES, VOCAB), tokens([12, 5, 1, 8], t=12)
    out = model(x)
    assert out.shape == (4, CLASSES) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.arange(4) % CLASSES).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("readout", ["last", "mean", "max"])
def test_recurrent_options_build(name, readout):
    model = create_model(name, (1, 10), 3, hidden_size=4, layers=2, bidirectional=True, dropout=0.2,
                         readout=readout, head_hidden=[7], activation="gelu")
    assert model.rnn.num_layers == 2 and model.rnn.bidirectional and model.rnn.dropout == 0.2
    assert [m.in_features for m in model.head if isinstance(m, nn.Linear)] == [8, 7]
    assert any(isinstance(m, nn.GELU) for m in model.head)
    assert model(torch.randn(2, 1, 10)).shape == (2, 3)


def test_empty_text_gives_finite_outputs():
    x = torch.zeros(2, 5, dtype=torch.long)
    x[1, :2] = 3
    for name in SEQUENCE_MODELS:
        assert torch.isfinite(create_model(name, (5,), 3, VOCAB).eval()(x)).all(), name


def test_sinusoidal_positions_formula():
    table = sinusoidal_positions(7, 6)
    for p in range(7):
        for i in range(3):
            angle = p / 10000 ** (2 * i / 6)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_transformer_patches_series():
    model = create_model("transformer", (1, 40), 10, patch=4, positions="learned")
    assert model.pos.shape[1] == 40 // 4 + 1  # ten patches plus [CLS]
    _, maps = model(torch.randn(2, 1, 40), return_attention=True)
    assert maps[0].shape[-1] == 11


def test_text_models_are_the_sequence_models():
    assert set(SEQUENCE_MODELS) <= set(text_models())
    assert "mlp" not in text_models() and "convnet" not in text_models()


@pytest.mark.parametrize("name,kw,needle", [
    ("gru", {"readout": "first"}, "Unknown readout 'first'"),
    ("rnn", {"nonlinearity": "gelu"}, "nonlinearity"),
    ("transformer", {"dim": 30, "heads": 4}, "divisible"),
    ("transformer", {"pooling": "max"}, "Unknown pooling"),
    ("transformer", {"patch": 50}, "model.patch"),
    ("lstm", {"dropout": 1.5}, "model.dropout"),
])
def test_bad_options_are_user_errors(name, kw, needle):
    with pytest.raises(UserError, match=needle):
        create_model(name, (1, 40), 10, **kw)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_image_input_is_a_user_error(name):
    with pytest.raises(UserError, match=r"\(1, 28, 28\)"):
        create_model(name, (1, 28, 28), 10)


def test_longer_input_than_trained_is_a_user_error():
    model = create_model("transformer", (6,), 3, VOCAB, positions="learned")
    with pytest.raises(UserError, match="at most 7"):
        model(tokens([9]))
