"""Scratch CNNs (basenet, basenet-plus) and the mlp-bn head: shapes, groups, errors, learning."""

import time

import numpy as np
import pytest
import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.models.heads import HEAD_HELP, build_head, parse_head
from transferlab.models.network import Network
from transferlab.models.scratch import SCRATCH_MODELS, create_scratch, default_head


@pytest.mark.parametrize("name, size, features", [
    ("basenet", 32, 64 * 8 * 8),
    ("basenet-plus", 32, 128 * 4 * 4),
    ("basenet-plus", 64, 128 * 8 * 8),
    ("basenet", 64, 64 * 16 * 16),
])
def test_features_shape(name, size, features):
    torch.manual_seed(0)
    model = create_scratch(name, size).eval()
    assert model.num_features == features
    with torch.no_grad():
        out = model(torch.randn(3, 3, size, size))
    assert out.shape == (3, features)
    assert torch.isfinite(out).all()


def test_is_a_named_chain_with_timm_metadata():
    for name, blocks in (("basenet", 2), ("basenet-plus", 3)):
        model = create_scratch(name, 48 if name == "basenet" else 32)
        assert isinstance(model, nn.Sequential)
        children = [n for n, _ in model.named_children()]
        assert children == [f"block{i}" for i in range(1, blocks + 1)] + ["flatten"]
        cfg = model.pretrained_cfg
        assert cfg["input_size"] == (3, 48, 48) if name == "basenet" else (3, 32, 32)
        assert cfg["mean"] == (0.5,) * 3 and cfg["std"] == (0.5,) * 3
        assert cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bilinear"
        assert cfg["classifier"] is None


def test_timm_resolves_its_preprocessing():
    import timm

    from transferlab.models.preprocess import Preprocess

    cfg = timm.data.resolve_model_data_config(create_scratch("basenet-plus", 32))
    pre = Preprocess.from_timm_config(cfg)
    assert pre.input_size == 32 and pre.mean == (0.5,) * 3 and pre.std == (0.5,) * 3


def test_parameter_counts():
    counts = {n: sum(p.numel() for p in create_scratch(n).parameters()) for n in SCRATCH_MODELS}
    # conv 5x5 3->32 and 32->64 with biases
    assert counts["basenet"] == (3 * 32 * 25 + 32) + (32 * 64 * 25 + 64)
    assert 200_000 < counts["basenet-plus"] < 400_000
    # The input size changes the feature width, not the convolutions.
    assert sum(p.numel() for p in create_scratch("basenet", 64).parameters()) == counts["basenet"]


@pytest.mark.parametrize("name, blocks", [("basenet", 2), ("basenet-plus", 3)])
def test_one_parameter_group_per_block(name, blocks):
    from timm.models import group_parameters

    model = create_scratch(name)
    for coarse in (True, False):
        groups = group_parameters(model, model.group_matcher(coarse))
        assert len(groups) == blocks
        for i, names in enumerate(groups.values(), start=1):
            assert names and all(n.startswith(f"block{i}.") for n in names)
        grouped = sorted(n for names in groups.values() for n in names)
        assert grouped == sorted(n for n, _ in model.named_parameters())


def test_initialisation():
    torch.manual_seed(0)
    model = create_scratch("basenet-plus")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        if isinstance(m, nn.Conv2d):
            assert m.bias is None or torch.all(m.bias == 0)
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            assert m.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.25)
    basenet = create_scratch("basenet")
    assert torch.all(basenet.block1.conv.bias == 0)


def test_same_seed_same_network():
    torch.manual_seed(3)
    a = create_scratch("basenet")
    torch.manual_seed(3)
    b = create_scratch("basenet")
    torch.manual_seed(4)
    c = create_scratch("basenet")
    assert torch.equal(a.block2.conv.weight, b.block2.conv.weight)
    assert not torch.equal(a.block2.conv.weight, c.block2.conv.weight)


def test_default_heads():
    assert default_head("basenet") == "mlp:512"
    assert default_head("basenet-plus") == "mlp-bn:512,256"
    for name in SCRATCH_MODELS:
        parse_head(default_head(name))  # each is a valid head spec
    # basenet + its default head: two dense layers, as in the classic network
    head = build_head(default_head("basenet"), create_scratch("basenet").num_features, 10)
    assert sum(isinstance(m, nn.Linear) for m in head.modules()) == 2


