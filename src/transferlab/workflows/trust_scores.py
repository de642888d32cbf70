"""How far a finished run can be trusted, measured on its score split: calibration error before
and after the run's calibration, and the unknown-image detector's trade-off (known images kept
against the accuracy on them, at several thresholds read from held-out training distances)."""

from __future__ import annotations

import numpy as np

from ..trust.calibration import reliability, uncalibrated
from ..trust.unknown import KEEP_GRID


def calibration_scores(calibration: dict | None, labels: np.ndarray, proba: np.ndarray, split: str) -> dict:
    """Expected calibration error (15 bins) and the reliability diagram's bins of the score
    split's probabilities, after the run's calibration and without it (recovered exactly)."""
    before = reliability(uncalibrated(proba, calibration), labels)
    after = reliability(proba, labels)
    fitted = {k: v for k, v in (calibration or {}).items() if k not in ("scale", "bias")}
    return {"split": split, "fitted": fitted or None, "ece_before": before["ece"], "ece_after": after["ece"],
            "bins": 15, "before": before, "after": after}


def unknown_scores(detector, distances: np.ndarray, labels: np.ndarray, proba: np.ndarray, split: str) -> dict:
    """The share of the score split's (known) images the threshold keeps, and at each share of
    held-out distances in KEEP_GRID: the threshold, the share of the split kept and the accuracy
    on the kept images."""
    correct = proba.argmax(1) == labels
    rows = []
    for keep in sorted({*KEEP_GRID, detector.keep}):
        threshold = detector.threshold_for(keep)
        kept = distances <= threshold
        rows.append({"keep": keep, "threshold": round(threshold, 6), "kept": float(kept.mean()),
                     "accuracy_kept": float(correct[kept].mean()) if kept.any() else None})
    return {"split": split, "threshold": detector.threshold, "keep": detector.keep,
            "kept": float((distances <= detector.threshold).mean()), "images": int(len(distances)),
            "trade_off": rows, **detector.to_dict()}


def trust_lines(metrics: dict) -> list[str]:
    """The summary's lines on calibration and unknown images."""
    lines = []
    calibration, unknown = metrics.get("calibration"), metrics.get("unknown")
    if calibration and calibration.get("fitted"):
        fitted = calibration["fitted"]
        lines.append(f"calibration: {fitted['method']} (temperature {fitted['temperature']:.3g}), fitted on "
                     f"{fitted['images']} images ({fitted['fitted_on']}); expected calibration error on "
                     f"{calibration['split']} {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}")
    if unknown:
        lines.append(f"unknown images: distance threshold {unknown['threshold']:.3f} (keeps {unknown['keep']:.0%} of "
                     f"the training images' held-out distances) kept {unknown['kept']:.1%} of {unknown['split']}; "
                     "`transferlab predict RUN IMAGES --reject` answers unknown beyond it")
    return lines
