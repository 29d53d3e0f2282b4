"""Tests for advrw.models: shapes, parameter counts, Normalize, errors, channels_last/bf16, tiny training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advrw.core.errors import AdvrwError
from advrw.models import MODEL_NAMES, Normalize, build_model, num_parameters

# (in_channels, image_size) per model for the shape test.
SHAPE_CASES = {
    "smallcnn": (1, 28),
    "resnet18": (3, 32),
    "preact_resnet18": (3, 32),
    "wrn34_10": (3, 32),
    "wrn28_10": (3, 32),
    "wrn32_10": (3, 32),
    "resnet50": (3, 64),
    "tiny": (1, 28),
    "wrn28_10_silu": (3, 32),
    "wrn34_20_silu": (3, 32),
    "wrn70_16_silu": (3, 32),
}
BIG = {"wrn34_20_silu", "wrn70_16_silu"}  # 185M / 267M parameters: built on the meta device only

# Exact trainable-parameter counts for 10 classes (3-channel input; smallcnn on 28x28x1),
# next to the figures usually quoted in the papers/repos.
EXACT_PARAMS = {
    "resnet18": 11_173_962,
    "preact_resnet18": 11_172_170,  # Rice et al. version, final BN included
    "wrn34_10": 46_160_474,
    "wrn28_10": 36_479_194,
    "wrn32_10": 46_160_474,  # Madry's WRN-32-10 == TRADES' WRN-34-10
    "resnet50": 23_520_842,
    "smallcnn": 312_202,
    "wrn28_10_silu": 36_479_194,  # the same convolutions as TRADES' WRN-28-10, another padding
}
QUOTED_PARAMS = {"resnet18": 11.17e6, "preact_resnet18": 11.17e6, "wrn34_10": 46.16e6, "wrn28_10": 36.48e6}


def test_model_names():
    assert set(MODEL_NAMES) == set(SHAPE_CASES)
    assert len(MODEL_NAMES) == len(set(MODEL_NAMES))


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", sorted(SHAPE_CASES))
def test_output_shape(name, num_classes):
    if name in BIG:
        pytest.skip("too big for a CPU forward in the default suite; keys and shapes are checked on the meta device")
    in_channels, size = SHAPE_CASES[name]
    torch.manual_seed(0)
    model = build_model(name, num_classes, in_channels=in_channels, image_size=size)
    assert not any(isinstance(m, Normalize) for m in model.modules())
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, in_channels, size, size))
    assert out.shape == (2, num_classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_parameter_counts(name):
    if name == "smallcnn":
        model = build_model(name, 10, in_channels=1, image_size=28)
    else:
        model = build_model(name, 10)
    count = num_parameters(model)
    assert count == sum(p.numel() for p in model.parameters())
    assert count == EXACT_PARAMS[name]
    if name in QUOTED_PARAMS:
        assert abs(count - QUOTED_PARAMS[name]) / QUOTED_PARAMS[name] < 0.01


def test_parameter_count_scales_with_classes():
    # Only the classifier changes: 90 more classes x (512 inputs + 1 bias).
    assert num_parameters(build_model("resnet18", 100)) - EXACT_PARAMS["resnet18"] == 90 * 513


@pytest.mark.parametrize(
    "name,in_channels,size",
    [("smallcnn", 3, 32), ("smallcnn", 1, 16), ("tiny", 3, 8), ("tiny", 4, 64), ("tiny", 1, 33),
     ("resnet18", 1, 28), ("preact_resnet18", 3, 64)],
)
def test_other_input_geometries(name, in_channels, size):
    model = build_model(name, 7, in_channels=in_channels, image_size=size).eval()
    with torch.no_grad():
        out = model(torch.rand(2, in_channels, size, size))
    assert out.shape == (2, 7)


def test_smallcnn_trades_layout_and_init():
    model = build_model("smallcnn", 10, in_channels=3, image_size=32)
    assert model.classifier.fc1.in_features == 64 * 5 * 5
    assert build_model("smallcnn", 10, in_channels=1, image_size=28).classifier.fc1.in_features == 64 * 4 * 4
    assert torch.count_nonzero(model.classifier.fc3.weight) == 0
    assert torch.count_nonzero(model.classifier.fc3.bias) == 0
    assert torch.count_nonzero(model.feature_extractor.conv1.bias) == 0


def test_tiny_has_batchnorm():
    assert any(isinstance(m, nn.BatchNorm2d) for m in build_model("tiny", 2).modules())


def test_normalize_values():
    norm = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    x = torch.tensor([[0.0, 1.0], [0.5, 0.25]]).expand(1, 3, 2, 2).clone()
    expected = torch.tensor([
        [[-1.0, 1.0], [0.0, -0.5]],    # (x - 0.5) / 0.5
        [[-1.0, 3.0], [1.0, 0.0]],     # (x - 0.25) / 0.25
        [[0.0, 0.5], [0.25, 0.125]],   # (x - 0) / 2
    ]).unsqueeze(0)
    assert torch.equal(norm(x), expected)
    cl = norm(x.to(memory_format=torch.channels_last))
    assert torch.equal(cl, expected)
    # mean/std are buffers (saved, moved with .to()), not trainable parameters
    assert list(norm.parameters()) == []
    assert set(norm.state_dict()) == {"mean", "std"}
    assert norm(x.double()).dtype == torch.float64


@pytest.mark.parametrize("name", ["tiny", "resnet18"])
def test_build_model_with_normalize_matches_manual(name):
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    torch.manual_seed(0)
    model = build_model(name, 10, mean=mean, std=std).eval()
    assert isinstance(model[0], Normalize) and model[0] is model.normalize
    plain = build_model(name, 10).eval()
    plain.load_state_dict(model.net.state_dict())
    x = torch.rand(2, 3, 32, 32)
    x_norm = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(out, plain(x_norm), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(out, plain(x), atol=1e-3)  # normalisation really happens


def test_unknown_name():
    with pytest.raises(AdvrwError, match="resnet99") as info:
        build_model("resnet99", 10)
    msg = str(info.value)
    assert "\n" not in msg
    assert all(n in msg for n in MODEL_NAMES)


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, True, "10", None])
def test_bad_num_classes(bad):
    with pytest.raises(AdvrwError, match="num_classes") as info:
        build_model("tiny", bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize(
    "kwargs,word",
    [
        (dict(in_channels=0), "in_channels=0"),
        (dict(name="smallcnn", image_size=12), "image_size=12"),
        (dict(image_size=4), "image_size=4"),
        (dict(mean=(0.5, 0.5, 0.5)), "std=None"),
        (dict(mean=(0.5, 0.5), std=(0.2, 0.2)), "in_channels=3"),
        (dict(mean=(0.5, 0.5, 0.5), std=(0.2, 0.0, 0.2)), "std="),
        (dict(mean=(0.5, 0.5, 0.5), std=(0.2, 0.2)), "same length"),
        (dict(mean="0.5", std=(0.2,)), "mean="),
    ],
)
def test_other_bad_arguments(kwargs, word):
    kwargs = {"name": "tiny", "num_classes": 10, **kwargs}
    with pytest.raises(AdvrwError, match=word.replace("(", r"\(").replace(")", r"\)")):
        build_model(**kwargs)


def test_channels_last_bf16_autocast():
    torch.manual_seed(0)
    model = build_model("resnet18", 10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    model = model.to(memory_format=torch.channels_last)
    assert model.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 32).to(memory_format=torch.channels_last).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), torch.tensor([1, 7]))
    assert logits.shape == (2, 10)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits.float()).all()
    (grad,) = torch.autograd.grad(loss, x)  # attacks need input gradients
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def _stripes(n: int, gen: torch.Generator, size: int = 16):
    """Class 0: horizontal stripes, class 1: vertical stripes (same mean; needs a conv to tell)."""
    y = torch.randint(0, 2, (n,), generator=gen)
    phase = torch.randint(0, 4, (n,), generator=gen).view(-1, 1, 1)
    rows = ((torch.arange(size).view(1, -1, 1) + phase) // 2 % 2).float().expand(n, size, size)
    img = torch.where(y.view(-1, 1, 1) == 0, rows, rows.transpose(1, 2))
    img = 0.25 + 0.5 * img + 0.1 * torch.randn(n, size, size, generator=gen)
    return img.clamp(0, 1).unsqueeze(1), y


def test_tiny_learns_easy_problem():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build_model("tiny", 2, in_channels=1, image_size=16)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(40):
        x, y = _stripes(64, gen)
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = _stripes(512, gen)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9


# ----------------------------------------------------------------------------- DeepMind / RobustBench WRNs


def _robustbench_dm_wide_resnet():
    """RobustBench's DMWideResNet class, read from its file where the package itself fails to import
    (``robustbench/__init__`` pulls torchvision in); None where robustbench is not installed."""
    import importlib.util

    try:
        from robustbench.model_zoo.architectures.dm_wide_resnet import DMWideResNet, Swish
        return DMWideResNet, Swish
    except Exception:  # not installed, or its package __init__ fails on this torchvision
        pass
    spec = importlib.util.find_spec("robustbench")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "model_zoo" / "architectures" / "dm_wide_resnet.py"
    if not path.is_file():
        return None
    mod_spec = importlib.util.spec_from_file_location("_rb_dm_wide_resnet", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.DMWideResNet, mod.Swish


@pytest.mark.parametrize("name,depth,width", [("wrn28_10_silu", 28, 10), ("wrn34_20_silu", 34, 20),
                                              ("wrn70_16_silu", 70, 16)])
def test_silu_wrns_have_robustbenchs_state_dict_keys_and_shapes(name, depth, width):
    rb = _robustbench_dm_wide_resnet()
    if rb is None:
        pytest.skip("robustbench is not installed (pip install -e '.[robustbench]'): nothing to compare against")
    rb_cls, swish = rb
    with torch.device("meta"):
        ours = build_model(name, 10, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
        theirs = rb_cls(num_classes=10, depth=depth, width=width, activation_fn=swish)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    assert not any(isinstance(m, Normalize) for m in ours.modules())  # normalises itself, mean/std outside


def test_silu_wrn_matches_robustbenchs_forward_and_loads_a_dm_at_file(tmp_path):
    """Same weights -> same logits as RobustBench's class (padding, SiLU, shortcut); a DM-AT style file
    (``module.0.`` prefix, {'model_state_dict': ...}) loads through advrw's reader."""
    from advrw.core import checkpoints as ckpt_io

    torch.manual_seed(0)
    ours = build_model("wrn28_10_silu", 10, mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616)).eval()
    assert isinstance(ours.layer[0].block[0].relu_0, nn.SiLU) and ours.batchnorm.momentum == 0.01
    torch.save({"model_state_dict": {f"module.0.{k}": v for k, v in ours.state_dict().items()}}, tmp_path / "dm.pt")
    twin = build_model("wrn28_10_silu", 10, mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616)).eval()
    ckpt_io.load_model_state(twin, ckpt_io.model_state(ckpt_io.read(tmp_path / "dm.pt")), "dm.pt", "wrn28_10_silu", 10)
    x = torch.rand(2, 3, 32, 32)
    x[0, :, :4] = 0.0
    x[1, :, -4:] = 1.0  # pixels at the ends of the range
    with torch.no_grad():
        torch.testing.assert_close(twin(x), ours(x))
    rb = _robustbench_dm_wide_resnet()
    if rb is None:
        pytest.skip("robustbench is not installed: the forward comparison needs its DMWideResNet")
    rb_cls, swish = rb
    theirs = rb_cls(num_classes=10, depth=28, width=10, activation_fn=swish).eval()
    theirs.load_state_dict(ours.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


def test_activation_is_a_model_config_value(cfg_train):
    from advrw.config.validation import validate_train

    relu = build_model("wrn28_10_silu", 10, activation="relu")
    assert isinstance(relu.layer[0].block[0].relu_0, nn.ReLU)
    assert build_model("resnet18", 10, bn_momentum=0.01).bn1.momentum == 0.01
    validate_train(cfg_train("model=wrn28_10_silu", "model.activation=relu"))
    with pytest.raises(AdvrwError, match="model.activation=silu is not a setting of model=resnet18"):
        validate_train(cfg_train("model=resnet18", "+model.activation=silu"))
    with pytest.raises(AdvrwError, match="model.activation='gelu' is unknown"):
        validate_train(cfg_train("model=wrn28_10_silu", "model.activation=gelu"))
    with pytest.raises(AdvrwError, match=r"model.bn_momentum=0 is invalid"):
        validate_train(cfg_train("model=wrn28_10_silu", "model.bn_momentum=0"))
