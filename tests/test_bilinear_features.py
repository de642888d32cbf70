"""`--resize squash` (the whole image resized to the input square) and `features --pooling
bilinear` (cached second-order pooling of a frozen tap, then logistic regression)."""


import numpy as np
import pytest
import torch
from PIL import Image
from run_checks import assert_reload_predict_and_export_agree

import transferlab
from transferlab import TransferlabError
from transferlab.data.decode import decode
from transferlab.explain.commands import explain
from transferlab.features.extract import extractor_key
from transferlab.models.bilinear import BilinearFeatures
from transferlab.models.preprocess import Preprocess


def wide_image(tmp_path):
    """300 x 100: red on the left third, green in the middle, blue on the right third."""
    pixels = np.zeros((100, 300, 3), np.uint8)
    pixels[:, :100, 0] = pixels[:, 100:200, 1] = pixels[:, 200:, 2] = 255
    path = tmp_path / "wide.png"
    Image.fromarray(pixels).save(path)
    return path


def test_squash_keeps_the_ends_of_a_wide_image_that_the_centre_crop_cuts_off(tmp_path):
    path = wide_image(tmp_path)
    stats = dict(input_size=64, crop_pct=0.875, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
    views = {}
    for resize in ("squash", "crop"):
        pre = Preprocess(**stats, resize=resize)
        views[resize] = pre.center_crop(decode(path, pre.resize_size, pre.interpolation))
        assert views[resize].shape == (64, 64, 3)
    squash, crop = views["squash"], views["crop"]
    assert squash[32, 2, 0] > 200 and squash[32, 61, 2] > 200  # red and blue ends kept
    assert crop[32, 2, 1] > 200 and crop[32, 61, 1] > 200      # only the green middle is left


def test_decode_resizes_to_an_exact_pair_and_refuses_a_bad_one(tmp_path):
    path = wide_image(tmp_path)
    assert decode(path, (40, 30)).shape == (30, 40, 3)
    with pytest.raises(ValueError, match="width, height"):
        decode(path, (40, 0))


def test_preprocessing_saved_before_the_option_existed_still_crops():
    pre = Preprocess(224, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3, "squash")
    assert Preprocess.from_dict(pre.to_dict()) == pre
    old = {k: v for k, v in pre.to_dict().items() if k != "resize"}
    assert Preprocess.from_dict(old).resize == "crop" and Preprocess.from_dict(old).resize_size == 256


def test_feature_caches_are_keyed_by_resize_and_pooling():
    crop = Preprocess(224, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3, "crop")
    squash = Preprocess(224, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3, "squash")
    keys = {extractor_key("b", "w", crop), extractor_key("b", "w", squash),
            extractor_key("b", "w", squash, pooling="bilinear:blocks.5"),
            extractor_key("b", "w", squash, pooling="bilinear:blocks.6")}
    assert len(keys) == 4


def test_the_bilinear_vector_is_the_normalised_upper_triangle_of_the_mean_outer_product():
    class OneMap(torch.nn.Module):
        def forward(self, x):
            return (x,)

    pool = BilinearFeatures(OneMap(), 3, "x")
    x = torch.randn(2, 3, 4, 5)
    got = pool(x)
    assert got.shape == (2, 6) and pool.num_features == 6
    for b in range(2):
        m = x[b].flatten(1)
        gram = m @ m.T / m.shape[1]
        upper = gram[torch.triu_indices(3, 3)[0], torch.triu_indices(3, 3)[1]]
        expected = torch.sign(upper) * torch.sqrt(upper.abs() + 1e-6)
        torch.testing.assert_close(got[b], expected / expected.norm(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def bilinear_run(small_set, tmp_path_factory):
    return transferlab.train(small_set, strategy="features", pooling="bilinear", resize="squash", image_size=96, out=tmp_path_factory.mktemp("runs"),
                             name="bilinear-features", progress=False)


@pytest.mark.slow
def test_a_bilinear_features_run_taps_the_block_stage_before_the_last(bilinear_run):
    clf = bilinear_run.classifier
    assert isinstance(clf.network_.backbone, BilinearFeatures)
    assert clf.network_.backbone.pooling == "bilinear:blocks.5"
    assert clf.network_.head[-1].in_features == 192 * 193 // 2
    assert clf.preprocess_.resize == "squash"


@pytest.mark.slow
def test_a_bilinear_features_run_reloads_predicts_and_exports_the_same_probabilities(bilinear_run, small_set):
    assert_reload_predict_and_export_agree(bilinear_run, sorted(small_set.glob("*/*.jpg"))[:4])


@pytest.mark.slow
def test_grad_cam_explains_a_bilinear_features_run(bilinear_run, small_set, tmp_path):
    result = explain(bilinear_run.path, [str(sorted(small_set.glob("ants/*.jpg"))[0])], out=tmp_path)
    assert len(result["images"]) == 1


def test_bilinear_pooling_is_refused_outside_the_features_strategy(small_set, tmp_path):
    with pytest.raises(TransferlabError, match="--pooling bilinear is for --strategy features"):
        transferlab.train(small_set, strategy="finetune", pooling="bilinear", out=tmp_path, progress=False)