def test_unknown_name():
    for call in (lambda: create_scratch("resnet18"), lambda: default_head("lenet")):
        with pytest.raises(TransferlabError) as err:
            call()
        assert all(n in str(err.value) for n in SCRATCH_MODELS)


@pytest.mark.parametrize("name, size", [
    ("basenet", 30), ("basenet", 4), ("basenet", 0), ("basenet-plus", 36),
    ("basenet-plus", 4), ("basenet", 32.0),
])
def test_bad_image_size(name, size):
    with pytest.raises(TransferlabError, match="--image-size"):
        create_scratch(name, size)


def test_sizes_that_fit():
    create_scratch("basenet", 8)
    create_scratch("basenet", 36)
    create_scratch("basenet-plus", 8)
    create_scratch("basenet-plus", np.int64(40))


# -- mlp-bn head ------------------------------------------------------------------------------

def test_parse_head_kinds():
    assert parse_head("linear") == ("linear", [])
    assert parse_head("mlp") == ("mlp", [512])
    assert parse_head("mlp:1024,512") == ("mlp", [1024, 512])
    assert parse_head("mlp-bn:512,256") == ("mlp-bn", [512, 256])
    assert parse_head(" MLP-BN:128 ") == ("mlp-bn", [128])
    assert parse_head("mlp-bn") == ("mlp-bn", [512])
    assert parse_head("mlp-bn:") == ("mlp-bn", [512])  # as 'mlp:' gives ('mlp', [512])
    for bad in ("mlp-bn:0", "mlp-bn:a,b", "mlp-bn:-4", "mlpbn:512", "linear:3", "bn"):
        with pytest.raises(TransferlabError):
            parse_head(bad)
    assert "mlp-bn" in HEAD_HELP


def test_build_mlp_bn_head():
    torch.manual_seed(0)
    head = build_head("mlp-bn:64,32", 100, 7, dropout=0.3)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout,
                     nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear]
    assert [m.num_features for m in head if isinstance(m, nn.BatchNorm1d)] == [64, 32]
    assert head[-1].in_features == 32 and head[-1].out_features == 7
    head.train()
    assert head(torch.randn(5, 100)).shape == (5, 7)
    head.eval()
    assert head(torch.randn(1, 100)).shape == (1, 7)
    # Without dropout there are no Dropout layers, as for the plain mlp head.
    assert not any(isinstance(m, nn.Dropout) for m in build_head("mlp-bn:16", 8, 2))
    assert not any(isinstance(m, nn.BatchNorm1d) for m in build_head("mlp:16", 8, 2))


def test_option_parsing_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from transferlab.models.heads import parse_head; "
            "parse_head('mlp-bn:512,256'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- it learns --------------------------------------------------------------------------------

def quadrant_images(n: int, size: int, rng: np.random.Generator):
    """uint8 NCHW images of noise with one bright square; the label is the square's quadrant."""
    labels = rng.integers(0, 4, n)
    images = rng.normal(90, 35, (n, 3, size, size))
    half = size // 2
    for img, label in zip(images, labels):
        side = rng.integers(5, 11)
        top = (label // 2) * half + rng.integers(0, half - side + 1)
        left = (label % 2) * half + rng.integers(0, half - side + 1)
        img[:, top:top + side, left:left + side] += rng.uniform(100, 150)
    return np.clip(images, 0, 255).astype(np.float32), labels


@pytest.mark.slow
def test_basenet_learns_a_synthetic_task():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = quadrant_images(1024, 32, rng)
    x_test, y_test = quadrant_images(512, 32, rng)
    x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
    backbone = create_scratch("basenet", 32)
    head = build_head(default_head("basenet"), backbone.num_features, 4)
    cfg = backbone.pretrained_cfg
    net = Network(backbone, head, cfg["mean"], cfg["std"])
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    start = time.perf_counter()
    net.train()
    steps, batch = 150, 16
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(y_train), batch))
        loss = loss_fn(net(x_train[idx]), y_train[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()
    with torch.no_grad():
        predicted = net(torch.from_numpy(x_test)).argmax(1).numpy()
    accuracy = float((predicted == y_test).mean())
    elapsed = time.perf_counter() - start
    print(f"basenet synthetic accuracy {accuracy:.3f} in {elapsed:.1f} s")
    assert accuracy > 0.9
