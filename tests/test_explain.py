"""Explainers: Grad-CAM finds the evidence, filter visualisation excites its channel, grids tile."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import transferlab
from transferlab.data.decode import decode
from transferlab.errors import TransferlabError
from transferlab.explain import activation_maps, filter_images, gradcam, grid, overlay, save_png
from transferlab.models.backbones import create_backbone

SIZE = 64
MARK = 12


def _picture(rng: np.random.Generator, marked: bool) -> np.ndarray:
    """Gray noise; a marked picture also has a red square somewhere in its top-left quadrant."""
    pixels = np.clip(128 + rng.normal(0, 20, (SIZE, SIZE, 3)), 0, 255)
    if marked:
        y, x = rng.integers(2, SIZE // 2 - MARK - 1, 2)
        pixels[y:y + MARK, x:x + MARK] = (250, 40, 40)
    return pixels.astype(np.uint8)


def _write_set(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for cls in ("mark", "plain"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(_picture(rng, cls == "mark")).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def marked_model(tmp_path_factory):
    """A classifier whose only evidence lies in the top-left quadrant. Packaged ImageNet weights,
    because a network trained from scratch in seconds decides from diffuse colour statistics
    (its Grad-CAM mass in the quadrant was ~0.4 when measured) rather than from the square."""
    root = tmp_path_factory.mktemp("explain")
    data = _write_set(root / "data", per_class=40, seed=0)
    run = transferlab.train(str(data), strategy="finetune", backbone="tf_efficientnet_lite0", weights="auto",
                            image_size=SIZE, head_epochs=0, epochs=6, unfreeze="all", lr=3e-3,
                            augment="none", batch_size=16, out=str(root / "runs"), progress=False)
    clf = transferlab.ImageClassifier.load(run.path)
    return clf, root, run.path


def _as_predicted(clf, pixels: np.ndarray, path: Path) -> np.ndarray:
    """The network's input for a picture, by the same decode and centre crop as prediction."""
    Image.fromarray(pixels).save(path)
    pre = clf.preprocess_
    return pre.center_crop(decode(path, pre.resize_size, pre.interpolation))


def test_gradcam_mass_lies_in_the_marked_quadrant(marked_model):
    clf, root, _ = marked_model
    rng = np.random.default_rng(123)
    masses = []
    for i in range(6):
        view = _as_predicted(clf, _picture(rng, True), root / f"probe{i}.png")
        heat, cls = gradcam(clf.network_, view, layer="blocks.4")  # 1/16: 4x4 cells at 64 px
        assert clf.classes_[cls] == "mark"
        half = heat.shape[0] // 2
        masses.append(heat[:half, :half].sum() / heat.sum())
    # Measured 0.80..0.91 per image (mean 0.87) on an earlier run of this set-up.
    assert min(masses) > 0.6 and np.mean(masses) > 0.7, masses


def test_gradcam_heatmap_shape_range_and_target(marked_model):
    clf, root, _ = marked_model
    view = _as_predicted(clf, _picture(np.random.default_rng(5), False), root / "plain.png")
    heat, cls = gradcam(clf.network_, view)
    assert heat.shape == (SIZE, SIZE) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert clf.classes_[cls] == "plain"
    _, forced = gradcam(clf.network_, view, layer="stage-2", target=0)
    assert forced == 0
    assert all(not p.requires_grad or p.grad is None for p in clf.network_.parameters())
    assert not clf.network_.training
    shown = overlay(view, heat)
    assert shown.shape == (SIZE, SIZE, 3) and shown.dtype == np.uint8


def test_unknown_layer_suggests_names(marked_model):
    clf, _, _ = marked_model
    with pytest.raises(TransferlabError, match="did you mean.*blocks"):
        gradcam(clf.network_, np.zeros((SIZE, SIZE, 3), np.uint8), layer="blocks.44")


@pytest.fixture(scope="module")
def lite0():
    backbone, _, info = create_backbone("tf_efficientnet_lite0", "auto")
    assert info.source == "packaged"
    return backbone


