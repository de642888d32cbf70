"""`--strategy auto`: candidates cheapest first within the budget, chosen on the validation split
alone, one run written for the winner, every candidate reported."""

import csv
import json
import random
import time

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


def test_auto_scores_every_cheap_candidate_on_val_and_keeps_the_best(auto_run):
    auto = auto_run.metrics["fit"]["auto"]
    rows = {r["candidate"]: r for r in auto["candidates"]}
    assert {"features tf_efficientnet_lite0", "features tf_efficientnet_lite1", "features tf_efficientnet_lite2",
            "features lite0+lite1+lite2"} <= set(rows)
    done = [r for r in rows.values() if r["status"] == "ok"]
    best = max(done, key=lambda r: (r["val_accuracy"], -r["val_log_loss"]))
    assert auto["chosen"] == best["candidate"] and "validation" in auto["why"]
    assert auto_run.metrics["strategy"] == rows[auto["chosen"]]["options"]["strategy"]
    assert auto_run.metrics["test"]["accuracy"] >= 0.6  # 12 test photos at 64 px; chance is 0.5
    report = (auto_run.path / "report.html").read_text()
    assert "Candidates (--strategy auto)" in report and auto["chosen"] in report


def test_an_auto_run_reloads_as_its_winner(auto_run, hymenoptera):
    clf = transferlab.ImageClassifier.load(auto_run.path)
    images = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[10:13]
    assert clf.config_.strategy != "auto"
    assert (clf.predict_proba(images) == auto_run.classifier.predict_proba(images)).all()


def test_auto_never_reads_the_test_split_before_it_has_chosen(hymenoptera, auto_run, tmp_path):
    """The same data with every test label wrong: the same candidates score the same on val and
    the same one wins; only the test score changes."""
    poisoned = transferlab.train(_csv(hymenoptera, tmp_path / "data.csv", poison_test=True), out=tmp_path / "runs",
                                 budget=10, **OPTIONS)
    clean, dirty = auto_run.metrics["fit"]["auto"], poisoned.metrics["fit"]["auto"]
    assert dirty["chosen"] == clean["chosen"]
    assert [(r["candidate"], r["val_accuracy"], r["val_log_loss"]) for r in dirty["candidates"]] == [
        (r["candidate"], r["val_accuracy"], r["val_log_loss"]) for r in clean["candidates"]]
    assert poisoned.metrics["test"]["accuracy"] == pytest.approx(1 - auto_run.metrics["test"]["accuracy"])


def test_without_a_val_split_a_features_winner_is_refitted_on_all_of_train(hymenoptera, tmp_path, monkeypatch):
    """auto holds back part of train to choose; the features winner is then the very run
    `--strategy features` gives on the whole train split (here with the time for the refit
    granted: whether it fits is the next test's)."""
    monkeypatch.setattr("transferlab.classifier.refit_fits", lambda candidate, deadline: (True, ""))
    data = _csv(hymenoptera, tmp_path / "data.csv", val=False)
    one = dict(OPTIONS, backbone="tf_efficientnet_lite0")
    run = transferlab.train(data, out=tmp_path / "runs", budget=0.01, **one)
    auto = run.metrics["fit"]["auto"]
    chosen = next(r for r in auto["candidates"] if r["candidate"] == auto["chosen"])
    assert chosen["options"]["strategy"] == "features" and auto["refit"]["images"] == 36
    assert "val" not in run.metrics["splits"]  # held back by auto, then trained on
    plain = transferlab.train(data, out=tmp_path / "runs", val_fraction=0, **{**one, **chosen["options"]})
    images = sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[:4]
    assert run.classifier.predict_proba(images) == pytest.approx(plain.classifier.predict_proba(images), abs=1e-6)
    assert run.metrics["test"]["accuracy"] == plain.metrics["test"]["accuracy"]
    assert "refitted on all 36 training images" in (run.path / "report.html").read_text()


