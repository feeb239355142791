"""The model interface (models/layers.py), checked over the registry: every model tagged
"classifier" splits into `forward_features` and `forward_head` with exactly today's output (same
operations, same order, same dropout draws), `pre_logits` is the input of its last Linear,
`target_layer()` is None or one of its sub-modules that Grad-CAM can hook; every model carries
tags that match what it can do, and a description that is whole sentences; `reload_options`
rebuilds a run's model from the run directory alone."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from torch import nn

from deepstep.errors import UserError
from deepstep.models.autoencoder import is_generative
from deepstep.models.gan import is_gan
from deepstep.models.layers import TAGS, create_model, reload_hook, reload_options, text_models
from deepstep.registry import MODELS, model_options

NUM_CLASSES = 7
BATCH = 4
VOCAB = 30
# one input shape per capability tag: a model is built and run on every shape its tags promise
SHAPES = {"table": (5,), "image": (1, 8, 8), "series": (2, 12), "text": (9,)}
# options that keep a model small (defaults when absent)
SMALL = {"resnet-small": {"widths": [8, 16], "blocks": 1}, "rnn": {"hidden_size": 8},
         "lstm": {"hidden_size": 8, "layers": 2, "bidirectional": True, "dropout": 0.2, "head_hidden": [6]},
         "gru": {"hidden_size": 8, "readout": "mean"}, "transformer": {"dim": 16, "heads": 2},
         "convnet": {"channels": [4, 8], "hidden": [16], "dropout": 0.2}, "mlp": {"dropout": 0.3, "batch_norm": True},
         "dcgan": {"width": 8}}
CLASSIFIERS = MODELS.tagged("classifier")
CASES = [(n, tag) for n in CLASSIFIERS for tag in SHAPES if MODELS.has(n, tag)]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """The architecture of a 2-layer, 16-wide BERT (config.json only: built with random weights)."""
    from transformers import BertConfig

    folder = tmp_path_factory.mktemp("tiny-bert")
    BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
               max_position_embeddings=40, pad_token_id=0).save_pretrained(folder)
    return folder


def build(name, tag, tiny_bert=None, **kw):
    torch.manual_seed(0)
    kw = {**SMALL.get(name, {}), **kw}
    if name == "bert":
        kw = {"pretrained": str(tiny_bert), "from_scratch": True, **kw}
    vocab = (VOCAB,) if tag == "text" else ()
    return create_model(name, SHAPES[tag], NUM_CLASSES, *vocab, **kw)


def inputs(tag, seed=0):
    g = torch.Generator().manual_seed(seed)
    if tag != "text":
        return torch.randn(BATCH, *SHAPES[tag], generator=g)
    ids = torch.randint(1, VOCAB, (BATCH, SHAPES["text"][0]), generator=g)
    for i in range(BATCH):  # right padding of different lengths, one row without any
        ids[i, SHAPES["text"][0] - i * 2:] = 0
    return ids


def last_linear(model: nn.Module) -> nn.Linear:
    """The last nn.Linear in registration order: the head's output layer in every classifier."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize("name,tag", CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_classifier_interface(name, tag, tiny_bert):
    model = build(name, tag, tiny_bert)
    x = inputs(tag)

    # train mode: the same dropout draws in the same order, so the outputs are bit-identical
    model.train()
    torch.manual_seed(1)
    out = model(x)
    torch.manual_seed(1)
    split = model.forward_head(model.forward_features(x))
    assert torch.equal(out, split), f"{name}: forward != forward_head(forward_features(x)) in train mode"

    model.eval()
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        assert torch.equal(out, model.forward_head(feats))
        pre = model.forward_head(feats, pre_logits=True)
        fc = last_linear(model)
        assert tuple(pre.shape) == (BATCH, fc.in_features), f"{name}: pre_logits is not the last Linear's input"
        assert torch.equal(fc(pre), out), f"{name}: the last Linear of pre_logits is not the output"

    layer = model.target_layer()
    assert layer is None or any(layer is m for m in model.modules()), f"{name}: target_layer is not a sub-module"
    if MODELS.has(name, "conv") or MODELS.has(name, "sequence"):
        assert layer is not None, f"{name}: a conv or sequence model names the layer to hook"

    # forward/backward, output shape, and (where there is one) the target layer's output and gradient
    model.train()
    seen = []

    def keep(module, args, output):
        t = output[0] if isinstance(output, tuple) else output
        if torch.is_tensor(t):
            t.retain_grad()
        seen.append(t)

    hook = layer.register_forward_hook(keep) if layer is not None else None
    out = model(x)
    if hook:
        hook.remove()
    assert tuple(out.shape) == (BATCH, NUM_CLASSES) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.arange(BATCH) % NUM_CLASSES).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: parameter {pname}"
    if layer is not None:
        assert seen, f"{name}: the target layer did not run"
    if MODELS.has(name, "conv"):  # a map per example, with a gradient: what Grad-CAM weights
        fmap = seen[-1]
        assert fmap.ndim == len(SHAPES[tag]) + 1 and fmap.shape[0] == BATCH
        assert fmap.grad is not None and fmap.grad.shape == fmap.shape


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_has_tags_and_a_whole_sentence_description(name):
    tags = MODELS.tags(name)
    assert tags, f"model '{name}' carries no tag"
    assert tags <= set(TAGS), f"model '{name}': undocumented tags {sorted(tags - set(TAGS))} (add them to layers.TAGS)"
    assert ("classifier" in tags) != ("generative" in tags), f"model '{name}' is either a classifier or generative"
    assert tags & {"table", "image", "series", "text"}, f"model '{name}' names no input it reads"
    about = MODELS.about(name)
    assert about[:1].isupper() and about.endswith("."), f"model '{name}': '{about}' is not a whole sentence"
    assert about.count("(") == about.count(")") and len(about) <= 120, f"model '{name}': '{about}'"
    assert len(re.findall(r"[a-z)]\. [A-Z]", about)) <= 1, f"model '{name}': keep the description to two sentences"


