"""How far to trust a score on held-out images: 95% intervals for accuracy (Wilson) and balanced
accuracy (bootstrap), and a paired test of two models on the same images (exact McNemar)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
RESAMPLES = 2000


def _z(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(correct: float, n: float, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of the proportion correct / n; None when nothing was scored.

    The closed formula rather than scipy's binomtest: it also takes a fractional count, as
    compare's table needs (a proportion pooled over seeds, at one run's number of images)."""
    if n <= 0:
        return None
    z, p = _z(confidence), correct / n
    shrink = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half = z / shrink * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at 0 and n correct the bounds are 0 and 1 exactly, which rounding would miss by 1e-16
    return (0.0 if correct <= 0 else max(0.0, centre - half)), (1.0 if correct >= n else min(1.0, centre + half))


def balanced_accuracy_interval(y_true, y_pred, resamples: int = RESAMPLES, seed: int = 0,
                               confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """A percentile bootstrap interval of balanced accuracy (mean recall over the classes present);
    the same for the same seed, so a resumed run writes the same metrics.json.

    Stratified: each class is resampled within itself, since the splits are cut per class and
    a test split's class counts are fixed by design, not drawn; it also never makes a resample
    that lacks a class, which would change what balanced accuracy averages. Resampling a class's
    n_c images and counting the correct ones is a Binomial(n_c, recall_c) draw, so the draws are
    made as that directly (the same distribution, without n_c indices per resample).
    Where a class's recall is 0 or 1 its draws cannot vary: the interval then reflects the other
    classes only, a known weakness of the bootstrap on few images."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = np.unique(y_true)
    if not len(present):
        return None
    rng = np.random.default_rng(seed)
    recalls = np.empty((resamples, len(present)))
    for j, c in enumerate(present):
        mine = y_true == c
        n_c = int(mine.sum())
        recalls[:, j] = rng.binomial(n_c, (y_pred[mine] == c).mean(), resamples) / n_c
    means = recalls.mean(1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedTest:
    """A against B on the same images: `a_only` images only A got right, `b_only` only B;
    the two-sided exact p-value, and the verdict about A at `ALPHA`."""

    a_only: int
    b_only: int
    p_value: float
    verdict: str  # "better", "worse" or "not different"


def mcnemar(a_correct, b_correct, alpha: float = ALPHA) -> PairedTest:
    """Exact McNemar: under "A and B are as good", each image only one of them got right is
    equally likely to be A's or B's, so A's count of them is Binomial(discordant, 1/2)."""
    a_correct, b_correct = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a_correct.shape != b_correct.shape:
        raise ValueError(f"a paired test needs the same images: {a_correct.shape} and {b_correct.shape} scores")
    return _exact(int((a_correct & ~b_correct).sum()), int((~a_correct & b_correct).sum()), alpha)


def paired_over_runs(pairs: list[tuple[str, np.ndarray, np.ndarray]], alpha: float = ALPHA) -> PairedTest:
    """McNemar over several pairs of runs, each pair (images, A's correctness, B's) scored on the
    images named by `images` (a digest of the ordered image names).

    Pairs on the same images (a folder's own test/ under every seed) are summed image by image
    and each image votes once, for whichever config got it right more often: counted once per
    seed, one image would weigh as several and the p-value would come out falsely small. Pairs
    on different images (each seed's own random split) join side by side; an image that two
    seeds both drew into test still counts in each, the residue of this shortcut."""
    votes: dict[str, np.ndarray] = {}
    for images, a, b in pairs:
        diff = np.asarray(a, int) - np.asarray(b, int)
        votes[images] = votes[images] + diff if images in votes else diff
    a_only = sum(int((v > 0).sum()) for v in votes.values())
    b_only = sum(int((v < 0).sum()) for v in votes.values())
    return _exact(a_only, b_only, alpha)


def _exact(a_only: int, b_only: int, alpha: float) -> PairedTest:
    discordant = a_only + b_only
    p = float(stats.binomtest(a_only, discordant, 0.5).pvalue) if discordant else 1.0
    verdict = "not different" if p >= alpha else ("better" if a_only > b_only else "worse")
    return PairedTest(a_only, b_only, p, verdict)
