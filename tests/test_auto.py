"""`--strategy auto` (AutoClassifier): the portfolio's candidates within the budget, chosen and
weighted on validation probabilities alone (ensemble selection), refitted on train + val, one run
written for the final model (a candidate or the ensemble), replayable from its plan."""

import csv
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

import transferlab

OPTIONS = dict(strategy="auto", image_size=64, progress=False)


def _csv(hymenoptera, path, poison_test: bool = False, val: bool = True):
    """A path,label,split CSV of hymenoptera photos: 12 train, 6 val, 6 test per class (without
    `val`, 18 train); with `poison_test` every test label is the other class."""
    rows = []
    for cls, other in (("ants", "bees"), ("bees", "ants")):
        files = sorted((hymenoptera / "train" / cls).glob("*.jpg"))[:18] + sorted((hymenoptera / "val" / cls).glob("*.jpg"))[:6]
        for k, f in enumerate(files):
            split = "train" if k < (12 if val else 18) else "val" if k < 18 else "test"
            rows.append((str(f), other if poison_test and split == "test" else cls, split))
    random.Random(0).shuffle(rows)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def auto_run(hymenoptera, tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    return transferlab.train(_csv(hymenoptera, root / "data.csv"), out=root / "runs", budget=10, **OPTIONS)


@pytest.mark.slow
def test_auto_scores_every_candidate_on_val_and_weighs_them_by_ensemble_selection(auto_run):
    auto = auto_run.metrics["fit"]["auto"]
    rows = {r["candidate"]: r for r in auto["candidates"]}
    assert {"features lite0", "features lite1", "features lite2"} <= set(rows)
    assert all(r["val_accuracy"] is not None for r in rows.values() if r["status"] == "ok")
    members = auto["members"]
    assert members and sum(m["weight"] for m in members) == pytest.approx(1.0)
    assert all(rows[m["name"]]["status"] == "ok" for m in members)
    assert auto["choice_images"] > 0 and "ensemble selection" in auto["why"]
    assert "val" not in auto_run.metrics  # chosen on it: not scored on it
    assert auto_run.metrics["test"]["accuracy"] >= 0.6  # 12 test photos at 64 px; chance is 0.5
    report = (auto_run.path / "report.html").read_text()
    assert "Candidates (--strategy auto)" in report and members[0]["name"] in report
    assert (auto_run.path / "plan.json").is_file() and not (auto_run.path / "auto").exists()


@pytest.mark.slow
def test_an_auto_run_reloads_as_its_final_model(auto_run, hymenoptera):
    clf = transferlab.ImageClassifier.load(auto_run.path)
    images = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[10:13]
    assert (clf.predict_proba(images) == auto_run.classifier.predict_proba(images)).all()


@pytest.mark.slow
def test_auto_never_reads_the_test_split_before_it_has_chosen(hymenoptera, auto_run, tmp_path):
    """The same data with every test label wrong: the same candidates score the same on val and
    the same ones are chosen; only the test score changes."""
    poisoned = transferlab.train(_csv(hymenoptera, tmp_path / "data.csv", poison_test=True), out=tmp_path / "runs",
                                 budget=10, **OPTIONS)
    clean, dirty = auto_run.metrics["fit"]["auto"], poisoned.metrics["fit"]["auto"]
    assert dirty["chosen"] == clean["chosen"]
    assert [(r["candidate"], r["val_accuracy"], r["val_log_loss"]) for r in dirty["candidates"]] == [
        (r["candidate"], r["val_accuracy"], r["val_log_loss"]) for r in clean["candidates"]]
    assert poisoned.metrics["test"]["accuracy"] == pytest.approx(1 - auto_run.metrics["test"]["accuracy"])


@pytest.mark.slow
def test_two_replays_of_one_plan_give_identical_probabilities(auto_run, hymenoptera, tmp_path):
    """--replay fits the plan again (same candidates, epochs, members) with no clock deciding."""
    images = sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[:4]
    first = transferlab.train(replay=auto_run.path, out=tmp_path / "runs", progress=False)
    second = transferlab.train(replay=auto_run.path, out=tmp_path / "runs", progress=False)
    assert first.path != second.path and (first.path / "plan.json").is_file()
    one, two = first.classifier.predict_proba(images), second.classifier.predict_proba(images)
    assert (one == two).all()
    plan = json.loads((auto_run.path / "plan.json").read_text())
    assert json.loads((first.path / "plan.json").read_text())["candidates"] == plan["candidates"]
    assert first.metrics["fit"]["auto"]["chosen"] == auto_run.metrics["fit"]["auto"]["chosen"]
    with pytest.raises(transferlab.TransferlabError, match="no plan.json"):
        transferlab.train(replay=tmp_path, out=tmp_path / "runs")


@pytest.mark.slow
def test_without_a_val_split_features_members_are_refitted_on_all_of_train(hymenoptera, tmp_path):
    """auto holds back part of train to choose; a features member is then refitted on all of it at
    the C its validation chose, calibrated on its out-of-fold probabilities: the very classifier
    `--strategy features --logistic-c C` gives. Replayed from a plan of features
    candidates, so that no trained candidate can win the choice on these few images."""
    import numpy as np

    from transferlab.data.sources import load_source

    data = _csv(hymenoptera, tmp_path / "data.csv", val=False)
    source = load_source(data)
    train = source.images.subset(np.flatnonzero(np.array(source.splits, dtype=object) == "train"))
    lite0 = {"strategy": "features", "backbone": "tf_efficientnet_lite0"}
    plan = {"format": 1, "candidates": [
        {"candidate": "features lite0", "entry": "features", "options": lite0, "epochs": None},
        {"candidate": "features lite0 squash", "entry": "squash", "options": {**lite0, "resize": "squash"},
         "epochs": None}],
        "decisions": {"out_of_fold": ["features lite0", "features lite0 squash"], "allowed": ["features lite0"],
                      "refit": {"features lite0": "train+val", "features lite0 squash": "train+val"}}}
    auto = transferlab.AutoClassifier(image_size=64, progress=False).fit(train, plan=plan)
    member = auto.candidates_[0]
    assert auto.ensemble_.members == [0]  # the one allowed
    assert auto.fit_info_["auto"]["members"][0]["refit"] == "train+val"
    assert member.model.spec_.calibration["fitted_on"] == "out-of-fold over train + val"
    plain = transferlab.train(data, out=tmp_path / "runs", val_fraction=0, logistic_c=member.model.fit_info_["C"],
                              image_size=64, progress=False, **lite0)
    images = sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[:4]
    # The same classifier; their calibrations differ only by the folds (the images' order differs).
    from transferlab.trust.calibration import uncalibrated

    ours = uncalibrated(member.model.predict_proba(images), member.model.spec_.calibration)
    theirs = uncalibrated(plain.classifier.predict_proba(images), plain.classifier.spec_.calibration)
    assert ours == pytest.approx(theirs, abs=1e-5)


@pytest.mark.slow
def test_the_whole_command_keeps_a_small_budget_scoring_included(hymenoptera, tmp_path):
    """From the command's start to its written report, within the budget and 5%: the first
    candidate always runs (something must win); the others start only when they and the scoring
    fit, and what does not fit is skipped with the reason."""
    from transferlab.cli import main

    started = time.perf_counter()
    code = main(["--quiet", "train", str(_csv(hymenoptera, tmp_path / "data.csv")), "--out", str(tmp_path / "runs"),
                 "--budget", "0.5", "--image-size", "64", "--cache-dir", str(tmp_path / "cold-cache")])
    took = time.perf_counter() - started
    assert code == 0
    metrics = json.loads(next((tmp_path / "runs").glob("*/metrics.json")).read_text())
    assert metrics["seconds"] <= 30 * 1.05 and took <= 30 * 1.05 + 5  # + this process's imports
    # Which candidates fit depends on the machine's pace (the fakes' tests pin the skipping down).
    assert all(r["status"] == "ok" or r["status"].startswith("skipped: needs about")
               for r in metrics["fit"]["auto"]["candidates"])


@pytest.mark.slow
def test_an_ensemble_saves_reloads_exports_to_onnx_and_serves_with_identical_probabilities(small_set, hymenoptera,
                                                                                          tmp_path):
    """Two fitted classifiers at different input sizes averaged as one network: the reloaded
    run, its ONNX export (checked against PyTorch by export) and the server all agree."""
    from starlette.testclient import TestClient

    from transferlab.selection.auto import ensemble_classifier
    from transferlab.serving.app import create_app

    members = [transferlab.ImageClassifier(strategy="features", backbone="tf_efficientnet_lite0", image_size=size,
                                           progress=False).fit(small_set) for size in (64, 96)]
    ensemble = ensemble_classifier(members, [0.25, 0.75], dict(OPTIONS), ["small", "large"])
    images = [str(p) for p in sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:3]]
    proba = ensemble.predict_proba(images)
    assert proba.sum(1) == pytest.approx(1.0, abs=1e-5)
    # Each member's probabilities, averaged: the large member sees the image as its own run does.
    alone = ensemble_classifier(members[1:], [1.0], dict(OPTIONS), ["large"]).predict_proba(images)
    assert np.abs(alone - members[1].predict_proba(images)).max() <= 1e-5
    folder = ensemble.save(tmp_path / "ensemble")
    again = transferlab.ImageClassifier.load(folder)
    assert np.abs(again.predict_proba(images) - proba).max() <= 1e-6
    exported = transferlab.export(folder, check_images=images)
    assert exported["max_abs_diff"] <= 1e-4
    import onnxruntime

    from transferlab.data.decode import decode
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    pre = again.preprocess_
    x = np.stack([pre.center_crop(decode(p, pre.resize_size, pre.interpolation)) for p in images]).transpose(0, 3, 1, 2)
    onnx_proba = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
    assert np.abs(onnx_proba - proba).max() <= 1e-4
    with TestClient(create_app(again)) as client:
        reply = client.post("/predict", files=[("file", (Path(p).name, open(p, "rb").read(), "image/jpeg"))
                                               for p in images])
        assert reply.status_code == 200
        got = np.array([[p["probabilities"][c] for c in again.class_names()] for p in reply.json()["predictions"]])
    assert np.abs(got - proba).max() <= 1e-5
    from transferlab.data.decode import decode as read
    from transferlab.explain.gradcam import gradcam_with_probabilities
    pixels = again.preprocess_.center_crop(read(images[0], pre.resize_size, pre.interpolation))
    heatmap, cls, explained = gradcam_with_probabilities(again.network_, pixels)
    assert heatmap.shape == pixels.shape[:2] and np.isfinite(heatmap).all()
    assert np.abs(np.asarray(explained).ravel() - proba[0]).max() <= 1e-4  # the ensemble's own answer


