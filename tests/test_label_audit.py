"""Suspected label errors: images put under the wrong class are ranked first with the class they
belong to."""

import csv
import json
import shutil

import numpy as np
import pytest

import transferlab
from transferlab.audit.labels import check_features, find_label_issues
from transferlab.cli import main

CLASSES = ("red", "green", "blue")


def _blobs(per_class=40, classes=3, dims=16, seed=0):
    """Well-separated Gaussian blobs: features whose true class is never in doubt."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, (classes, dims))
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + rng.normal(0, 1, (len(labels), dims)), labels


def test_flipped_labels_of_well_separated_blobs_are_ranked_first_with_their_true_class():
    x, truth = _blobs()
    given = truth.copy()
    flipped = {3: 1, 47: 2, 90: 0, 101: 0}  # index -> the wrong label it is given
    for i, wrong in flipped.items():
        given[i] = wrong
    names = ["a", "b", "c"]
    result = check_features([x], given, names, [f"img{i}.png" for i in range(len(given))])
    assert {issue.index for issue in result.issues} == set(flipped)  # those, and nothing else
    for issue in result.issues:
        assert issue.path == f"img{issue.index}.png"
        assert issue.given == names[flipped[issue.index]] and issue.suggested == names[truth[issue.index]]
        assert issue.self_confidence < 0.5 < issue.suggested_probability
    confidences = [issue.self_confidence for issue in result.issues]
    assert confidences == sorted(confidences)  # most suspect first
    # The confident joint holds the flips off its diagonal, calibrated to the label counts.
    joint = result.confident_joint
    assert joint.sum() == pytest.approx(len(given)) and np.trace(joint) == pytest.approx(len(given) - 4, abs=1)
    assert result.noise_rate["a"] == pytest.approx(2 / 42, abs=0.03)
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["flagged"] == 4 and [i["index"] for i in as_dict["issues"]] == [i.index for i in result.issues]
    # Pruning by noise rate (the paper's other way of choosing) finds the same four.
    proba = np.zeros((len(given), 3))
    proba[np.arange(len(given)), truth] = 0.9
    proba[proba == 0] = 0.05
    assert {i.index for i in find_label_issues(proba, given, method="prune_by_noise_rate").issues} == set(flipped)


def test_clean_labels_and_labels_the_model_agrees_with_are_never_flagged():
    x, labels = _blobs(seed=1)
    assert check_features([x, x[:, ::-1]], labels, ["a", "b", "c"], [str(i) for i in range(len(labels))]).issues == []
    # Class w holds two errors by its confident joint, and its two least confident images are
    # 2 (x, 95%) and 1, which it is unsure of (28%) but which it still finds most probable: only
    # 2 is flagged.
    proba = np.array([[.9, .04, .03, .03], [.28, .24, .24, .24], [.02, .95, .02, .01], [.3, .6, .05, .05],
                      [.05, .9, .03, .02], [.02, .94, .02, .02], [.03, .03, .9, .04], [.02, .02, .94, .02],
                      [.03, .03, .04, .9], [.02, .02, .02, .94]])
    found = find_label_issues(proba, np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3]), ["w", "x", "y", "z"])
    assert found.confident_joint[0].tolist() == [2, 2, 0, 0]
    assert [(i.index, i.given, i.suggested) for i in found.issues] == [(2, "w", "x")]
    assert check_features([np.eye(3)], np.array([0, 1, 2]), ["a", "b", "c"], ["p", "q", "r"]) is None  # 1 a class


# ---------------------------------------------------------------------------- images, end to end

@pytest.fixture(scope="module")
def misfiled(tmp_path_factory, colour_folder):
    """Red, green and blue images in train/ and test/, one red image filed under green and one
    blue image under red in train/."""
    root = tmp_path_factory.mktemp("misfiled") / "colours"
    colour_folder(root / "train", CLASSES, 10, size=32)
    colour_folder(root / "test", CLASSES, 3, size=32, noise=31)
    shutil.move(root / "train" / "red" / "0.png", root / "train" / "green" / "r0.png")
    shutil.move(root / "train" / "blue" / "1.png", root / "train" / "red" / "b1.png")
    return root


@pytest.mark.slow
def test_audit_labels_ranks_the_misfiled_images_first_with_the_class_they_belong_to(misfiled, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", str(misfiled), "--labels", "--no-near", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "suspected label errors: 2 (" in text and "train/green/r0.png green -> red" in text
    result = json.loads((out / "audit.json").read_text())["labels"]
    top = [(i["path"], i["given"], i["suggested"]) for i in result["issues"][:2]]
    assert sorted(top) == sorted([(str(misfiled / "train" / "green" / "r0.png"), "green", "red"),
                                  (str(misfiled / "train" / "red" / "b1.png"), "red", "blue")])
    with open(out / "label_issues.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "given", "suggested", "self_confidence", "action"]
    assert {r["path"] for r in rows[:2]} == {"train/green/r0.png", "train/red/b1.png"}
    page = (out / "audit.html").read_text()
    assert "Suspected label errors" in page and "suggested: red" in page
    # The same from Python: the result object.
    found = transferlab.api.audit(misfiled, near=False, labels=True, out=tmp_path / "again", progress=False)
    assert {i.suggested for i in found["label_issues"].issues[:2]} == {"red", "blue"}