@pytest.mark.parametrize("name", MODELS.names())
def test_tags_match_the_factory_signature(name):
    params = inspect.signature(MODELS.get(name)).parameters
    assert MODELS.has(name, "text") == ("vocab_size" in params)
    assert MODELS.has(name, "pretrained") == ("pretrained" in model_options(name))
    tags = MODELS.tags(name)
    if "vae" in tags:
        assert "autoencoder" in tags
    if tags & {"text", "attention"}:
        assert "sequence" in tags


# capability tag -> what an instance has (what code outside models/ used to probe with hasattr)
HAS = {"staged": ("param_groups", "feature_head"), "run-files": ("save_run_files",),
       "attention": ("attention",), "pretrained-tokenizer": ("pad_id",), "autoencoder": ("encode", "decode"),
       "sampler": ("sample", "noise", "images", "latent_dim"), "gan": ("generate", "generator", "discriminator")}


@pytest.mark.parametrize("name", MODELS.names())
def test_capability_tags_match_the_built_model(name, tiny_bert):
    tag = next(t for t in SHAPES if MODELS.has(name, t))
    model = build(name, tag, tiny_bert)
    for cap, attrs in HAS.items():
        for attr in attrs:
            assert hasattr(model, attr) == MODELS.has(name, cap), f"model '{name}': tag '{cap}' vs attribute '{attr}'"
    classifier = MODELS.has(name, "classifier")
    for attr in ("forward_features", "forward_head", "target_layer"):
        assert callable(getattr(model, attr, None)) == classifier, f"model '{name}': {attr}"
    # `encode` means one thing: an autoencoder's latent
    assert hasattr(model, "encode") == MODELS.has(name, "autoencoder")
    if MODELS.has(name, "pretrained-tokenizer"):
        assert isinstance(model.pad_id, int)


def test_the_helpers_read_the_tags():
    assert text_models() == MODELS.tagged("text") and {"rnn", "lstm", "gru", "transformer", "bert"} <= set(text_models())
    assert [n for n in MODELS.names() if is_generative(n)] == MODELS.tagged("generative")
    assert [n for n in MODELS.names() if is_gan(n)] == MODELS.tagged("gan") == ["dcgan", "gan-mlp"]
    assert set(MODELS.tagged("staged")) == {"resnet18", "resnet34", "resnet50"}
    assert not is_generative("mlp") and is_generative("vae-mlp") and not is_gan("vae-mlp")
    with pytest.raises(UserError, match="Unknown model 'mpl'"):
        is_generative("mpl")


def test_resnet_embedding_is_the_pooled_pre_logits():
    model = build("resnet18", "image").eval()
    x = inputs("image")
    with torch.no_grad():
        emb, fc = model.feature_head()
        assert fc is model.fc and torch.equal(fc(emb(x)), model(x))
        assert torch.equal(emb(x), model.forward_head(model.forward_features(x), pre_logits=True))
    assert model.target_layer() is model.layer4[-1]


def test_reload_options_drops_outside_weights_and_leaves_the_input_alone(tmp_path):
    options = {"pretrained": "imagenet.pth", "freeze": "layer4", "resize": 0}
    assert reload_options("resnet18", tmp_path, options) == {"freeze": "layer4", "resize": 0}
    assert options["pretrained"] == "imagenet.pth"
    assert reload_options("mlp", tmp_path, {"hidden": [8]}) == {"hidden": [8]}
    with pytest.raises(UserError, match="Unknown model 'resnet81'"):
        reload_options("resnet81", tmp_path, {})
    with pytest.raises(ValueError, match="two reload hooks"):
        reload_hook("bert")(lambda path, options: options)


def test_bert_rebuilds_from_the_run_directory_alone(tiny_bert, tmp_path):
    trained = build("bert", "text", tiny_bert, pooling="mean").eval()
    trained.save_run_files(tmp_path)  # what the run directory holds besides the weights
    options = {"pretrained": "minilm", "pooling": "mean", "from_scratch": False, "freeze_layers": 1}
    rebuilt_opts = reload_options("bert", tmp_path, options)
    assert rebuilt_opts == {"pretrained": str(tmp_path / "encoder"), "pooling": "mean", "from_scratch": True,
                            "freeze_layers": 1}
    torch.manual_seed(5)  # other random weights: only the saved ones may matter
    rebuilt = create_model("bert", SHAPES["text"], NUM_CLASSES, VOCAB, **rebuilt_opts).eval()
    rebuilt.load_state_dict(trained.state_dict())
    x = inputs("text")
    with torch.no_grad():
        assert torch.equal(rebuilt(x), trained(x))
