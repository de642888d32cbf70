"""Checks that several test modules make on a finished run."""

from __future__ import annotations

import numpy as np

from transferlab import ImageClassifier
from transferlab.inference.export import export


def assert_reload_predict_and_export_agree(run, images) -> None:
    """The saved run predicts what the trained one did, from the feature cache and over pixels,
    and its ONNX export agrees."""
    trained = run.classifier.predict_proba(images)
    loaded = ImageClassifier.load(run.path)
    loaded.progress = False
    np.testing.assert_array_equal(loaded.predict_proba(images), trained)
    loaded.config_.feature_cache = False  # the whole network over pixels, as an export runs it
    np.testing.assert_allclose(loaded.predict_proba(images), trained, atol=1e-5)
    exported = export(run.path, check_images=images)
    assert exported["max_abs_diff"] <= 1e-4 and exported["inputs_checked"] >= len(images)
