"""Logistic regression on cached features: the row-space shortcut for wide features is exact."""

import numpy as np
import pytest
import torch
from torch import nn

from transferlab.features import logistic


def _wide_problem(seed=0, n=60, d=900, classes=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    y = np.repeat(np.arange(classes), n // classes)
    x = (0.2 * centres[y] + rng.normal(size=(n, d))).astype(np.float32)
    y_val = np.repeat(np.arange(classes), 5)
    x_val = (0.2 * centres[y_val] + rng.normal(size=(len(y_val), d))).astype(np.float32)
    return x, y, x_val, y_val


def _fitted_probabilities(x, y, x_val, y_val, use_val):
    head = nn.Linear(x.shape[1], 3)
    info = logistic.fit_logistic(head, x, y, x_val if use_val else None, y_val if use_val else None, 3)
    with torch.no_grad():
        return info, torch.softmax(head(torch.from_numpy(x_val)), 1).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("use_val", [True, False])
def test_wide_features_fit_in_the_training_rows_span_give_the_full_fit(monkeypatch, use_val):
    x, y, x_val, y_val = _wide_problem()
    assert logistic._row_space(torch.from_numpy(x.astype(np.float64))).shape == (900, 60)
    reduced_info, reduced = _fitted_probabilities(x, y, x_val, y_val, use_val)
    monkeypatch.setattr(logistic, "_row_space", lambda z: None)
    full_info, full = _fitted_probabilities(x, y, x_val, y_val, use_val)
    assert reduced_info == full_info  # the same C, chosen the same way
    np.testing.assert_allclose(reduced, full, atol=2e-3)


def test_narrow_features_are_fitted_as_they_are():
    assert logistic._row_space(torch.zeros(100, 150, dtype=torch.float64)) is None
