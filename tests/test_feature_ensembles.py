"""Feature ensembles (`--backbone a,b`) and mirror-averaged features (`--feature-views 2`): each
member's features cached on its own, and a run that saves, reloads, predicts, exports and
explains like any other."""


import numpy as np
import pytest
from PIL import Image
from run_checks import assert_reload_predict_and_export_agree

import transferlab
from transferlab import TransferlabError
from transferlab.explain.commands import explain
from transferlab.models.ensemble import FeatureEnsemble

PAIR = "tf_efficientnet_lite0,tf_efficientnet_lite1"


@pytest.fixture(scope="module")
def ensemble_run(small_set, tmp_path_factory):
    return transferlab.train(small_set, strategy="features", backbone=PAIR, image_size=96, out=tmp_path_factory.mktemp("runs"),
                             name="pair", progress=False)


def test_an_ensemble_concatenates_its_members_features(ensemble_run):
    clf = ensemble_run.classifier
    assert isinstance(clf.network_.backbone, FeatureEnsemble)
    assert clf.network_.backbone.dims == [1280, 1280] and clf.network_.head[-1].in_features == 2560
    assert clf.weights_.source == "packaged" and len(clf.weights_.members) == 2
    assert ensemble_run.metrics["features"]["computed"] == 2 * 16  # train + val images, per member


def test_each_member_is_cached_on_its_own(small_set, ensemble_run, tmp_path):
    """A single run of a member at the same preprocessing computes nothing."""
    single = transferlab.train(small_set, strategy="features", backbone="tf_efficientnet_lite1", image_size=96, out=tmp_path,
                               progress=False)
    assert single.metrics["features"] == {"computed": 0, "cached": 16}


@pytest.mark.slow
def test_an_ensemble_run_reloads_predicts_and_exports_the_same_probabilities(ensemble_run, small_set):
    assert_reload_predict_and_export_agree(ensemble_run, sorted(small_set.glob("*/*.jpg"))[:4])


def test_grad_cam_explains_an_ensemble_in_its_first_member(ensemble_run, small_set, tmp_path):
    result = explain(ensemble_run.path, [str(sorted(small_set.glob("ants/*.jpg"))[0])], out=tmp_path)
    assert result["layer"].startswith("blocks.") and len(result["images"]) == 1


@pytest.mark.slow
def test_mirror_averaged_features_give_the_same_answer_for_a_mirrored_image(small_set, tmp_path):
    run = transferlab.train(small_set, strategy="features", feature_views=2, image_size=112, resize="crop", out=tmp_path, progress=False)
    source = sorted(small_set.glob("bees/*.jpg"))[0]
    mirrored = tmp_path / "mirrored.png"
    pre = run.classifier.preprocess_
    # A square image at the resize size, with an even margin: nothing is resampled and the centre
    # crop is symmetric, so the crop of the mirror is the mirror of the crop, pixel for pixel.
    side = pre.resize_size
    assert (side - pre.input_size) % 2 == 0, pre
    Image.open(source).convert("RGB").resize((side, side)).save(tmp_path / "square.png")
    Image.open(tmp_path / "square.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    clf = run.classifier
    clf.config_.feature_cache = False
    upright, flipped = clf.predict_proba([tmp_path / "square.png", mirrored])
    np.testing.assert_allclose(upright, flipped, atol=1e-6)


@pytest.mark.parametrize("options, option", [
    (dict(backbone=PAIR, strategy="finetune"), "--backbone"),
    (dict(feature_views=3), "--feature-views"),
    (dict(feature_views=2, strategy="frozen"), "--feature-views"),
    (dict(backbone=PAIR, weights="weights.safetensors"), "--weights"),
])
def test_options_an_ensemble_cannot_take_fail_in_one_line(small_set, tmp_path, options, option):
    with pytest.raises(TransferlabError) as err:
        transferlab.train(small_set, out=tmp_path, progress=False, **{"strategy": "features", **options})
    assert str(err.value).startswith(option) and "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())