def test_a_refit_that_does_not_fit_the_budget_is_skipped_and_said(hymenoptera, tmp_path):
    """Past its budget after the first candidate, the run keeps the winner as fitted on the images
    left after holding some back, and says so in metrics.json and the report."""
    data = _csv(hymenoptera, tmp_path / "data.csv", val=False)
    run = transferlab.train(data, out=tmp_path / "runs", budget=0.001,
                            **dict(OPTIONS, backbone="tf_efficientnet_lite0"))
    refit = run.metrics["fit"]["auto"]["refit"]
    assert refit["images"] == 30 and refit["seconds"] == 0.0
    assert refit["skipped"].startswith("needs about") and "s left" in refit["skipped"]
    report = " ".join((run.path / "report.html").read_text().split())
    assert "kept as fitted on the other 30 training images" in report


def test_the_budget_is_honoured_within_one_candidates_time(hymenoptera, tmp_path):
    """With under a second, the first candidate runs (something must win) and the ones that cannot
    fit are skipped, with the reason."""
    run = transferlab.train(_csv(hymenoptera, tmp_path / "data.csv"), out=tmp_path / "runs", budget=0.01,
                            cache_dir=tmp_path / "cold-cache", **OPTIONS)
    auto = run.metrics["fit"]["auto"]
    took = [r["seconds"] for r in auto["candidates"] if r["seconds"] is not None]
    assert auto["seconds"] <= 0.01 * 60 + max(took) + 2
    assert any(r["status"].startswith("skipped: needs about") for r in auto["candidates"])


def test_a_mistake_in_the_options_fails_in_one_line_and_writes_no_run(hymenoptera, tmp_path):
    with pytest.raises(transferlab.TransferlabError) as err:
        transferlab.train(_csv(hymenoptera, tmp_path / "data.csv"), out=tmp_path / "runs", backbone="resnt50",
                          **OPTIONS)
    assert "unknown backbone 'resnt50'" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


class _Fake:
    """A candidate that fits at once and scores what `scores` says of its options."""

    def __init__(self, options, scores):
        self.options, self.scores = options, scores

    def fit(self, train, val=None, callbacks=()):
        return self


def _order(labels, scores):
    """The candidates choose() runs on these training labels, with fakes scored by `scores`."""
    from types import SimpleNamespace

    from transferlab.selection import auto

    train = SimpleNamespace(labels=np.asarray(labels))
    _, candidates, _ = auto.choose(lambda options: _Fake(options, scores), train, None, "tf_efficientnet_lite0",
                                   time.perf_counter() + 3600, lambda model, val: (model.scores(model.options), 0.5))
    return {c.name: c for c in candidates}


def _bilinear_wins(options):
    return 0.9 if options.get("pooling") == "bilinear" else 0.6


def test_fine_grained_classes_get_bilinear_pooling_at_twice_the_size_when_it_won_at_the_native_one():
    many = np.repeat(np.arange(12), 20)  # 12 classes of 20 images: fine-grained
    found = _order(many, _bilinear_wins)
    sharper = found["features tf_efficientnet_lite0 bilinear pooling 448 px"]
    assert sharper.options == {"strategy": "features", "backbone": "tf_efficientnet_lite0", "pooling": "bilinear",
                               "image_size": 448, "layer": "blocks.6"}
    assert sharper.status == "ok" and list(found).index(sharper.name) < list(found).index("finetune tf_efficientnet_lite0")
    assert "bilinear" in found  # the trained bilinear network too
    few = _order(np.repeat(np.arange(2), 100), _bilinear_wins)  # two classes: not fine-grained
    assert not any(name.endswith(" px") for name in few) and "bilinear" not in few
    lost = _order(many, lambda options: 0.5 if options.get("pooling") == "bilinear" else 0.6)
    assert not any(name.endswith(" px") for name in lost)


class _Sized:
    """Labels and a length: what choose() reads of a split."""

    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def __len__(self):
        return len(self.labels)


class _Slow(_Fake):
    def fit(self, train, val=None, callbacks=()):
        time.sleep(0.2)
        return self


def test_a_candidate_starts_only_when_scoring_the_held_out_images_after_it_still_fits():
    """The run ends by scoring its held-out images with the winner: a candidate that would leave no
    time for that is skipped, even though its own fit would fit."""
    from transferlab.selection import auto

    train, val = _Sized(np.repeat([0, 1], 10)), _Sized([0, 1] * 3)

    def statuses(scored_images):
        _, candidates, _ = auto.choose(lambda options: _Slow(options, lambda o: 0.7), train, val, None,
                                       time.perf_counter() + 3.0, lambda model, val: (0.7, 0.5),
                                       scored_images=scored_images)
        return {c.name: c.status for c in candidates}

    plenty = statuses(0)
    assert plenty["features tf_efficientnet_lite1"] == "ok"
    # 20 times the images of the measured pass: scoring them with Lite1 needs about 6 s.
    crowded = statuses(20 * (len(train) + len(val)))
    assert crowded["features tf_efficientnet_lite0"] == "ok"  # the first always runs
    assert crowded["features tf_efficientnet_lite1"].startswith("skipped: needs about")


