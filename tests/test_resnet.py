"""ResNet-18/34/50: torchvision's exact names and shapes (reference tables built here from the
published layout, and torchvision's published parameter counts), pretrained loading from .pth and
.safetensors, clear errors for files that do not fit, grayscale adaptation and freezing."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import deepstep
from deepstep.errors import UserError

LAYOUT = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
          "resnet50": ("bottleneck", [3, 4, 6, 3])}
# torchvision's documented parameter counts (3-channel input, 1000 classes)
PUBLISHED = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}


def _bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def torchvision_table(arch, in_channels=3, num_classes=1000):
    """name -> shape of every parameter and buffer in torchvision's `arch`, from its layout."""
    kind, layers = LAYOUT[arch]
    exp = 4 if kind == "bottleneck" else 1
    t = {"conv1.weight": (64, in_channels, 7, 7), **_bn("bn1", 64)}
    c = 64
    for s, n in enumerate(layers):
        planes = 64 * 2**s
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            stride = 2 if s > 0 and b == 0 else 1
            if kind == "basic":
                t |= {f"{p}.conv1.weight": (planes, c, 3, 3), **_bn(f"{p}.bn1", planes),
                      f"{p}.conv2.weight": (planes, planes, 3, 3), **_bn(f"{p}.bn2", planes)}
            else:
                t |= {f"{p}.conv1.weight": (planes, c, 1, 1), **_bn(f"{p}.bn1", planes),
                      f"{p}.conv2.weight": (planes, planes, 3, 3), **_bn(f"{p}.bn2", planes),
                      f"{p}.conv3.weight": (planes * 4, planes, 1, 1), **_bn(f"{p}.bn3", planes * 4)}
            if b == 0 and (stride != 1 or c != planes * exp):
                t |= {f"{p}.downsample.0.weight": (planes * exp, c, 1, 1), **_bn(f"{p}.downsample.1", planes * exp)}
            c = planes * exp
    return t | {"fc.weight": (num_classes, c), "fc.bias": (num_classes,)}


def _randomized(arch, in_shape=(3, 32, 32), num_classes=1000, seed=0):
    """A model whose batch-norm buffers are not at their defaults either, so round trips show."""
    torch.manual_seed(seed)
    m = deepstep.create_model(arch, in_shape, num_classes)
    with torch.no_grad():
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("num_batches_tracked"):
                b.fill_(123)
        for name, p in m.named_parameters():
            if ".bn" in name or name.startswith("bn"):
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(0, 0.1)
    return m


@pytest.mark.parametrize("arch", sorted(LAYOUT))
def test_names_shapes_and_published_parameter_counts(arch):
    model = deepstep.create_model(arch, (3, 224, 224), 1000)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = torchvision_table(arch)
    assert set(got) - set(want) == set(), "keys torchvision does not have"
    assert set(want) - set(got) == set(), "torchvision keys missing"
    assert got == want
    assert list(got) == list(want)  # same order as torchvision's state_dict
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[arch]
    assert {k for k, _ in model.named_buffers()} == {k for k in want if ".running_" in k or "num_batches" in k}


def test_resnet50_bottleneck_has_stride_on_the_3x3_conv():
    model = deepstep.create_model("resnet50", (3, 32, 32), 10)
    first = model.layer2[0]
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2) and first.downsample[0].stride == (2, 2)


@pytest.mark.parametrize("arch,suffix", [("resnet50", ".pth"), ("resnet18", ".safetensors")])
def test_state_dict_round_trips_through_pretrained(tmp_path, arch, suffix):
    src = _randomized(arch)
    state = src.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    model = deepstep.create_model(arch, (3, 224, 224), 1000, pretrained=str(path))
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    # a state dict with torchvision's keys loads without renaming, strictly
    fresh = deepstep.create_model(arch, (3, 224, 224), 1000)
    fresh.load_state_dict(state, strict=True)
    src.eval(), fresh.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(src(x), fresh(x))


def test_thousand_class_checkpoint_gets_a_new_head(tmp_path):
    src = _randomized("resnet18")
    torch.save(src.state_dict(), tmp_path / "imagenet.pth")
    model = deepstep.create_model("resnet18", (3, 32, 32), 7, pretrained=str(tmp_path / "imagenet.pth"))
    assert tuple(model.fc.weight.shape) == (7, 512)
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(model.state_dict()[k], v), k


def test_mismatched_file_names_missing_and_unexpected_keys(tmp_path):
    state = _randomized("resnet18").state_dict()
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    with pytest.raises(UserError) as e:
        deepstep.create_model("resnet34", (3, 32, 32), 1000, pretrained=str(path))
    msg = str(e.value)
    assert "r18.pth" in msg
    assert "missing keys" in msg and "layer1.2.conv1.weight" in msg
    assert "unexpected keys" in msg and "extra.weight" in msg


