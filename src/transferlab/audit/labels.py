"""Suspected label errors by confident learning (Northcutt, Jiang and Chuang, "Confident Learning:
Estimating Uncertainty in Dataset Labels", JAIR 2021), written from the paper: out-of-fold
probabilities of cached features, the per-class thresholds, the confident joint calibrated to
the label counts, and the images whose given label looks wrong, most suspect first.

`find_label_issues` is the method on probabilities (numpy only); `check_features` gets those
probabilities from feature vectors first (logistic regression, out of fold), and averages
several views of the same images (a centre crop and the whole image squashed) when given them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METHODS = ("prune_by_class", "prune_by_noise_rate")
# Both are the paper's; measured with benchmarks/label_noise.py's noise (5% and 10% of each train
# class moved to another class, seeds 0-2; top-N precision, N = the labels moved; Lite0, crop and
# squash averaged). cars43: pruning by class (each class's lowest self-confidence, as many as its
# off-diagonal counts) 0.78-0.87, by noise rate (each off-diagonal cell's largest margins)
# 0.69-0.85; on two classes (hymenoptera) a row has one off-diagonal cell and they agree.
# Ranking by self-confidence beat ranking by margin (the given label's probability less the
# largest other's): cars43, crop, 0.63-0.72 against 0.39-0.53.
DEFAULT_METHOD = "prune_by_class"
# Inverse L2 strength of the out-of-fold logistic regression (standardised, L2-normalised
# features). Fixed, not searched: a grid search of the run's kind (11 values x 5 folds) would cost
# ten times the check, and top-N precision hardly moves over 0.003-0.03 (cars43 0.78-0.85 at
# 0.003, 0.78-0.87 at 0.01, 0.81-0.85 at 0.03), while log loss would pick 0.1 on cars43 (lower
# precision, crop, by noise rate: 0.63-0.67 against 0.63-0.72) and 0.003 on hymenoptera.
LABEL_CHECK_C = 0.01
# The out-of-fold fits stop after 15 L-BFGS iterations, long before the run's own classifier
# would: stopping early regularises a little more, and ranks as well (cars43, both views, seeds
# 0-2: top-N precision 0.81-0.85 after 15 iterations, 0.78-0.87 after 100; hymenoptera the same
# flags), for a fraction of the seconds (cars43 on 2 shared cores: about a second a view).
TOLERANCE, MAX_ITER = 1e-4, 15
EXAMPLES = 3  # typical images kept per class


@dataclass
class LabelIssue:
    """One image whose given label looks wrong: its row among the images checked, its path, the
    label it has, the label the out-of-fold model suggests, and their probabilities."""
    index: int
    path: str
    given: str
    suggested: str
    self_confidence: float        # the out-of-fold probability of the given label
    suggested_probability: float

    def to_dict(self) -> dict:
        return {"index": self.index, "path": self.path, "given": self.given, "suggested": self.suggested,
                "self_confidence": round(self.self_confidence, 4),
                "suggested_probability": round(self.suggested_probability, 4)}


@dataclass
class LabelIssues:
    """The result of the label check: what `transferlab audit --labels` reports and writes."""
    issues: list[LabelIssue]               # most suspect first (lowest self-confidence)
    classes: list[str]
    images: int                            # how many were checked
    thresholds: np.ndarray                 # (K,) per class: mean probability of it over its images
    confident_joint: np.ndarray            # (K, K) given x true-label guess, calibrated to the label counts
    noise_rate: dict[str, float]           # per given class: the share of its images estimated mislabelled
    method: str = DEFAULT_METHOD
    examples: dict[str, list[str]] = field(default_factory=dict)  # per class: its most typical images' paths
    features: dict = field(default_factory=dict)  # where the probabilities came from

    @property
    def share(self) -> float:
        """The flagged images' share of those checked."""
        return len(self.issues) / max(self.images, 1)

    def to_dict(self) -> dict:
        return {"method": self.method, "images": self.images, "flagged": len(self.issues),
                "share": round(self.share, 4), "classes": list(self.classes),
                "thresholds": [round(float(t), 4) for t in self.thresholds],
                "confident_joint": [[round(float(v), 2) for v in row] for row in self.confident_joint],
                "noise_rate": {c: round(r, 4) for c, r in self.noise_rate.items()},
                "features": self.features, "examples": self.examples, "issues": [i.to_dict() for i in self.issues]}


def per_class_thresholds(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """t_j: the mean probability of class j over the images labelled j (its expected
    self-confidence); infinite for a class with no image, which then is never confidently guessed."""
    k = proba.shape[1]
    counts = np.bincount(labels, minlength=k)
    sums = np.bincount(labels, weights=proba[np.arange(len(labels)), labels], minlength=k)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)


