"""Metrics on held-out predictions, and the short table people read in the terminal."""

from __future__ import annotations

import hashlib

import numpy as np
from sklearn import metrics as skm

from ..trust.calibration import reliability
from .intervals import balanced_accuracy_interval, wilson_interval


def compute_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """Accuracy and balanced accuracy with their 95% intervals, top-5 (more than 5 classes), log
    loss, expected calibration error, per-class precision/recall/F1, confusion."""
    y_true = np.asarray(y_true)
    # float32 softmax rows sum to 1 only within 1e-7, more than scikit-learn's check allows
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(1, keepdims=True)
    labels = np.arange(len(classes))
    pred = proba.argmax(1)
    p, r, f, support = skm.precision_recall_fscore_support(
        y_true, pred, labels=labels, zero_division=0)
    out = {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "log_loss": float(skm.log_loss(y_true, proba, labels=labels)),
        # scikit-learn's definition (mean recall over the classes present), without its warning
        # when scoring new images of a single class
        "balanced_accuracy": float(r[support > 0].mean()) if support.any() else float("nan"),
        "accuracy_ci": _listed(wilson_interval(int((pred == y_true).sum()), len(y_true))),
        "balanced_accuracy_ci": _listed(balanced_accuracy_interval(y_true, pred)),
        # how far the top probability strays from the accuracy (15 bins): the probabilities' honesty
        "ece": float(reliability(proba, y_true)["ece"]),
    }
    if len(classes) > 5:
        out["top5_accuracy"] = float(skm.top_k_accuracy_score(y_true, proba, k=5, labels=labels))
    out["per_class"] = {
        c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, c in enumerate(classes)}
    out["confusion_matrix"] = skm.confusion_matrix(y_true, pred, labels=labels).tolist()
    return out


def _listed(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [float(interval[0]), float(interval[1])]


def prediction_record(split: str, names: list[str], labels: np.ndarray, proba: np.ndarray) -> dict:
    """Which scored images the model got right, compactly ("1" right, "0" wrong, in order), and
    a digest of the ordered image names: what compare's paired test needs of each run, and how
    it knows that two runs scored the same images."""
    correct = np.asarray(proba).argmax(1) == np.asarray(labels)
    return {"split": split, "images": hashlib.sha1("\n".join(names).encode()).hexdigest(),
            "correct": "".join("1" if c else "0" for c in correct)}


def accuracy_text(m: dict) -> str:
    """"accuracy 0.9300 (95% CI 0.862-0.966)": the words every command prints its score in."""
    interval = m.get("accuracy_ci")
    return f"accuracy {m['accuracy']:.4f}" + (" (95% CI {:.3f}-{:.3f})".format(*interval) if interval else "")


def format_metrics(m: dict, split: str) -> str:
    head = f"{split}: {accuracy_text(m)}"
    if "top5_accuracy" in m:
        head += f"  top-5 {m['top5_accuracy']:.4f}"
    head += f"  log loss {m['log_loss']:.4f}" + (f"  ECE {m['ece']:.4f}" if "ece" in m else "") + f"  ({m['n']} images)"
    width = max(len("class"), *(len(c) for c in m["per_class"]))
    lines = [head, f"  {'class':<{width}}  precision  recall     f1  support"]
    for c, s in m["per_class"].items():
        lines.append(f"  {c:<{width}}  {s['precision']:9.3f}  {s['recall']:6.3f}  {s['f1']:5.3f}  {s['support']:7d}")
    return "\n".join(lines)