def test_ensemble_selection_adds_a_complementary_member_and_breaks_ties_on_log_loss():
    from transferlab.selection.ensemble_selection import select

    labels = np.array([0, 0, 1, 1, 0, 1])
    good = np.array([[.9, .1], [.8, .2], [.2, .8], [.4, .6], [.45, .55], [.3, .7]])  # wrong on image 4
    other = np.array([[.6, .4], [.4, .6], [.3, .7], [.45, .55], [.9, .1], [.2, .8]])  # wrong on image 1
    bad = np.full((6, 2), 0.5)
    chosen = select([good, other, bad], labels)
    assert chosen.members == [0, 1] and chosen.accuracy == 1.0 and chosen.counts[2] == 0
    unsure = np.where(good > 0.5, 0.6, 0.4)  # the same answers, less sure
    assert select([unsure, good], labels).members == [1]  # tied on accuracy: the lower log loss


def test_a_mistake_in_the_options_fails_in_one_line_and_writes_no_run(hymenoptera, tmp_path):
    with pytest.raises(transferlab.TransferlabError) as err:
        transferlab.train(_csv(hymenoptera, tmp_path / "data.csv"), out=tmp_path / "runs", backbone="resnt50",
                          **OPTIONS)
    assert "unknown backbone 'resnt50'" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


