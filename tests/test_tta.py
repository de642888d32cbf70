"""`--tta`: held-out scores and `evaluate` averaged over each image's test-time views, for crop
and squash runs, features runs included (their cached features are of the eval view alone)."""

import json

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

import transferlab
from transferlab.cli import main
from transferlab.data.decode import decode
from transferlab.inference.probabilities import tta_decode_size, tta_views
from transferlab.models.network import to_batch
from transferlab.models.preprocess import Preprocess

RGB = ("red", "green", "blue")
QUICK = {"backbone": "mobilenetv2_050", "weights": "none", "image_size": 32, "progress": False}


def _pre(resize: str) -> Preprocess:
    return Preprocess(32, 0.875, "bilinear", (0.5,) * 3, (0.5,) * 3, resize)


def test_crop_runs_average_ten_views_and_squash_runs_twelve():
    crop, squash = _pre("crop"), _pre("squash")
    assert tta_decode_size(crop) == crop.resize_size == 36
    pixels = np.random.default_rng(0).integers(0, 255, (39, 51, 3), dtype=np.uint8)  # odd margins: rounding matters
    views = tta_views(pixels, crop)
    assert len(views) == 10 and (views[0] == crop.center_crop(pixels)).all()
    assert tta_decode_size(squash) == (36, 36)  # enlarged, so its corner crops differ from its centre
    square = pixels[:36, :36]
    views = tta_views(square, squash)
    assert len(views) == 12 and all(v.shape == (32, 32, 3) for v in views)
    assert (views[1] == views[0][:, ::-1]).all() and not (views[2] == views[3]).all()


@pytest.fixture(scope="module")
def colours(colour_folder, tmp_path_factory):
    return colour_folder(tmp_path_factory.mktemp("tta") / "data", RGB, 12, 40, noise=60)


@pytest.mark.slow
@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_evaluate_with_tta_scores_the_mean_of_every_view(colours, tmp_path, resize):
    run = transferlab.train(colours, strategy="features", resize=resize, out=tmp_path / "runs", **QUICK)
    clf = transferlab.ImageClassifier.load(run.path)
    pre = clf.preprocess_
    files = sorted(colours.glob("*/*.png"))
    labels = np.array([list(clf.classes_).index(f.parent.name) for f in files])
    with torch.inference_mode():
        want = np.stack([torch.softmax(clf.network_(to_batch(tta_views(decode(str(f), tta_decode_size(pre),
                                                                               pre.interpolation), pre)).float()), 1)
                         .mean(0).numpy() for f in files])
    got = transferlab.evaluate(run.path, colours, progress=False, tta=True)
    plain = transferlab.evaluate(run.path, colours, progress=False)
    assert got["tta"] and not plain["tta"]
    assert got["log_loss"] == pytest.approx(skm.log_loss(labels, want, labels=[0, 1, 2]), abs=1e-5)
    assert got["log_loss"] != pytest.approx(plain["log_loss"], abs=1e-6)


def test_train_tta_scores_the_held_out_splits_with_it_and_says_so(colours, tmp_path, capsys):
    plain = transferlab.train(colours, strategy="features", out=tmp_path / "runs", **QUICK)
    tta = transferlab.train(colours, strategy="features", tta=True, out=tmp_path / "runs", **QUICK)
    assert tta.metrics["tta"] and not plain.metrics["tta"]
    assert tta.metrics["train"] == plain.metrics["train"]  # train is scored on its cached features
    assert tta.metrics["test"]["log_loss"] != pytest.approx(plain.metrics["test"]["log_loss"], abs=1e-6)
    assert "(test-time augmented)" in (tta.path / "report.html").read_text()
    out = tmp_path / "m.json"
    assert main(["-q", "evaluate", str(tta.path), str(colours), "--tta", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["tta"] is True and capsys.readouterr().out.startswith("accuracy")
