"""Suspected label errors: images put under the wrong class are ranked first with the class they
belong to; `train --exclude` and `--relabel` take the audit's CSV (or a user's) back, change train
and val as it says and never test, and a bad file is one line before anything slow runs."""

import csv
import json
import logging
import shutil

import numpy as np
import pytest

import transferlab
from transferlab.audit.labels import check_features, find_label_issues
from transferlab.cli import main
from transferlab.config import RunConfig
from transferlab.data.sources import load_source
from transferlab.errors import TransferlabError
from transferlab.workflows.train import _splits, edited_splits

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


@pytest.mark.slow
def test_train_warns_in_one_line_when_many_train_labels_look_wrong(misfiled, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        run = transferlab.train(misfiled, strategy="features", out=tmp_path / "runs", progress=False)
    [line] = [r.getMessage() for r in caplog.records if "look mislabelled" in r.getMessage()]
    assert line.startswith("2 images of train look mislabelled (e.g. ") and "--labels" in line
    checked = json.loads((run.path / "metrics.json").read_text())["label_check"]
    assert checked["confident"] == 2 and checked["images"] == 30


@pytest.mark.slow
def test_train_takes_the_audits_csv_back_as_edited(misfiled, tmp_path, caplog):
    out = tmp_path / "audit"
    transferlab.api.audit(misfiled, near=False, labels=True, out=out, progress=False)
    with open(out / "label_issues.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["action"], rows[1]["action"] = "relabel", "exclude"  # the rows marked exclude leave, one moves
    edited = tmp_path / "edited.csv"
    with open(edited, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with caplog.at_level(logging.INFO, logger="transferlab"):
        run = transferlab.train(misfiled, strategy="features", out=tmp_path / "runs", progress=False,
                                exclude=str(edited), relabel=str(edited))
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["label_edits"]["relabelled"] == 1 and metrics["label_edits"]["excluded"] == len(rows) - 1
    assert metrics["label_check"]["images"] == 30 - (len(rows) - 1)
    assert "test is never changed" in caplog.text
    assert not any("look mislabelled" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------- --exclude, --relabel

@pytest.fixture
def folders(tmp_path, colour_folder):
    root = tmp_path / "colours"
    colour_folder(root / "train", CLASSES, 10, size=32)
    colour_folder(root / "test", CLASSES, 3, size=32, noise=31)  # other pixels than train's
    return root


def _write(path, text):
    path.write_text(text)
    return str(path)


def _names(part):
    return {im.name for im in part.images} if part is not None else set()


def test_exclude_and_relabel_change_train_and_val_and_never_test(folders, tmp_path, caplog):
    source = load_source(folders)
    before, _ = edited_splits(RunConfig(data=str(folders), strategy="features"), source)
    red0, green3, test0 = (str(folders / "train" / "red" / "0.png"), str(folders / "train" / "green" / "3.png"),
                           str(folders / "test" / "blue" / "0.png"))
    exclude = _write(tmp_path / "x.csv", f"path\n{red0}\ntest/blue/0.png\nnowhere.png\n")
    relabel = _write(tmp_path / "r.csv", f"path,label\ntrain/green/3.png,blue\n{test0},red\n")
    config = RunConfig(data=str(folders), strategy="features", exclude=exclude, relabel=relabel)
    with caplog.at_level(logging.INFO, logger="transferlab"):
        _, after, _, edits = _splits(config)
    assert red0 in _names(before.train) | _names(before.val) and red0 not in _names(after.train) | _names(after.val)
    assert len(after.train) + len(after.val) == len(before.train) + len(before.val) - 1
    where = "train" if green3 in _names(after.train) else "val"
    part = getattr(after, where)
    assert part.classes[part.labels[part.images.index(next(im for im in part.images if im.name == green3))]] == "blue"
    # Test is the score: never dropped, never relabelled, whatever the files say.
    assert _names(after.test) == _names(before.test) and np.array_equal(after.test.labels, before.test.labels)
    assert edits.to_dict() == {"excluded": 1, "relabelled": 1, "not_in_data": 1, "in_test": 2,
                               "files": {"exclude": exclude, "relabel": relabel}}
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == f"--exclude '{exclude}': 1 listed path(s) are not images of {folders}, e.g. 'nowhere.png': ignored"
    assert "test is never changed (2 listed image(s) of test left as they are)" in caplog.text


def test_the_action_column_decides_what_each_option_takes(folders, tmp_path):
    rows = "path,given,suggested,self_confidence,action\n" + "".join(
        f"train/red/{i}.png,red,blue,0.01,{action}\n" for i, action in enumerate(("exclude", "relabel", "keep")))
    csv_file = _write(tmp_path / "label_issues.csv", rows)
    config = RunConfig(data=str(folders), strategy="features", exclude=csv_file, relabel=csv_file)
    splits, edits = edited_splits(config, load_source(folders))
    labels = {im.name: splits.train.classes[y] for part in (splits.train, splits.val) for im, y in
              zip(part.images, part.labels)}
    red = folders / "train" / "red"
    assert str(red / "0.png") not in labels and labels[str(red / "1.png")] == "blue" and labels[str(red / "2.png")] == "red"
    assert (edits.excluded, edits.relabelled) == (1, 1)


@pytest.mark.parametrize("text, needles", [
    ("file,label\nx.png,red\n", ["has no 'path' column", "its header: file, label"]),
    ("path,label\ntrain/red/0.png,purple\n", ["row 2: label 'purple' is not a class of the data: give one of blue, green, red"]),
    ("path,action\ntrain/red/0.png,delete\n", ["row 2: action 'delete' is not one of exclude, relabel, keep"]),
])
def test_a_bad_file_is_one_line_naming_it_before_a_run_folder_exists(folders, tmp_path, capsys, text, needles):
    bad = _write(tmp_path / "bad.csv", text)
    option = "--relabel" if "label" in text.splitlines()[0] else "--exclude"
    runs = tmp_path / "runs"
    assert main(["train", str(folders), "--strategy", "features", option, bad, "--out", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {option} '{bad}'") and "\n" not in err, err
    assert all(n in err for n in needles), err
    assert not runs.exists() or not any(runs.iterdir())


def test_a_missing_file_is_refused_before_torch_loads(tmp_path, capsys):
    assert main(["train", "digits", "--exclude", str(tmp_path / "gone.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --exclude {tmp_path / 'gone.csv'} is not a file: give a CSV") and "\n" not in err
    with pytest.raises(TransferlabError, match="--relabel"):
        RunConfig(relabel=str(tmp_path / "gone.csv")).validate()


def test_excluding_every_image_of_a_class_is_refused_in_one_line(folders, tmp_path):
    rows = "path\n" + "".join(f"train/blue/{i}.png\n" for i in range(10))
    config = RunConfig(data=str(folders), strategy="features", exclude=_write(tmp_path / "x.csv", rows))
    with pytest.raises(TransferlabError, match="leaves class 'blue' with no training image"):
        edited_splits(config, load_source(folders))
