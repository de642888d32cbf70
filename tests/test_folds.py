"""`--folds K`: stratified K-fold cross-validation on train (test untouched) before the final fit,
in `train` and in `compare` (which then ranks configs by it)."""

import csv
import json
import logging
import statistics
from pathlib import Path

import numpy as np
import pytest

import transferlab
from transferlab import ImageClassifier
from transferlab.cli import main
from transferlab.data.split import stratified_folds
from transferlab.errors import TransferlabError
from transferlab.workflows import compare as compare_module

# Three classes at a small input size (no other test's) keep the digits runs to seconds; the
# features are cached for the whole test session, so the runs after the first compute none.
DIGITS = {"strategy": "features", "image_size": 56, "classes": "0,1,2", "progress": False}


def test_folds_are_disjoint_cover_every_image_once_per_class_even_and_seeded():
    labels = np.random.default_rng(1).permutation(np.repeat([0, 1, 2], [10, 7, 23]))
    folds = stratified_folds(labels, 3, seed=5)
    assert len(folds) == 3
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(labels)))  # each index exactly once
    for label in range(3):
        counts = [int((labels[f] == label).sum()) for f in folds]
        assert max(counts) - min(counts) <= 1, (label, counts)
    assert all(np.array_equal(a, b) for a, b in zip(folds, stratified_folds(labels, 3, seed=5)))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, stratified_folds(labels, 3, seed=6)))


def test_a_class_smaller_than_k_is_refused_in_one_line_before_any_fitting(colour_folder, tmp_path, monkeypatch):
    data = colour_folder(tmp_path / "data", ("red",), 12)
    colour_folder(data, ("blue",), 4)  # 1 test, 1 val, 2 left to train on

    def no_fitting(*args, **kwargs):
        raise AssertionError("a classifier was fitted although the folds could not be made")

    monkeypatch.setattr(ImageClassifier, "fit", no_fitting)
    with pytest.raises(TransferlabError) as err:
        transferlab.train(data, folds=3, strategy="features", out=tmp_path / "runs", progress=False)
    assert str(err.value) == "--folds 3: class 'blue' has only 2 training image(s); give --folds 2 or fewer"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run folder left
    with pytest.raises(TransferlabError, match="class '1' has only 1 training image"):
        stratified_folds(np.array([0, 0, 1, 0]), 2, seed=0, classes=["a", "1"])


@pytest.mark.slow
def test_train_with_3_folds_reports_each_fold_computes_features_once_and_keeps_the_final_fit(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="transferlab"):
        run = transferlab.train("digits", out=tmp_path, name="cv", folds=3, **DIGITS)
    folds = json.loads((run.path / "metrics.json").read_text())["folds"]
    assert set(folds) == {"k", "val_accuracy", "val_log_loss", "mean", "std", "seconds", "features_computed"}
    assert folds["k"] == 3 and len(folds["val_accuracy"]) == len(folds["val_log_loss"]) == 3
    assert all(0.8 <= a <= 1 for a in folds["val_accuracy"]) and all(v > 0 for v in folds["val_log_loss"])
    assert folds["mean"] == pytest.approx(statistics.fmean(folds["val_accuracy"]))
    assert folds["std"] == pytest.approx(statistics.stdev(folds["val_accuracy"]))  # sample std
    assert f"3-fold cross-validation: val accuracy {folds['mean']:.4f} ± {folds['std']:.4f}" in caplog.text
    # Fold 1 ran the backbone on all of train (its part and its fold); the others read the store.
    # the first fold's fit computes its training part's features (scoring it then the fold's); the
    # later folds read every one from the store
    assert 0 < folds["features_computed"][0] < run.metrics["splits"]["train"]["images"]
    assert folds["features_computed"][1:] == [0, 0]
    # ... and so did the final fit, which computed only the val split's, never seen by the folds.
    assert run.metrics["features"]["computed"] == run.metrics["splits"]["val"]["images"]
    assert "Cross-validation (--folds 3)" in (run.path / "report.html").read_text()
    # The folds only measure: the final model and its test score are the run's without them.
    plain = transferlab.train("digits", out=tmp_path, name="plain", **DIGITS)
    assert "folds" not in plain.metrics
    assert run.metrics["splits"]["test"] == plain.metrics["splits"]["test"]
    assert run.metrics["test"]["accuracy"] == plain.metrics["test"]["accuracy"]
    assert run.metrics["test"]["log_loss"] == pytest.approx(plain.metrics["test"]["log_loss"])


