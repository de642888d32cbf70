"""Train/val/test splits: the data's own where it has them, a stratified seeded cut where it has not.

One rule keeps scores honest: val is used for choices (regularisation, early stopping), test only
for the reported score. So when the data brings train/ and val/ but no test/, its val/ is held out
as the test split and a validation split is cut from train/. `--folds` cuts train itself into
stratified cross-validation folds (`stratified_folds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import TransferlabError
from .sources import ImageSet, Source


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    origins: dict[str, str] = field(default_factory=dict)  # split -> where its images came from

    @property
    def score_split(self) -> str:
        """The split whose numbers are the run's headline: test, unless there is none."""
        return "test" if self.test is not None else "val"

    def items(self) -> list[tuple[str, ImageSet]]:
        return [(n, s) for n, s in (("train", self.train), ("val", self.val), ("test", self.test))
                if s is not None]

    def summary(self) -> str:
        return ", ".join(f"{name} {len(s)} ({self.origins.get(name, '')})" for name, s in self.items())


def split_source(source: Source, val_fraction: float = 0.15, test_fraction: float = 0.15,
                 seed: int = 0) -> Splits:
    for option, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= value < 1:
            raise TransferlabError(f"{option} {value} is outside [0, 1): give a fraction such as 0.15")
    if val_fraction + test_fraction >= 1:
        raise TransferlabError(
            f"--val-fraction {val_fraction} + --test-fraction {test_fraction} leave no training "
            "images: make their sum well below 1")
    images = source.images
    given = np.array([s or "train" for s in source.splits])
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(given == "train")
    val_idx = np.flatnonzero(given == "val")
    test_idx = np.flatnonzero(given == "test")
    where = "train/" if source.given_splits else "the data"
    if len(pool) == 0:
        raise TransferlabError(f"'{source.root}' has no training images: add images under train/")
    origins = {"train": where}
    cut_test = False
    if len(test_idx):
        origins["test"] = "test/"
    elif len(val_idx):
        test_idx, val_idx = val_idx, np.array([], dtype=np.int64)
        origins["test"] = "val/, held out"
    elif test_fraction > 0:
        test_idx, pool = _carve(images, pool, test_fraction, rng, "--test-fraction", source.root)
        origins["test"] = f"{test_fraction:g} of {where}, seed {seed}"
        cut_test = True
    if len(val_idx):
        origins["val"] = "val/"
    elif val_fraction > 0:
        # Fractions are of the whole pool; after test was cut from it, val's share of the rest grows.
        share = val_fraction / (1 - test_fraction) if cut_test else val_fraction
        val_idx, pool = _carve(images, pool, share, rng, "--val-fraction", source.root)
        origins["val"] = f"{val_fraction:g} of {where}, seed {seed}"
    _check_train_covers_classes(images, pool, source.root)
    return Splits(images.subset(pool), _maybe(images, val_idx), _maybe(images, test_idx), origins)


def _maybe(images: ImageSet, idx: np.ndarray) -> ImageSet | None:
    return images.subset(idx) if len(idx) else None


def stratified_cut(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A mask over `labels`: per class, `fraction` of its members (at least one, never all) drawn
    at random. A class with a single member is never cut.

    Cutting per class keeps every class on both sides, which a global stratified split cannot
    promise for small classes.
    """
    cut = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        members = members[rng.permutation(len(members))]
        cut[members[:min(max(1, int(round(fraction * len(members)))), len(members) - 1)]] = True
    return cut


def _carve(images: ImageSet, pool: np.ndarray, fraction: float, rng: np.random.Generator,
           option: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    """Cut `fraction` of each class off `pool` (indices into `images`); return (cut, rest)."""
    labels = images.labels[pool]
    counts = np.bincount(labels, minlength=len(images.classes))
    for label, count in enumerate(counts):
        if count == 1:
            raise TransferlabError(
                f"class '{images.classes[label]}' in '{root}' has 1 image(s) left for training, too few to "
                f"split off {option} {fraction:g}: add images to it, or set {option} 0")
    cut = stratified_cut(labels, fraction, rng)
    return pool[cut], pool[~cut]


def _check_train_covers_classes(images: ImageSet, train_idx: np.ndarray, root: str) -> None:
    present = set(images.labels[train_idx].tolist())
    missing = [c for i, c in enumerate(images.classes) if i not in present]
    if missing:
        raise TransferlabError(
            f"class(es) {', '.join(repr(m) for m in missing)} in '{root}' have no training images: "
            "add some under train/, or remove the class from the other splits")


def stratified_folds(labels: np.ndarray, k: int, seed: int,
                     classes: Sequence[str] | None = None) -> list[np.ndarray]:
    """`k` disjoint arrays of indices into `labels` (each fold's validation images), every class
    spread over them as evenly as it divides, seeded; together they hold every index once.

    A class with fewer than `k` members would leave some folds without it, so it is refused
    here, before anything slow runs; `classes` names the labels in that message.
    """
    # Imported here: only runs with --folds pay for it.
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    counts = np.bincount(labels) if len(labels) else np.zeros(0, dtype=np.int64)
    for label, count in enumerate(counts):
        if 0 < count < k:
            name = classes[label] if classes is not None else str(label)
            fix = f"give --folds {count} or fewer" if count >= 2 else "add images to it, or give --folds 0 (off)"
            raise TransferlabError(f"--folds {k}: class '{name}' has only {count} training image(s); {fix}")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [held for _, held in splitter.split(np.zeros(len(labels)), labels)]