class _CtrlC(transferlab.Callback):
    """Ctrl-C as the second epoch of the first network that trains begins (after the first
    epoch's checkpoint)."""

    def on_epoch_begin(self, trainer):
        if trainer.history:
            raise KeyboardInterrupt


def test_ctrl_c_keeps_the_finished_candidates_and_resume_continues_from_them(hymenoptera, tmp_path, caplog):
    options = dict(OPTIONS, backbone="tf_efficientnet_lite0", budget=30, epochs=2, head_epochs=2)
    with pytest.raises(KeyboardInterrupt) as stopped:
        transferlab.train(_csv(hymenoptera, tmp_path / "data.csv"), out=tmp_path / "runs", name="auto",
                          callbacks=[_CtrlC()], **options)
    run = tmp_path / "runs" / "auto"
    assert f"transferlab train --resume {run}" in str(stopped.value)
    kept = json.loads((run / "auto" / "candidates.json").read_text())["candidates"]
    assert len(kept) == 3 and all(row["options"]["strategy"] == "features" for row in kept.values())
    assert {"features tf_efficientnet_lite0", "features tf_efficientnet_lite0 squash"} <= set(kept)
    assert (run / "auto" / "finetune-tf_efficientnet_lite0-training" / "checkpoint.pt").is_file()
    with caplog.at_level("INFO", logger="transferlab"):
        resumed = transferlab.train(resume=run, progress=False)
    said = [r.getMessage() for r in caplog.records]
    assert sum("kept from before the interruption" in line for line in said) == 3
    rows = {r["candidate"]: r for r in resumed.metrics["fit"]["auto"]["candidates"]}
    for name, row in kept.items():  # the finished ones were not fitted again
        assert (rows[name]["val_accuracy"], rows[name]["seconds"]) == (row["val_accuracy"], row["seconds"])
    assert rows["finetune tf_efficientnet_lite0"]["status"] == "ok"
    assert not (run / "auto").exists() and (run / "metrics.json").is_file()


class _FastFrozen(_Slow):
    """A features candidate whose backbone pass ran in onnxruntime, 3 times PyTorch's speed."""

    def fit(self, train, val=None, callbacks=()):
        super().fit(train, val, callbacks)
        self.fit_info_ = {"frozen_seconds": 0.1, "frozen_torch_seconds": 0.3}
        return self


def test_what_runs_in_pytorch_is_costed_at_pytorchs_speed_when_the_features_ran_faster():
    """Training and bilinear-pooled features stay in PyTorch: their estimates add what the first
    candidate's backbone pass would have taken there, not the faster runtime's seconds."""
    from transferlab.selection import auto

    train, val = _Sized(np.repeat([0, 1], 10)), _Sized([0, 1] * 3)

    def estimates(model):
        _, candidates, _ = auto.choose(lambda options: model(options, lambda o: 0.7), train, val, None,
                                       time.perf_counter() + 3600, lambda m, v: (0.7, 0.5))
        return {c.name: c.estimate for c in candidates}

    torch_only, faster = estimates(_Slow), estimates(_FastFrozen)
    finetune = next(n for n in faster if n.startswith("finetune"))
    # The first candidate took about 0.2 s either way; in PyTorch its pass would have taken 0.2 s more.
    assert faster[finetune] == pytest.approx(torch_only[finetune] * (0.2 + 0.2) / 0.2, rel=0.3)
    pooled = next(n for n in faster if n.endswith("bilinear pooling"))
    assert faster[pooled] > 1.5 * torch_only[pooled]
    # Features candidates run in the faster runtime: costed at its own measured speed.
    assert faster["features tf_efficientnet_lite1"] == pytest.approx(torch_only["features tf_efficientnet_lite1"],
                                                                     rel=0.3)
