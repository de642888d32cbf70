"""Bilinear CNN heads: pooling maths, cutting the backbone at the tap, backbones of every family,
and the `bilinear` strategy end to end."""

import numpy as np
import pytest
import timm
import torch
from torch import nn

import transferlab
from transferlab.config import RunConfig
from transferlab.errors import TransferlabError
from transferlab.models.bilinear import BilinearHead, TensorSketch, bilinear_pool
from transferlab.models.tapped import Tapped
from transferlab.models.taps import resolve_layer
from transferlab.training.strategies import phases, resolve
from transferlab.models.factory import ModelSpec, build_model


def maps(*shape, seed=0):
    return torch.relu(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("channels, reduce, sketch, size", [
    ([16], None, None, 16 * 16),       # symmetric: C*C
    ([16, 8], None, None, 16 * 8),     # asymmetric: C1*C2
    ([16], 4, None, 4 * 4),            # 1x1 reduction first
    ([16, 8], None, 512, 512),         # Tensor Sketch: its own dimension
])
def test_pooled_size_and_unit_norm(channels, reduce, sketch, size):
    head = BilinearHead(channels, 3, reduce=reduce, sketch=sketch).eval()
    inputs = tuple(maps(2, c, 5, 5, seed=i) for i, c in enumerate(channels))
    z = head.pooled(inputs)
    assert z.shape == (2, size) and head.dim == size
    assert torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)
    assert head(inputs).shape == (2, 3)


def test_bilinear_pool_is_the_mean_outer_product_over_positions():
    a, b = maps(1, 3, 2, 2), maps(1, 4, 2, 2, seed=1)
    want = sum(torch.outer(a[0, :, i, j], b[0, :, i, j]) for i in range(2) for j in range(2)) / 4
    assert torch.allclose(bilinear_pool(a, b)[0], want.flatten(), atol=1e-6)


def test_maps_of_different_sizes_are_pooled_to_the_smaller():
    head = BilinearHead([6, 5], 2)
    assert head.pooled((maps(2, 6, 14, 14), maps(2, 5, 7, 7))).shape == (2, 30)


def test_tensor_sketch_inner_products_approximate_the_full_bilinear_ones():
    """Tensor Sketch is unbiased with variance about (|x|^2 |y|^2 + <x,y>^2) / d, so at d = 8192
    the error of a normalised inner product stays within 4 / sqrt(d) ~ 0.044 for every pair."""
    d, c = 8192, 64
    sketch = TensorSketch(c, c, d, seed=3)
    x = maps(6, c, 4, 4, seed=5) + 0.1
    full = bilinear_pool(x, x)
    compact = sketch(x, x)
    norms = full.norm(dim=1)
    exact = (full @ full.T) / torch.outer(norms, norms)
    approx = (compact @ compact.T) / torch.outer(norms, norms)
    assert (approx - exact).abs().max() < 4 / d ** 0.5


def test_pooling_runs_in_float32_under_bf16_autocast():
    head = BilinearHead([32], 2)
    x = (maps(2, 32, 7, 7) * 1e-3).bfloat16()  # small values, whose squares bf16 would round badly
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = head.pooled(x)
    assert z.dtype == torch.float32
    assert torch.allclose(z, head.pooled(x.float()), rtol=1e-6, atol=1e-7)


def _random(name):
    model = timm.create_model(name, pretrained=False, num_classes=0)
    return model.eval()


def test_the_backbone_is_cut_at_the_tap_and_gradients_reach_it():
    net = _random("tf_efficientnet_lite0")
    above = [net.blocks[6], net.conv_head, net.bn2]
    ran = []
    for m in above:
        m.register_forward_hook(lambda *a: ran.append(1))
    tapped = Tapped(net, ["blocks.5"])
    head = BilinearHead(tapped.channels(64), 2)
    ran.clear()  # building checks the cut against a whole forward
    out = head(tapped(torch.rand(2, 3, 64, 64)))
    out.sum().backward()
    assert ran == []  # nothing above the tap runs...
    names = [n for n, _ in tapped.named_parameters()]
    assert not any(n.startswith(("net.blocks.6", "net.conv_head", "net.bn2")) for n in names)  # ...or is kept
    assert net.blocks[5][-1].conv_pwl.weight.grad is not None  # the tapped layer gets gradients