def test_filter_images_excite_their_channels(lite0):
    # A ReLU6 layer: starting activations are >= 0, so the gain is a plain ratio.
    images, gains = filter_images(lite0, "blocks.3.0.bn1", channels=6, size=64, steps=45)
    assert images.shape == (6, 64, 64, 3) and images.dtype == np.uint8
    # Measured 5.3, 25, 7.8, 6.0, 10, 137 (capped: ReLU6 stops at 6).
    assert np.median(gains) > 6 and gains.min() > 4, gains


def test_filter_images_on_a_signed_layer(lite0):
    # blocks.3 ends without an activation: its start can be negative, so compare levels instead.
    channels = [0, 3, 7]
    images, _ = filter_images(lite0, "blocks.3", channels=channels, size=64, steps=45, seed=1)
    noise = np.clip(128 + np.random.default_rng(0).normal(0, 8, (64, 64, 3)), 0, 255).astype(np.uint8)
    start = activation_maps(lite0, noise, "blocks.3")[channels].mean(axis=(1, 2))
    final = np.array([activation_maps(lite0, im, "blocks.3")[c].mean() for im, c in zip(images, channels)])
    # Measured starts of -0.5..-2.4 and finals of 30..45.
    assert (final > start + 15).all(), (start, final)


def test_activation_maps_and_their_grid(lite0, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    maps = activation_maps(lite0, pixels, "blocks.3")
    assert maps.shape == (lite0.get_submodule("blocks.3")[-1].conv_pwl.out_channels, 6, 6)
    tiles = grid(list(maps), columns=8, pad=2)
    rows = -(-len(maps) // 8)
    assert tiles.shape == (rows * 6 + (rows + 1) * 2, 8 * 6 + 9 * 2, 3) and tiles.dtype == np.uint8
    out = save_png(tiles, tmp_path / "maps" / "grid.png")
    assert np.array_equal(np.asarray(Image.open(out)), tiles)
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]


def test_gradcam_explains_the_class_a_binary_features_head_keeps_at_zero(tmp_path):
    # A two-class head may keep class 0's logit at 0 (scikit-learn's binary model does; softmax
    # only sees the difference), so that logit has no gradient: explaining 'mark' (class 0) by
    # its raw logit gave an all-zero map before the margin was used. The head is put in that form.
    data = _write_set(tmp_path / "data", per_class=30, seed=2)
    run = transferlab.train(str(data), strategy="features", image_size=SIZE, out=str(tmp_path / "runs"),
                            progress=False)
    clf = transferlab.ImageClassifier.load(run.path)
    linear = clf.network_.head[-1]
    with torch.no_grad():
        linear.weight[1] -= linear.weight[0].clone()
        linear.bias[1] -= linear.bias[0].clone()
        linear.weight[0], linear.bias[0] = 0, 0
    assert clf.classes_[0] == "mark" and not linear.weight[0].any()
    rng = np.random.default_rng(7)
    masses = []
    for i in range(4):
        view = _as_predicted(clf, _picture(rng, True), tmp_path / f"probe{i}.png")
        heat, cls = gradcam(clf.network_, view, target=0)
        assert heat.max() == pytest.approx(1.0)
        masses.append(heat[:SIZE // 2, :SIZE // 2].sum() / heat.sum())
    # Measured 0.51, 0.83, 0.84, 0.95 on a frozen backbone with a linear classifier (chance: 0.25).
    assert np.mean(masses) > 0.6, masses


@pytest.mark.slow
def test_default_gradcam_layer_keeps_enough_cells_at_each_input_size():
    import timm

    from transferlab.explain.gradcam import default_layer

    lite0 = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    assert default_layer(lite0, 224) == "bn2"         # the last stage, 7x7
    assert default_layer(lite0, 96) == "blocks.4"     # 6x6 at 1/16 rather than 3x3
    assert default_layer(lite0, 64) == "blocks.4"     # 4x4
    vgg = timm.create_model("vgg16", pretrained=False, num_classes=0)
    assert default_layer(vgg, 224) == "features.28"   # block5_conv3, 14x14: VGG's last stage is its 1x1 MLP
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert default_layer(resnet, 224) == "layer4"


def test_gradcam_on_a_bilinear_network_explains_its_tap():
    import timm

    from transferlab.models.bilinear import BilinearHead
    from transferlab.models.network import Network
    from transferlab.models.tapped import Tapped

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    tapped = Tapped(net, ["blocks.5"])
    network = Network(tapped, BilinearHead(tapped.channels(SIZE), 3), (0.5,) * 3, (0.5,) * 3).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    heat, cls = gradcam(network, pixels)
    assert heat.shape == (SIZE, SIZE) and heat.max() == pytest.approx(1.0) and 0 <= cls < 3
    with pytest.raises(TransferlabError, match="does not run"):
        gradcam(network, pixels, layer="bn2")  # above the tap: cut away


def _cli(*args):
    from transferlab.cli import main

    return main(["-q", *map(str, args)])


def test_explain_command_writes_an_overlay_per_image_and_a_grid(marked_model, tmp_path, capsys):
    clf, _, run = marked_model
    rng = np.random.default_rng(11)
    for folder in ("a", "b"):  # the same file name in two folders must not overwrite
        (tmp_path / "in" / folder).mkdir(parents=True)
        Image.fromarray(_picture(rng, True)).save(tmp_path / "in" / folder / "x.png")
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not a jpeg")
    assert _cli("explain", run, tmp_path / "in", "--class", "plain", "--out", tmp_path / "out") == 0
    out, err = capsys.readouterr()
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["b-x-gradcam.png", "gradcam-grid.png", "x-gradcam.png"]
    assert out.count(" plain ") == 2 and "broken.jpg" in err
    one = np.asarray(Image.open(tmp_path / "out" / "x-gradcam.png"))
    assert one.shape == (SIZE, SIZE, 3)
    assert np.asarray(Image.open(tmp_path / "out" / "gradcam-grid.png")).shape == (SIZE + 4, 2 * SIZE + 6, 3)


def test_explain_command_refuses_unknown_classes_and_layers(marked_model, tmp_path, capsys):
    _, _, run = marked_model
    image = tmp_path / "x.png"
    Image.fromarray(_picture(np.random.default_rng(0), True)).save(image)
    assert _cli("explain", run, image, "--class", "marks", "--out", tmp_path / "out") == 2
    assert "did you mean mark" in capsys.readouterr().err
    assert _cli("explain", run, image, "--layer", "block.4", "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "--layer 'block.4'" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_filters_and_activations_commands_write_grids(marked_model, tmp_path, capsys):
    _, _, run = marked_model
    target = tmp_path / "filters.png"
    assert _cli("filters", "tf_efficientnet_lite0", "--layer", "blocks.2", "--count", "4", "--size", "48",
                "--steps", "6", "--out", target) == 0
    assert "4 channels of blocks.2" in capsys.readouterr().out
    assert np.asarray(Image.open(target)).shape == (2 * 48 + 6, 2 * 48 + 6, 3)
    image = tmp_path / "x.png"
    Image.fromarray(_picture(np.random.default_rng(0), True)).save(image)
    assert _cli("activations", run, image, "--layer", "blocks.4") == 0
    out = capsys.readouterr().out
    assert "112 maps of 4x4 at blocks.4" in out
    png = Path(run) / "activations-x-blocks.4.png"
    side = 11 * 32 + 12 * 2  # 112 channels: 11 columns of 4x4 maps enlarged to 32 px
    assert np.asarray(Image.open(png)).shape == (side, side, 3)
    assert _cli("activations", run, tmp_path / "missing.png", "--layer", "blocks.4") == 2
    assert "missing.png' does not exist" in capsys.readouterr().err
    assert _cli("filters", "tf_efficientnet_lite9", "--layer", "blocks.4") == 2
    assert "tf_efficientnet_lite0" in capsys.readouterr().err
