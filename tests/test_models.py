"""Registry-parametrized model tests: every registered model builds for the inputs it is meant
for, maps (B, *in_shape) to (B, num_classes) and gives finite gradients to every parameter.
Plus: activations by name, the guide CNNs' shapes, and the shape check that names the layer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deepstep.errors import UserError
from deepstep.models.layers import ACTIVATIONS, activation, check_fits, create_model
from deepstep.registry import MODELS

# Models tagged "classifier" map inputs to class scores. Generative models (autoencoders, VAE, GAN)
# map inputs to inputs: their forward/backward/shape checks are in tests/test_generative.py and
# tests/test_gan.py. Model "bert" reads only the ids of a pretrained tokenizer (and loads pretrained
# weights): its checks are in tests/test_bert.py and, on a tiny random encoder, in
# tests/test_model_interface.py, which also checks every classifier's timm-style interface.
CLASSIFIERS = [n for n in MODELS.tagged("classifier") if n != "bert"]

IMAGE_28 = (1, 28, 28)
IMAGE_8 = (1, 8, 8)
SERIES_40 = (1, 40)
CANDIDATES = (IMAGE_28, IMAGE_8, SERIES_40)

# Input shapes each model is meant to read. A model missing here is tried on every candidate
# shape and must fit at least one (add it here when it needs other shapes or options).
IN_SHAPES = {
    "linear": [IMAGE_28, IMAGE_8, SERIES_40],
    "mlp": [IMAGE_28, IMAGE_8, SERIES_40],
    "convnet": [IMAGE_28, IMAGE_8, SERIES_40],
    "cnn-guide": [IMAGE_28, IMAGE_8],
    "cnn-fashion": [IMAGE_28, IMAGE_8],
    "resnet-small": [IMAGE_28, IMAGE_8],
}
# Options that keep a model small for the test (defaults when absent).
SMALL = {"resnet-small": {"widths": [8, 16], "blocks": 1}}
NUM_CLASSES = 7  # not 10, so a hard-coded class count would show


def _build(name, in_shape, **kw):
    torch.manual_seed(0)
    return create_model(name, in_shape, NUM_CLASSES, **{**SMALL.get(name, {}), **kw})


def _fitting_shapes(name):
    if name in IN_SHAPES:
        return IN_SHAPES[name]
    shapes = []
    for shape in CANDIDATES:
        try:
            out = _build(name, shape)(torch.randn(2, *shape))
        except (RuntimeError, UserError, ValueError):
            continue
        if tuple(out.shape) == (2, NUM_CLASSES):
            shapes.append(shape)
    return shapes


def _forward_backward(model: nn.Module, in_shape, batch=4):
    model.train()
    x = torch.randn(batch, *in_shape)
    out = model(x)
    assert tuple(out.shape) == (batch, NUM_CLASSES)
    assert torch.isfinite(out).all()
    loss = nn.functional.cross_entropy(out, torch.arange(batch) % NUM_CLASSES)
    loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"parameter {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"parameter {pname} has a non-finite gradient"
    # at least one parameter really learns something from this batch
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_model_forward_backward(name):
    shapes = _fitting_shapes(name)
    assert shapes, f"model '{name}' fits none of {CANDIDATES}; add its input shape to IN_SHAPES"
    for shape in shapes:
        model = _build(name, shape)
        assert isinstance(model, nn.Module)
        assert sum(p.numel() for p in model.parameters()) > 0
        _forward_backward(model, shape)


@pytest.mark.parametrize("name", MODELS.names())
def test_model_has_description_and_keyword_only_options(name):
    import inspect

    assert MODELS.about(name), f"model '{name}' needs a docstring (shown by `deepstep list`)"
    params = list(inspect.signature(MODELS.get(name)).parameters.values())
    positional = [p for p in params if p.kind is not p.KEYWORD_ONLY]
    assert [p.name for p in positional][:2] == ["in_shape", "num_classes"]


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("family,shape", [("mlp", IMAGE_8), ("convnet", IMAGE_8), ("convnet", SERIES_40)])
def test_every_activation_in_mlp_and_convnet(name, family, shape):
    kw = {"channels": [4, 8], "hidden": [16]} if family == "convnet" else {"hidden": [16, 8]}
    model = _build(family, shape, activation=name, **kw)
    expected = type(activation(name))
    assert any(type(m) is expected for m in model.modules()), f"{family} does not use {name}"
    _forward_backward(model, shape)


def test_activation_values_and_unknown_name():
    x = torch.tensor([-2.0, 0.0, 3.0])
    assert torch.equal(activation("relu")(x), torch.tensor([0.0, 0.0, 3.0]))
    assert torch.allclose(activation("leaky_relu")(x), torch.tensor([-0.4, 0.0, 3.0]))
    assert torch.allclose(activation("sigmoid")(x), 1 / (1 + torch.exp(-x)))
    assert torch.allclose(activation("tanh")(x), torch.tanh(x))
    with pytest.raises(UserError, match=r"Unknown activation 'rellu'.*Did you mean 'relu'"):
        activation("rellu")


def _linears(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def test_cnn_guide_reads_32x13x13_features_on_28x28():
    model = create_model("cnn-guide", IMAGE_28, 10)
    (name, fc), = _linears(model)
    assert fc.in_features == 5408 == 32 * 13 * 13
    assert fc.out_features == 10
    assert tuple(model(torch.zeros(3, *IMAGE_28)).shape) == (3, 10)


def test_cnn_fashion_has_fc_9216_to_128():
    model = create_model("cnn-fashion", IMAGE_28, 10)
    shapes = [(m.in_features, m.out_features) for _, m in _linears(model)]
    assert shapes == [(9216, 128), (128, 10)]
    convs = [(m.in_channels, m.out_channels) for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [(1, 32), (32, 64)]


def test_guide_flatten_mistake_is_caught_with_layer_and_shapes():
    model = create_model("cnn-guide", IMAGE_28, 10, flat_features=1152)
    (layer, _), = _linears(model)
    with pytest.raises(UserError) as e:
        check_fits(model, torch.zeros(2, *IMAGE_28), "fashion-mnist")
    msg = str(e.value)
    assert f"'{layer}'" in msg and "Linear" in msg
    assert "1152" in msg  # what the layer expects
    assert "(2, 5408)" in msg  # what it received
    assert "fashion-mnist" in msg and "(1, 28, 28)" in msg


def test_check_fits_names_conv_channels():
    model = create_model("convnet", (3, 8, 8), 4, channels=[4])
    with pytest.raises(UserError, match=r"'features\.0' \(Conv2d\) expects 3 input channels.*\(2, 1, 8, 8\)"):
        check_fits(model, torch.zeros(2, *IMAGE_8), "digits")


def test_check_fits_returns_output_when_it_fits():
    model = create_model("mlp", IMAGE_8, 5)
    out = check_fits(model, torch.zeros(2, *IMAGE_8), "digits")
    assert tuple(out.shape) == (2, 5)


@pytest.mark.parametrize("name", ["cnn-guide", "cnn-fashion", "resnet-small"])
def test_image_models_reject_series_with_a_user_error(name):
    """An image-only model given series data gives a clear error, not a torch traceback."""
    with pytest.raises(UserError, match=r"\(1, 40\)"):
        model = create_model(name, SERIES_40, 10)
        check_fits(model, torch.zeros(2, *SERIES_40), "mnist1d")


def test_convnet_options_change_the_architecture():
    plain = create_model("convnet", IMAGE_28, 10, channels=[8, 16], hidden=[32])
    gap = create_model("convnet", IMAGE_28, 10, channels=[8, 16], hidden=[32], global_pool=True)
    assert _linears(plain)[0][1].in_features == 16 * 7 * 7  # two 2x pools: 28 -> 14 -> 7
    assert _linears(gap)[0][1].in_features == 16
    no_bn = create_model("convnet", IMAGE_28, 10, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in no_bn.modules())
    conv1d = create_model("convnet", SERIES_40, 10, channels=[8])
    assert any(isinstance(m, nn.Conv1d) for m in conv1d.modules())


def test_mlp_options():
    model = create_model("mlp", IMAGE_8, 10, hidden=[32, 16], dropout=0.5, batch_norm=True)
    assert [(m.in_features, m.out_features) for _, m in _linears(model)] == [(64, 32), (32, 16), (16, 10)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 2
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    lin = create_model("linear", IMAGE_28, 10)
    assert [(m.in_features, m.out_features) for _, m in _linears(lin)] == [(math.prod(IMAGE_28), 10)]


def test_resnet_small_uses_torchvision_parameter_names():
    model = create_model("resnet-small", IMAGE_28, 10, widths=[8, 16], blocks=1)
    keys = set(model.state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "fc.weight", "layers.0.0.conv1.weight",
                "layers.1.0.downsample.0.weight"):
        assert key in keys


def test_unknown_model_suggests_close_name():
    with pytest.raises(UserError, match=r"Unknown model 'mpl'.*Did you mean 'mlp'"):
        create_model("mpl", IMAGE_8, 10)


@pytest.mark.parametrize("stem", ["pool", "stride", "patch"])
def test_speedcnn_stems_halve_the_image_in_the_first_block(stem):
    m = create_model("speedcnn", (1, 28, 28), 10, widths=[8, 16, 16], hidden=32, stem=stem, activation="relu")
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert m.features(torch.zeros(1, 1, 28, 28)).shape == (1, 16, 7, 7)  # 28 -> 14 (stem) -> 7, the last block keeps 7x7
    first_block_pools = any(isinstance(x, torch.nn.MaxPool2d) for x in m.features[:2])
    assert first_block_pools == (stem == "pool")


def test_speedcnn_refuses_an_unknown_stem():
    with pytest.raises(UserError, match="model.stem"):
        create_model("speedcnn", (1, 28, 28), 10, stem="pixel")


@pytest.mark.parametrize("name", ["speedcnn", "cnn-fashion"])
def test_nhwc_flatten_is_the_same_network_with_the_first_linear_layer_permuted(name):
    """model.flatten = "nhwc" reads the map pixel by pixel; with the first linear layer's columns
    permuted to match, it computes what the channel-by-channel network computes, in either
    memory format."""
    a = create_model(name, (1, 28, 28), 10, flatten="nchw").eval()
    b = create_model(name, (1, 28, 28), 10, flatten="nhwc").eval()
    sd = a.state_dict()
    fc = next(k for k, v in sd.items() if k.startswith("head.") and v.ndim == 2)
    c, h, w = a.features(torch.zeros(1, 1, 28, 28)).shape[1:]
    sd[fc] = sd[fc].reshape(-1, c, h, w).permute(0, 2, 3, 1).reshape(sd[fc].shape[0], -1)
    b.load_state_dict(sd)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(b(x), a(x), rtol=1e-5, atol=1e-5)
    b = b.to(memory_format=torch.channels_last)
    torch.testing.assert_close(b(x.contiguous(memory_format=torch.channels_last)), a(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="model.flatten"):
        create_model(name, (1, 28, 28), 10, flatten="hwc")