@pytest.mark.parametrize("name, layer, channels, stride", [
    pytest.param("vgg16", "block5_conv3", 512, 16, marks=pytest.mark.slow),
    pytest.param("vgg16", "block4_pool", 512, 16, marks=pytest.mark.slow),
    ("resnet50", "conv5_block3_out", 2048, 32),
    ("resnet50", "conv4_block6_out", 1024, 16),
    ("resnetv2_50", "conv5_block3_out", 2048, 32),
    ("resnetv2_50", "conv4_block6_out", 1024, 16),  # Keras's V2 has this at 1/32: stride placement
    ("tf_efficientnet_lite0", "stage-2", 192, 32),
    ("tf_efficientnet_lite0", "stage-1", 1280, 32),
])
def test_layer_names_resolve_to_modules_with_the_expected_output(name, layer, channels, stride):
    net = _random(name)
    tapped = Tapped(net, [resolve_layer(net, layer)])
    (out,) = tapped(torch.zeros(1, 3, 64, 64))
    assert out.shape[1:] == (channels, 64 // stride, 64 // stride)


def test_unknown_layers_get_suggestions_and_taps_inside_skip_blocks_are_refused():
    net = _random("resnet50")
    with pytest.raises(TransferlabError, match="did you mean.*conv5_block3_out"):
        resolve_layer(net, "conv5_block3_outt")
    with pytest.raises(TransferlabError, match="stage-1 .. stage-5"):
        resolve_layer(net, "stage-9")
    with pytest.raises(TransferlabError, match="inside 'layer4.2'.*skip connection"):
        Tapped(_random("resnet50"), ["layer4.2.conv2"])


@pytest.mark.parametrize("name", [pytest.param("vgg16", marks=pytest.mark.slow), "resnet50", "resnetv2_50",
                                  "mobilenetv2_100"])
def test_bilinear_network_trains_on_each_family_with_random_weights(name):
    cfg = resolve(RunConfig(strategy="bilinear", backbone=name, weights="none", image_size=64,
                            sketch_dim=1024 if name.startswith("res") else None))
    net, pre, _ = build_model(ModelSpec.from_options(cfg.to_dict(), 3))
    _forward_backward(net, cfg)


def test_bilinear_on_the_packaged_weights_with_two_layers_and_a_second_backbone():
    cfg = resolve(RunConfig(strategy="bilinear", layer="blocks.5,blocks.6", image_size=96,
                            branch_dropout="0.5"))
    net, _, info = build_model(ModelSpec.from_options(cfg.to_dict(), 2))
    assert info.source == "packaged" and net.head.dim == 192 * 320
    _forward_backward(net, cfg)
    cfg2 = resolve(RunConfig(strategy="bilinear", backbone2="mobilenetv2_050", weights2="none",
                             layer="stage-2,stage-1", image_size=64))
    net2, _, _ = build_model(ModelSpec.from_options(cfg2.to_dict(), 2))
    assert [m.shape[1] for m in net2.backbone(torch.zeros(1, 3, 64, 64))] == [192, 1280]
    _forward_backward(net2, cfg2)


def _forward_backward(net, cfg):
    phase = phases(cfg, net)[-1]
    trained = {n for names, _ in phase.groups for n in names}
    assert any(n.startswith("backbone.") for n in trained) and any(n.startswith("head.") for n in trained)
    for n, p in net.named_parameters():
        p.requires_grad = n in trained
    net.train()
    loss = nn.functional.cross_entropy(net(torch.randint(0, 255, (2, 3, cfg.image_size, cfg.image_size)).float()),
                                       torch.tensor([0, 1]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for n, p in net.named_parameters()
               if n in trained)


def test_bilinear_strategy_caches_below_the_tap_saves_and_reloads(colour_folder, tmp_path):
    data = colour_folder(tmp_path / "data", ("red", "green", "blue"), 10, 40)
    run = transferlab.train(data, strategy="bilinear", backbone="mobilenetv2_050", weights="none",
                            image_size=32, head_epochs=2, epochs=2, out=tmp_path / "runs", progress=False,
                            lr=0.01)
    assert run.metrics["fit"]["path"].startswith("cached prefix up to net.blocks.6")
    loaded = transferlab.ImageClassifier.load(run.path)
    images = transferlab.load_source(data).images
    assert np.allclose(loaded.predict_proba(images), run.classifier.predict_proba(images), atol=1e-6)
    assert run.score > 0.6


@pytest.mark.slow
def test_bilinear_learns_ants_and_bees(hymenoptera, tmp_path):
    run = transferlab.train(hymenoptera, strategy="bilinear", image_size=160, head_epochs=3, epochs=3,
                            out=tmp_path, progress=False)
    assert run.score >= 0.9, run.metrics
