"""Ensemble selection (Caruana et al. 2004): members added greedily, with replacement, to the
average of validation probabilities that scores best; a member's weight is how often it was
picked. Accuracy decides each step, log loss breaks its ties; the best round is kept, so one
candidate alone is what a larger ensemble must beat."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROUNDS = 25  # AutoGluon's default for its weighted ensemble


@dataclass
class Selection:
    counts: list[int]          # per candidate: times picked (0: not a member)
    accuracy: float
    log_loss: float
    rounds: int

    @property
    def weights(self) -> list[float]:
        total = sum(self.counts)
        return [c / total for c in self.counts]

    @property
    def members(self) -> list[int]:
        return [k for k, c in enumerate(self.counts) if c]


def scores(proba: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean log loss) of probabilities against labels."""
    picked = np.clip(proba[np.arange(len(labels)), labels], 1e-15, 1.0)
    return float((proba.argmax(1) == labels).mean()), float(-np.log(picked).mean())


def select(probabilities: list[np.ndarray], labels: np.ndarray, rounds: int = ROUNDS,
           allowed: list[bool] | None = None) -> Selection:
    """The greedy selection over `probabilities` (one (images, classes) array per candidate, the
    same images in the same order). `allowed[k]` False keeps candidate k out."""
    allowed = allowed or [True] * len(probabilities)
    counts = [0] * len(probabilities)
    total = np.zeros_like(probabilities[0], dtype=np.float64)
    best = None
    for step in range(1, rounds + 1):
        trials = [(scores((total + p) / step, labels), k) for k, p in enumerate(probabilities) if allowed[k]]
        # Highest accuracy, then lowest log loss, then the earliest candidate (the cheaper one).
        (accuracy, loss), k = max(trials, key=lambda t: (t[0][0], -t[0][1], -t[1]))
        counts[k] += 1
        total += probabilities[k]
        if best is None or (accuracy, -loss) > (best.accuracy, -best.log_loss):
            best = Selection(list(counts), accuracy, loss, step)
    return best