class _Fake:
    """A candidate that fits at once and scores what `scores` says of its options."""

    def __init__(self, options, scores, seconds=0.0):
        self.options, self.scores, self.seconds = options, scores, seconds
        self.history_ = []

    def fit(self, train, val=None, callbacks=()):
        time.sleep(self.seconds)
        return self


class _Sized:
    """Labels and a length: what the search reads of a split."""

    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def __len__(self):
        return len(self.labels)


def _search(scores, seconds=0.0, deadline=3600.0, scored_images=0, info=None):
    """The candidates the search runs on 20 + 6 images with fakes scored by `scores`."""
    from transferlab.selection.search import Costs, Search

    def make(options):
        fake = _Fake(options, scores, seconds)
        if info:
            fake.fit_info_ = dict(info)
        return fake

    def val_scores(model, val):
        return model.scores(model.options), 0.5, np.full((len(val), 2), 0.5), np.ones(len(val), bool)

    train, val = _Sized(np.repeat([0, 1], 10)), _Sized([0, 1] * 3)
    search = Search(make, train, val, time.perf_counter() + deadline, val_scores, Costs(26, scored_images))
    return {c.name: c for c in search.run(["tf_efficientnet_lite0", "tf_efficientnet_lite1"])}


def _bilinear_wins(options):
    return 0.9 if options.get("pooling") == "bilinear" or options["strategy"] == "bilinear" else 0.6