@pytest.mark.slow
def test_compare_with_2_folds_writes_cv_columns_and_ranks_by_them(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: {strategy: features, image_size: 56, classes: '0,1,2'}\n"
                    "grid: {val_fraction: [0.1, 0.2]}\n")
    result = transferlab.compare("digits", grid, seeds=1, out=tmp_path, progress=False, folds=2)
    assert result.columns[:3] == ["val_fraction", "cv_accuracy_mean", "cv_accuracy_std"]
    for row in result.rows:
        folds = json.loads((result.path / row["runs"][0] / "metrics.json").read_text())["folds"]
        assert folds["k"] == 2
        assert row["cv_accuracy_mean"] == pytest.approx(statistics.fmean(folds["val_accuracy"]))
        assert row["cv_accuracy_std"] == pytest.approx(statistics.stdev(folds["val_accuracy"]))
    assert result.rows[0]["cv_accuracy_mean"] >= result.rows[1]["cv_accuracy_mean"] and result.rows[0]["best"]
    table = list(csv.DictReader((result.path / "comparison.csv").open()))
    assert [float(t["cv_accuracy_mean"]) for t in table] == [pytest.approx(r["cv_accuracy_mean"], abs=1e-4)
                                                            for r in result.rows]
    assert "cv accuracy" in (result.path / "comparison.md").read_text()
    assert "cv_accuracy_mean" in (result.path / "report.html").read_text()


def _fake_runs(monkeypatch, scores: dict):
    """compare's runs replaced by fixed metrics: {val_fraction: (cv accuracies or None, test accuracy)}."""
    def run_once(data, options, seed, run, progress):
        cv, test = scores[options["val_fraction"]]
        metrics = {"score_split": "test", "test": {"accuracy": test, "log_loss": 1 - test}, "fit": {},
                   "seconds": 1.0, "run": Path(run)}
        if options.get("folds"):
            metrics["folds"] = {"k": len(cv), "val_accuracy": cv, "val_log_loss": [1 - a for a in cv]}
        return metrics

    monkeypatch.setattr(compare_module, "_run_once", run_once)


def test_with_folds_the_choice_follows_cv_not_test_and_without_them_nothing_changes(tmp_path, monkeypatch):
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid: {val_fraction: [0.1, 0.2]}\n")
    _fake_runs(monkeypatch, {0.1: ([0.80, 0.82], 0.95), 0.2: ([0.90, 0.92], 0.90)})
    ranked = transferlab.compare("digits", grid, seeds=1, out=tmp_path, name="cv", progress=False, folds=2)
    assert [r["val_fraction"] for r in ranked.rows] == [0.2, 0.1] and ranked.rows[0]["best"]
    assert ranked.rows[0]["test_accuracy_mean"] == 0.90  # reported beside it, not chosen on
    plain = transferlab.compare("digits", grid, seeds=1, out=tmp_path, name="plain", progress=False)
    assert [r["val_fraction"] for r in plain.rows] == [0.1, 0.2]
    assert "cv_accuracy_mean" not in plain.columns and "cv_accuracy_mean" not in plain.rows[0]
    assert "cv" not in (plain.path / "comparison.md").read_text()


def test_folds_1_fails_on_the_command_line_in_one_line(capsys):
    assert main(["train", "digits", "--strategy", "features", "--folds", "1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--folds 1" in lines[0], lines
