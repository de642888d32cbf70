"""Metrics on held-out predictions, and the short table people read in the terminal."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def compute_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, top-5 (more than 5 classes), log loss, per-class precision/recall/F1, confusion."""
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
    }
    if len(classes) > 5:
        out["top5_accuracy"] = float(skm.top_k_accuracy_score(y_true, proba, k=5, labels=labels))
    out["per_class"] = {
        c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, c in enumerate(classes)}
    out["confusion_matrix"] = skm.confusion_matrix(y_true, pred, labels=labels).tolist()
    return out


def format_metrics(m: dict, split: str) -> str:
    head = f"{split}: accuracy {m['accuracy']:.4f}"
    if "top5_accuracy" in m:
        head += f"  top-5 {m['top5_accuracy']:.4f}"
    head += f"  log loss {m['log_loss']:.4f}  ({m['n']} images)"
    width = max(len("class"), *(len(c) for c in m["per_class"]))
    lines = [head, f"  {'class':<{width}}  precision  recall     f1  support"]
    for c, s in m["per_class"].items():
        lines.append(f"  {c:<{width}}  {s['precision']:9.3f}  {s['recall']:6.3f}  {s['f1']:5.3f}  {s['support']:7d}")
    return "\n".join(lines)