def test_bilinear_pooling_that_beat_pooled_features_brings_the_higher_resolution_whatever_the_class_counts():
    found = _search(_bilinear_wins)
    sharper = found["features lite0 bilinear pooling 448 px"]
    assert sharper.options == {"strategy": "features", "backbone": "tf_efficientnet_lite0", "pooling": "bilinear",
                               "image_size": 448, "layer": "blocks.6"}
    assert sharper.status == "ok" and list(found).index(sharper.name) < list(found).index("finetune lite0")
    assert "bilinear lite0" in found  # the trained bilinear network too
    lost = _search(lambda options: 0.5 if options.get("pooling") == "bilinear" else 0.6)
    assert not any(name.endswith(" px") for name in lost) and "bilinear lite0" not in lost


def test_a_candidate_that_does_not_fit_is_skipped_and_the_time_goes_to_the_next_that_does():
    """Scoring the held-out images after the choice must fit whichever candidate wins; a candidate
    that would leave no time for it is skipped, and a cheaper one further down still runs."""
    plenty = _search(lambda o: 0.7, seconds=0.1)
    assert plenty["features lite1"].status == "ok"
    # 20 times the images of the measured pass: scoring them needs about 2 s with Lite0, 3.1 s
    # with Lite1 (1.56 times its operations).
    crowded = _search(lambda o: 0.7, seconds=0.1, deadline=3.0, scored_images=20 * 26)
    assert crowded["features lite0"].status == "ok"  # the first always runs
    assert crowded["features lite1"].status.startswith("skipped: needs about")
    assert crowded["features lite0 squash"].status == "ok"  # Lite0's cost: it fits


def test_what_runs_in_pytorch_is_costed_at_pytorchs_speed_when_the_features_ran_faster():
    """Training and bilinear-pooled features stay in PyTorch: their estimates add what the first
    candidate's backbone pass would have taken there, not the faster runtime's seconds."""
    torch_only = {n: c.estimate for n, c in _search(lambda o: 0.7, seconds=0.2).items()}
    faster = {n: c.estimate for n, c in _search(lambda o: 0.7, seconds=0.2, info={
        "frozen_seconds": 0.1, "frozen_torch_seconds": 0.3}).items()}
    # The first candidate took about 0.2 s either way; in PyTorch its pass would have taken 0.2 s more.
    assert faster["finetune lite0"] == pytest.approx(torch_only["finetune lite0"] * (0.2 + 0.2) / 0.2, rel=0.3)
    assert faster["features lite0 bilinear pooling"] > 1.5 * torch_only["features lite0 bilinear pooling"]
    # Features candidates run in the faster runtime: costed at its own measured speed, and by
    # each backbone's own compute (Lite1 about 1.56 times Lite0's operations).
    assert faster["features lite1"] == pytest.approx(torch_only["features lite1"], rel=0.3)
    assert torch_only["features lite1"] == pytest.approx(1.56 * torch_only["features lite0 squash"], rel=0.05)


def test_the_default_image_classifier_is_auto_and_passes_through_to_its_model(small_set, hymenoptera):
    clf = transferlab.ImageClassifier(backbone="tf_efficientnet_lite0", image_size=64, budget=0.3, progress=False)
    clf.fit(small_set)
    assert isinstance(clf.search_, transferlab.AutoClassifier) and clf.search_.candidates_
    images = sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[:2]
    assert (clf.predict_proba(images) == clf.search_.model_.predict_proba(images)).all()
    assert clf.classes_ == clf.search_.model_.classes_
    # Calibrated by its own fit, the detector the search's (fitted once, for the final model).
    assert clf.search_.model_.spec_.calibration["images"] > 0
    assert clf.unknown_ is clf.search_.unknown_ and clf.unknown_.images == 20  # every image fit was given
    assert all(getattr(c.model, "unknown_", None) is None for c in clf.search_.candidates_ if c.model is not None)