def test_wrong_architecture_shapes_and_bad_files(tmp_path):
    torch.save(_randomized("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match=r"layer1\.0\.conv1\.weight"):  # basic vs bottleneck
        deepstep.create_model("resnet50", (3, 32, 32), 1000, pretrained=str(tmp_path / "r18.pth"))
    with pytest.raises(UserError, match=r"no weights file at .*nothing\.pth"):
        deepstep.create_model("resnet18", (3, 32, 32), 10, pretrained=str(tmp_path / "nothing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"junk\.pth.*cannot be read"):
        deepstep.create_model("resnet18", (3, 32, 32), 10, pretrained=str(tmp_path / "junk.pth"))
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match=r"junk\.safetensors"):
        deepstep.create_model("resnet18", (3, 32, 32), 10, pretrained=str(tmp_path / "junk.safetensors"))


def test_grayscale_input_sums_rgb_filters(tmp_path):
    rgb = _randomized("resnet18", num_classes=10)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    gray = deepstep.create_model("resnet18", (1, 28, 28), 10, pretrained=str(tmp_path / "rgb.pth"))
    assert tuple(gray.conv1.weight.shape) == (64, 1, 7, 7)
    assert torch.equal(gray.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    rgb.eval(), gray.eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        out_gray, out_rgb = gray(x), rgb(x.expand(-1, 3, -1, -1))
    assert not torch.allclose(out_rgb, torch.zeros_like(out_rgb))
    torch.testing.assert_close(out_gray, out_rgb, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("freeze,trains", [("backbone", ("fc",)), ("layer3", ("layer4", "fc"))])
def test_frozen_parts_stay_bit_identical_through_fit(tmp_path, freeze, trains):
    src = _randomized("resnet18", in_shape=(1, 28, 28), num_classes=10)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    model = deepstep.create_model("resnet18", (1, 28, 28), 4, pretrained=str(tmp_path / "w.pth"), freeze=freeze)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 4
    deepstep.fit(model, (x, y), epochs=1, batch_size=8, lr=1e-2, verbose=0)  # 2 optimizer steps
    after = model.state_dict()
    for k, v in before.items():
        if k.split(".")[0] in trains:
            continue
        assert torch.equal(after[k], v), f"frozen {k} changed"  # parameters and BN statistics
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    if "layer4" in trains:
        assert not torch.equal(after["layer4.1.conv2.weight"], before["layer4.1.conv2.weight"])
        assert not torch.equal(after["layer4.0.bn1.running_mean"], before["layer4.0.bn1.running_mean"])
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(trains)


def test_freeze_options_and_errors():
    model = deepstep.create_model("resnet34", (3, 32, 32), 5, freeze="stem")
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1"}
    model.train()
    assert not model.bn1.training and model.layer1.training
    assert all(p.requires_grad for p in deepstep.create_model("resnet18", (3, 32, 32), 5).parameters())
    with pytest.raises(UserError, match=r"model\.freeze='layer5'.*layer4.*backbone"):
        deepstep.create_model("resnet18", (3, 32, 32), 5, freeze="layer5")
    with pytest.raises(UserError, match=r"\(1, 40\)"):
        deepstep.create_model("resnet18", (1, 40), 5)


def test_config_accepts_resnet_options():
    from deepstep.config import resolve_model_args

    args = resolve_model_args({"name": "resnet50", "freeze": "layer2"})
    assert args == {"name": "resnet50", "pretrained": "", "freeze": "layer2", "resize": 0,
                    "new_head": False, "pretrained_upto": "all"}


def test_transfer_run_loads_without_the_pretrained_file(tmp_path):
    """Train a frozen ResNet from a deepstep run's weights; the new run then loads on its own."""
    from deepstep.config import load_config
    from deepstep.run import load_run, train

    base = ["model.name=resnet18", "train.epochs=1", "train.batch_size=128", "data.test_split=0.5"]
    train(load_config("digits-cnn", base), run_dir=tmp_path / "src", verbose=0)
    cfg = load_config("digits-cnn", [*base, f"model.pretrained={tmp_path / 'src'}", "model.freeze=layer3"])
    train(cfg, run_dir=tmp_path / "dst", verbose=0)
    src, dst = load_run(tmp_path / "src").model(), load_run(tmp_path / "dst").model()
    assert torch.equal(src.layer3[1].conv2.weight, dst.layer3[1].conv2.weight)  # frozen: carried over
    assert not torch.equal(src.fc.weight, dst.fc.weight)
    (tmp_path / "src" / "model.safetensors").unlink()
    assert torch.equal(load_run(tmp_path / "dst").model().fc.weight, dst.fc.weight)


def test_resize_upsamples_inside_the_model():
    torch.manual_seed(0)
    big = deepstep.create_model("resnet18", (1, 28, 28), 10, resize=64).eval()
    plain = deepstep.create_model("resnet18", (1, 28, 28), 10).eval()
    plain.load_state_dict(big.state_dict(), strict=True)  # no extra parameters or buffers
    x = torch.randn(2, 1, 28, 28)
    up = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert torch.equal(big(x), plain(up))
        assert not torch.allclose(big(x), plain(x))
    with pytest.raises(UserError, match=r"model\.resize=-1"):
        deepstep.create_model("resnet18", (1, 28, 28), 10, resize=-1)