def confident_joint(proba: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """C[given, guess]: each image whose probability reaches its class's threshold for at least one
    class counts once, under the most probable of those classes; the others do not count."""
    k = proba.shape[1]
    above = proba >= thresholds
    counted = above.any(1)
    guess = np.where(above, proba, -np.inf).argmax(1)
    joint = np.zeros((k, k))
    np.add.at(joint, (labels[counted], guess[counted]), 1)
    return joint


def calibrate(joint: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row scaled to the number of images with that given label (images that reached no
    threshold are spread like those that did). A row where none did stays on the diagonal: no
    evidence of noise there."""
    k = joint.shape[0]
    counts = np.bincount(labels, minlength=k).astype(float)
    rows = joint.sum(1)
    scaled = joint / np.maximum(rows, 1)[:, None] * counts[:, None]
    empty = rows == 0
    scaled[empty] = 0.0
    scaled[empty, np.flatnonzero(empty)] = counts[empty]
    return scaled


def find_label_issues(proba: np.ndarray, labels: np.ndarray, classes: list[str] | None = None,
                      paths: list[str] | None = None, method: str = DEFAULT_METHOD) -> LabelIssues:
    """Images whose given label `labels[i]` looks wrong, from out-of-fold probabilities `proba`
    (n x K: what a model that never saw image i says of it).

    How many: the calibrated confident joint's off-diagonal counts. Which: per class, the images
    with the lowest probability of their own label (prune_by_class), or per off-diagonal cell the
    images with the largest margin of that cell's class over their own (prune_by_noise_rate). An
    image whose given label is still the most probable is never flagged: the model agrees with it.
    Ranked by self-confidence, lowest first; the suggested label is the most probable class."""
    if method not in METHODS:
        raise ValueError(f"method '{method}' is not one of {', '.join(METHODS)}")
    proba = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n, k = proba.shape
    classes = list(classes) if classes is not None else [str(j) for j in range(k)]
    paths = list(paths) if paths is not None else [str(i) for i in range(n)]
    thresholds = per_class_thresholds(proba, labels)
    joint = calibrate(confident_joint(proba, labels, thresholds), labels)
    own = proba[np.arange(n), labels]
    chosen: set[int] = set()
    for given in range(k):
        members = np.flatnonzero(labels == given)
        if method == "prune_by_class":
            count = int(round(joint[given].sum() - joint[given, given]))
            chosen.update(members[np.argsort(own[members], kind="stable")[:count]].tolist())
            continue
        for other in range(k):
            count = int(round(joint[given, other])) if other != given else 0
            if count:
                margin = proba[members, other] - own[members]
                chosen.update(members[np.argsort(-margin, kind="stable")[:count]].tolist())
    flagged = np.array(sorted(chosen), dtype=np.int64)
    flagged = flagged[proba[flagged].argmax(1) != labels[flagged]]
    flagged = flagged[np.argsort(own[flagged], kind="stable")]
    suggested = proba[flagged].argmax(1) if len(flagged) else np.zeros(0, np.int64)
    issues = [LabelIssue(int(i), paths[i], classes[labels[i]], classes[s], float(own[i]), float(proba[i, s]))
              for i, s in zip(flagged.tolist(), suggested.tolist())]
    counts = np.bincount(labels, minlength=k)
    noise = {c: float((joint[j].sum() - joint[j, j]) / counts[j]) if counts[j] else 0.0
             for j, c in enumerate(classes)}
    # What each class looks like, to show beside a flagged image: its images the model is surest of.
    examples = {}
    for j, c in enumerate(classes):
        members = np.flatnonzero(labels == j)
        examples[c] = [paths[i] for i in members[np.argsort(-own[members], kind="stable")[:EXAMPLES]]]
    return LabelIssues(issues, classes, n, thresholds, joint, noise, method, examples)


def out_of_fold_probabilities(views: list[np.ndarray], labels: np.ndarray, num_classes: int,
                              seed: int = 0) -> np.ndarray | None:
    """Each image's probabilities from logistic regression fitted on the other folds, averaged
    over `views` (feature arrays of the same images, rows L2-normalised first); None when a class
    has fewer than two images (no fold could hold one back)."""
    from ..features.logistic import out_of_fold
    from ..training.batches import one_torch_thread

    found = []
    for x in views:
        x = np.asarray(x, dtype=np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        # One thread: fits this small wait on a second thread more than it helps them, worst on
        # a busy machine (cars43 on 2 shared cores: 0.8-2.7 s with one, 3-19 s with two).
        with one_torch_thread():
            proba = out_of_fold(x, labels, num_classes, LABEL_CHECK_C, seed, tolerance=TOLERANCE,
                                max_iter=MAX_ITER)
        if proba is None:
            return None
        found.append(proba)
    return np.mean(found, axis=0)


def check_features(views: list[np.ndarray], labels: np.ndarray, classes: list[str], paths: list[str],
                   seed: int = 0, method: str = DEFAULT_METHOD) -> LabelIssues | None:
    """The label check on feature vectors: out-of-fold probabilities, then confident learning.
    None when a class has fewer than two images."""
    proba = out_of_fold_probabilities(views, labels, len(classes), seed)
    if proba is None:
        return None
    return find_label_issues(proba, labels, classes, paths, method)