class _CtrlC(transferlab.Callback):
    """Ctrl-C as the second epoch of the first network that trains begins (after the first
    epoch's checkpoint)."""

    def on_epoch_begin(self, trainer):
        if trainer.history:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_candidates_and_resume_continues_from_them(hymenoptera, tmp_path, caplog):
    options = dict(OPTIONS, backbone="tf_efficientnet_lite0", budget=30, epochs=2, head_epochs=2)
    with pytest.raises(KeyboardInterrupt) as stopped:
        transferlab.train(_csv(hymenoptera, tmp_path / "data.csv"), out=tmp_path / "runs", name="auto",
                          callbacks=[_CtrlC()], **options)
    run = tmp_path / "runs" / "auto"
    assert f"transferlab train --resume {run}" in str(stopped.value)
    kept = json.loads((run / "auto" / "candidates.json").read_text())["candidates"]
    assert len(kept) == 3 and all(row["options"]["strategy"] == "features" for row in kept.values())
    assert {"features lite0", "features lite0 squash"} <= set(kept)
    trained = next(name for name in ("finetune-lite0", "finetune-lite0-squash") if (run / "auto" / f"{name}-training").is_dir())
    assert (run / "auto" / f"{trained}-training" / "checkpoint.pt").is_file()
    with caplog.at_level("INFO", logger="transferlab"):
        resumed = transferlab.train(resume=run, progress=False)
    said = [r.getMessage() for r in caplog.records]
    assert sum("kept from before the interruption" in line for line in said) == 3
    rows = {r["candidate"]: r for r in resumed.metrics["fit"]["auto"]["candidates"]}
    for name, row in kept.items():  # the finished ones were not fitted again
        assert (rows[name]["val_accuracy"], rows[name]["seconds"]) == (row["val_accuracy"], row["seconds"])
    assert rows[trained.replace("-", " ")]["status"] == "ok"
    assert not (run / "auto").exists() and (run / "metrics.json").is_file()




def test_the_new_options_fail_in_one_line_naming_themselves(tmp_path, capsys):
    """--logistic-c, --refit-full and --replay refuse what they cannot use, before anything loads."""
    from transferlab.cli import main
    from transferlab.config import RunConfig

    for options, said in (({"logistic_c": -1}, "--logistic-c -1 must be a positive number"),
                          ({"strategy": "finetune", "logistic_c": 1.0}, "--logistic-c sets the features"),
                          ({"strategy": "features", "refit_full": True}, "--refit-full refits auto's")):
        with pytest.raises(transferlab.TransferlabError) as err:
            RunConfig.from_dict(options).refuse_unused()
        assert said in str(err.value) and "\n" not in str(err.value)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data: digits\n")
    (run / "plan.json").write_text("{not json")
    assert main(["train", "--replay", str(run)]) == 2
    assert "plan.json' is damaged" in capsys.readouterr().err
    assert main(["train", "--replay", str(run), "--resume", str(run)]) == 2
    assert "give one" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_candidate_of_the_other_view_without_out_of_fold_probabilities_does_not_stop_the_selection():
    """The best sees images cropped, every cropped candidate has out-of-fold probabilities over
    train + val, and a squashed trained one has val's alone: the selection runs on every row."""
    from types import SimpleNamespace

    from transferlab.data.types import ImageSet
    from transferlab.selection.auto import AutoClassifier

    rng = np.random.default_rng(0)
    n_train, n = 30, 40
    labels = rng.integers(0, 2, n)
    whole = ImageSet([None] * n, labels, ["a", "b"])
    right = np.eye(2)[labels] * 0.8 + 0.1

    def candidate(name, resize, val_accuracy):
        return SimpleNamespace(name=name, options={"resize": resize, "strategy": "features", "backbone": "x"},
                               val_accuracy=val_accuracy, val_log_loss=0.3, val_ok=np.ones(n - n_train, bool),
                               val_proba=right[n_train:])

    done = [candidate("crop", "crop", 0.9), candidate("squash-finetune", "squash", 0.8)]
    oof = {"crop": (right, np.ones(n, bool))}
    costs = SimpleNamespace(scoring=lambda options, images=None: 0.0)
    selection, allowed, rows = AutoClassifier()._select(done, oof, n_train, whole, costs, np.inf, None)
    assert allowed == [True, False] and selection.members == [0] and rows["images"] == n
