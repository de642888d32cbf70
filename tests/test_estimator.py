"""ImageClassifier keeps scikit-learn's estimator contract: explicit keyword parameters stored
as given, get_params / set_params, clone, and use inside model_selection on image paths."""

import inspect
import subprocess
import sys
import time
from dataclasses import fields

import numpy as np
import pytest
from sklearn.base import clone, is_classifier
from sklearn.model_selection import cross_val_score

import transferlab
from transferlab import ImageClassifier, TransferlabError
from transferlab.config import FitOptions, RunConfig


@pytest.fixture(scope="module")
def ant_bee_paths(hymenoptera):
    """30 photos of each class, with their labels."""
    ants = sorted((hymenoptera / "train" / "ants").glob("*.jpg"))[:30]
    bees = sorted((hymenoptera / "train" / "bees").glob("*.jpg"))[:30]
    return [str(p) for p in ants + bees], ["ants"] * 30 + ["bees"] * 30


def test_the_parameters_are_explicit_keywords_named_like_the_options():
    signature = inspect.signature(ImageClassifier)
    kinds = {p.kind for p in signature.parameters.values()}
    assert kinds == {inspect.Parameter.KEYWORD_ONLY}  # no **kwargs, nothing positional
    options = {f.name: f.default for f in fields(FitOptions)}
    assert {n: p.default for n, p in signature.parameters.items()} == {**options, "progress": True}
    # every option of `transferlab train` is a parameter or says where the data and outputs are
    run_only = {f.name for f in fields(RunConfig)} - set(options)
    assert run_only == {"data", "val_fraction", "test_fraction", "classes", "dedupe", "cifar_labels", "exclude", "relabel",
                        "out", "name", "tensorboard", "tta", "folds"}
    with pytest.raises(TypeError):
        ImageClassifier(learning_rate=0.1)


def test_construction_stores_arguments_as_given_and_checks_nothing():
    clf = ImageClassifier(optimizer="adamx", lr=-1.0, head="mlp:0")
    assert (clf.optimizer, clf.lr, clf.head) == ("adamx", -1.0, "mlp:0")
    with pytest.raises(TransferlabError, match="--optimizer 'adamx' is not known"):
        clf.fit("digits")
    assert not hasattr(clf, "classes_")


def test_get_params_and_set_params_round_trip():
    clf = ImageClassifier(strategy="finetune", lr=3e-4, head="mlp:256")
    params = clf.get_params()
    assert params["strategy"] == "finetune" and params["lr"] == 3e-4 and params["backbone"] is None
    assert ImageClassifier(**params).get_params() == params
    assert clf.set_params(lr=0.01, unfreeze="2") is clf
    assert clf.get_params() == {**params, "lr": 0.01, "unfreeze": "2"}
    with pytest.raises(ValueError, match="lr_typo"):
        clf.set_params(lr_typo=1)
    assert is_classifier(clf) and "lr=0.01" in repr(clf)


def test_clone_gives_an_unfitted_estimator_with_equal_parameters(ant_bee_paths):
    paths, labels = ant_bee_paths
    clf = ImageClassifier(strategy="features", image_size=64, progress=False).fit(paths[::3], labels[::3])
    assert clf.classes_ == ["ants", "bees"]
    twin = clone(clf)
    assert type(twin) is ImageClassifier and twin is not clf
    assert twin.get_params() == clf.get_params()
    assert not any(hasattr(twin, a) for a in ("classes_", "network_", "config_", "fit_info_"))
    with pytest.raises(TransferlabError, match="not fitted"):
        twin.predict(paths[:2])


@pytest.mark.slow
def test_cross_val_score_on_image_paths(ant_bee_paths):
    paths, labels = ant_bee_paths
    scores = cross_val_score(ImageClassifier(strategy="features", image_size=64, progress=False), paths, labels, cv=3)
    assert len(scores) == 3 and all(0.6 <= s <= 1.0 for s in scores), scores


def test_integer_labels_come_back_as_integers(ant_bee_paths):
    paths, labels = ant_bee_paths
    y = np.array([0 if label == "ants" else 1 for label in labels])
    clf = ImageClassifier(strategy="features", image_size=64, progress=False).fit(paths[::2], y[::2])
    assert clf.classes_ == [0, 1]
    predicted = clf.predict(paths[1::2])
    assert predicted.dtype.kind == "i" and set(predicted.tolist()) <= {0, 1}
    assert clf.score(paths[1::2], y[1::2]) == np.mean(predicted == y[1::2])


def test_an_unknown_optimizer_fails_in_under_two_seconds_with_one_line():
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "transferlab", "train", "digits", "--optimizer", "adamx"],
                          capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - started
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--optimizer 'adamx'" in lines[0] and "adamw" in lines[0], proc.stderr
    assert "torch" not in proc.stderr and seconds < 2.0, seconds


def test_a_validation_set_is_given_by_keyword(ant_bee_paths, hymenoptera):
    with pytest.raises(TransferlabError, match="val="):
        ImageClassifier(progress=False).fit(str(hymenoptera / "train"), str(hymenoptera / "val"))


def test_a_list_of_images_needs_its_labels(ant_bee_paths):
    with pytest.raises(TransferlabError, match="needs their labels"):
        ImageClassifier(progress=False).fit(ant_bee_paths[0])
    with pytest.raises(TransferlabError, match="60 images but 2 labels"):
        ImageClassifier(progress=False).fit(ant_bee_paths[0], ["ants", "bees"])


def test_the_estimator_is_what_transferlab_exports():
    assert transferlab.ImageClassifier is ImageClassifier


class _Fails(transferlab.Callback):
    def on_epoch_begin(self, trainer):
        raise RuntimeError("out of memory, say")


def test_a_fit_that_raises_leaves_the_classifier_as_it_was(ant_bee_paths):
    """Learned state is set only when a fit succeeds: no half-trained network that predict takes."""
    paths, labels = ant_bee_paths
    clf = ImageClassifier(strategy="frozen", image_size=32, epochs=1, progress=False)
    with pytest.raises(RuntimeError):
        clf.fit(paths, labels, callbacks=[_Fails()])
    assert not hasattr(clf, "network_") and not hasattr(clf, "classes_")
    with pytest.raises(TransferlabError, match="not fitted yet"):
        clf.predict(paths[:1])
    clf.fit(paths, labels)
    before = clf.predict_proba(paths[:2])
    with pytest.raises(RuntimeError):
        clf.fit(paths, labels, callbacks=[_Fails()])
    assert (clf.predict_proba(paths[:2]) == before).all()  # still the earlier fit


def test_the_options_are_checked_once_per_fit(ant_bee_paths, monkeypatch):
    calls = []
    original = RunConfig.validate
    monkeypatch.setattr(RunConfig, "validate", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    paths, labels = ant_bee_paths
    ImageClassifier(strategy="features", image_size=32, progress=False).fit(paths, labels)
    assert len(calls) == 1
