"""Logistic regression on cached features, written into a torch head so every model predicts one way.

(An MLP head on features trains with the engine like any other head.)
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold
from torch import nn


# Inverse regularisation strengths tried for logistic regression on standardised features.
C_GRID = np.logspace(-4, 1, 11)


def fit_logistic(head: nn.Module, x_train: np.ndarray, y_train: np.ndarray,
                 x_val: np.ndarray | None, y_val: np.ndarray | None, num_classes: int,
                 seed: int = 0) -> dict:
    """Fit the last Linear layer of `head` as multinomial logistic regression; return what was chosen.

    C is chosen by validation log loss, or by stratified cross-validation on the training split
    when there is no validation split.
    """
    # float64 throughout: float32 probabilities miss scikit-learn's sum-to-one check
    x_train = x_train.astype(np.float64)
    mu = x_train.mean(0)
    sigma = x_train.std(0) + 1e-6
    z_train = (x_train - mu) / sigma
    if x_val is not None:
        folds = [(np.arange(len(y_train)), (x_val - mu) / sigma, y_val)]
        chosen_by = "val log loss"
    else:
        n_folds = int(min(5, np.bincount(y_train).min()))
        splitter = StratifiedKFold(max(n_folds, 2), shuffle=True, random_state=seed)
        folds = [] if n_folds < 2 else [(fit, z_train[held], y_train[held])
                                        for fit, held in splitter.split(z_train, y_train)]
        chosen_by = f"{n_folds}-fold cross-validation on train"
    if folds:
        best_c = float(C_GRID[int(np.argmin(_log_losses(z_train, y_train, folds, num_classes)))])
    else:
        best_c, chosen_by = 1.0, "default (a class has a single training image)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(C=best_c, max_iter=1000).fit(z_train, y_train)
    weight, bias = _as_multiclass(model, num_classes)
    # Fold the standardisation into the layer: w.(x - mu)/sigma + b = (w/sigma).x + (b - (w/sigma).mu)
    weight = weight / sigma
    bias = bias - weight @ mu
    linear = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        linear.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    return {"classifier": "logistic regression", "C": best_c, "C_chosen_by": chosen_by}


def _log_losses(z_train, y_train, folds, num_classes: int) -> np.ndarray:
    """Mean held-out log loss of each C in C_GRID over the folds (warm-started along the grid)."""
    losses = np.zeros(len(C_GRID))
    for fit_idx, z_held, y_held in folds:
        model = LogisticRegression(max_iter=300, warm_start=True)
        for i, c in enumerate(C_GRID):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.set_params(C=c).fit(z_train[fit_idx], y_train[fit_idx])
            proba = np.zeros((len(y_held), num_classes))
            proba[:, model.classes_] = model.predict_proba(z_held)
            losses[i] += log_loss(y_held, proba, labels=np.arange(num_classes))
    return losses / len(folds)


def _as_multiclass(model, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits for every class; scikit-learn keeps one row for two classes (softmax([0, z]) = sigmoid(z))."""
    coef, intercept = model.coef_.astype(np.float64), model.intercept_.astype(np.float64)
    weight = np.zeros((num_classes, coef.shape[1]))
    bias = np.zeros(num_classes)
    if coef.shape[0] == 1:
        weight[model.classes_[1]], bias[model.classes_[1]] = coef[0], intercept[0]
    else:
        weight[model.classes_], bias[model.classes_] = coef, intercept
    return weight, bias
