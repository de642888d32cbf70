"""Calibrated probabilities: temperature scaling of a fitted model's logits, with a bias per class
where that helps (bias-corrected temperature scaling, Alexandari et al. 2020), fitted on images
the model did not train on (validation, or out-of-fold), and how far confidences stray from
frequencies (expected calibration error over 15 bins, the reliability diagram's data).

One scale for every class, not one per class (vector scaling): the classes' ranking by logit
then only moves by the biases, half the parameters fit on a small set, and the probabilities
before calibration are recovered exactly from the calibrated ones (the report's "before" costs
no second pass)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold

BINS = 15
FOLDS = 5
# Below this many images per class, the class biases are not even tried: their cross-validated
# loss would rest on a handful of images per parameter.
BIAS_MIN_PER_CLASS = 10
# Temperatures stay within e^-3 to e^3 (0.05 to 20): six val images with one confident mistake
# flattened a candidate's probabilities to 0.5000 and 0.5000, where float32 ties could pick a class
# the logits did not rank first.
LOG_SCALE_LIMIT = 3.0


def fit_calibration(log_proba: np.ndarray, labels: np.ndarray, seed: int = 0, fitted_on: str = "val") -> dict:
    """The scaling of `log_proba` (log-probabilities or logits, one row per image) that minimises
    the log loss of `labels`: one temperature, with a bias per class where the cross-validated log
    loss says they help. Returns what `Calibrate.set` takes, plus how it was chosen."""
    z = _finite(log_proba)
    y = np.asarray(labels, dtype=np.int64)
    k = z.shape[1]
    chosen, losses, method = _fit(z, y, biases=False), {}, "temperature"
    counts = np.bincount(y, minlength=k)
    if counts.min() >= BIAS_MIN_PER_CLASS and len(y) >= 2 * FOLDS:
        losses = {"temperature": _cv_loss(z, y, False, seed), "temperature + class biases": _cv_loss(z, y, True, seed)}
        if losses["temperature + class biases"] < losses["temperature"]:
            chosen, method = _fit(z, y, biases=True), "temperature + class biases"
    scale, bias = chosen
    return {"method": method, "temperature": round(1.0 / scale[0], 6),
            "scale": scale, "bias": bias, "fitted_on": fitted_on, "images": int(len(y)),
            "log_loss_before": _loss(z, y, [1.0], [0.0] * k), "log_loss_after": _loss(z, y, scale, bias),
            "cross_validated_log_loss": {m: round(v, 6) for m, v in losses.items()}}


def apply(log_proba: np.ndarray, calibration: dict | None) -> np.ndarray:
    """Probabilities after `calibration` (None: the softmax of `log_proba` as it is)."""
    z = torch.from_numpy(_finite(log_proba))
    if calibration:
        z = z * torch.tensor(calibration["scale"], dtype=torch.float64) + torch.tensor(calibration["bias"],
                                                                                          dtype=torch.float64)
    return torch.softmax(z, 1).numpy()


def uncalibrated(proba: np.ndarray, calibration: dict | None) -> np.ndarray:
    """The probabilities the model gave before `calibration`, recovered exactly from the
    calibrated ones: log p = z * s + b - c (c a row constant), so (log p - b) / s is z less a
    row constant, which the softmax ignores."""
    if not calibration:
        return np.asarray(proba, dtype=np.float64)
    z = (_finite(np.log(np.clip(np.asarray(proba, np.float64), 1e-300, None))) - np.asarray(calibration["bias"])) / np.asarray(
        calibration["scale"])
    return torch.softmax(torch.from_numpy(z), 1).numpy()


def reliability(proba: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict:
    """Expected calibration error (the images' share-weighted gap between accuracy and mean
    confidence in `bins` equal-width bins of the top probability) and the diagram's bins."""
    proba = np.asarray(proba, dtype=np.float64)
    if not len(proba):
        return {"ece": float("nan"), "bins": [], "images": 0}
    confidence = proba.max(1)
    correct = proba.argmax(1) == np.asarray(labels)
    # Bin b holds confidences in (b/bins, (b+1)/bins]; the first also holds 0.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        if not inside.any():
            continue
        acc, conf = float(correct[inside].mean()), float(confidence[inside].mean())
        ece += inside.mean() * abs(acc - conf)
        rows.append({"low": b / bins, "high": (b + 1) / bins, "images": int(inside.sum()),
                     "accuracy": round(acc, 6), "confidence": round(conf, 6)})
    return {"ece": float(ece), "bins": rows, "images": int(len(proba))}


# -- fitting -----------------------------------------------------------------------------------

def _finite(log_proba: np.ndarray) -> np.ndarray:
    z = np.asarray(log_proba, dtype=np.float64)
    # log(0) of a probability that underflowed: far below the rest, but finite for the optimiser
    return np.where(np.isfinite(z), z, np.nanmin(np.where(np.isfinite(z), z, np.nan)) - 50.0)


def _targets(y: np.ndarray, k: int) -> torch.Tensor:
    """Each image's target: its class at (n + 1) / (n + 2), the rest shared by the other classes.
    Laplace's rule of succession, as Platt smoothed the targets of his scaling: n images all
    classified right say the next one is right with probability (n + 1) / (n + 2), not 1, so a
    small calibration set that the model separates cannot drive the scale to infinity (37 val
    images all right made hymenoptera's probabilities 0 or 1 and its test log loss 1.7)."""
    n = len(y)
    target = torch.full((n, k), 1.0 / ((n + 2) * max(k - 1, 1)), dtype=torch.float64)
    target[torch.arange(n), torch.from_numpy(y)] = (n + 1) / (n + 2)
    return target


def _fit(z: np.ndarray, y: np.ndarray, biases: bool) -> tuple[list[float], list[float]]:
    """L-BFGS on the mean cross-entropy with the smoothed targets, in float64; the scale is fitted
    as its logarithm, so it stays positive and the ranking of the classes cannot flip."""
    k = z.shape[1]
    zt, yt = torch.from_numpy(z), _targets(y, k)
    log_scale = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k if biases else 1, dtype=torch.float64, requires_grad=biases)
    params = [log_scale, bias] if biases else [log_scale]
    optimiser = torch.optim.LBFGS(params, lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(zt * log_scale.clamp(-LOG_SCALE_LIMIT, LOG_SCALE_LIMIT).exp() + bias,
                                                 yt)
        loss.backward()
        return loss

    optimiser.step(closure)
    scale = log_scale.detach().clamp(-LOG_SCALE_LIMIT, LOG_SCALE_LIMIT).exp()
    if not torch.isfinite(scale).all():  # a degenerate set (one class, all right): leave it as it was
        return [1.0], [0.0] * k
    return scale.tolist(), bias.detach().tolist() if biases else [0.0] * k


def _loss(z: np.ndarray, y: np.ndarray, scale, bias) -> float:
    p = apply(z, {"scale": scale, "bias": bias})
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-300, None)).mean())


def _cv_loss(z: np.ndarray, y: np.ndarray, biases: bool, seed: int) -> float:
    """The mean log loss of the scaling fitted on the other folds."""
    counts = np.bincount(y)
    splitter = (StratifiedKFold(FOLDS, shuffle=True, random_state=seed) if counts[counts > 0].min() >= FOLDS
                else KFold(FOLDS, shuffle=True, random_state=seed))
    total = 0.0
    for fit_rows, held in splitter.split(z, y):
        scale, bias = _fit(z[fit_rows], y[fit_rows], biases)
        total += _loss(z[held], y[held], scale, bias) * len(held)
    return total / len(y)
