"""Explainers: Grad-CAM finds the evidence, filter visualisation excites its channel, grids tile."""

from pathlib import Path

import numpy as np
import pytest
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
    return clf, root


def _as_predicted(clf, pixels: np.ndarray, path: Path) -> np.ndarray:
    """The network's input for a picture, by the same decode and centre crop as prediction."""
    Image.fromarray(pixels).save(path)
    pre = clf.preprocess_
    return pre.center_crop(decode(path, pre.resize_size, pre.interpolation))


def test_gradcam_mass_lies_in_the_marked_quadrant(marked_model):
    clf, root = marked_model
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
    clf, root = marked_model
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
    clf, _ = marked_model
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
