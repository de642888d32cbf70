"""Exact duplicates: content hashes, duplicate groups, leakage across splits, label conflicts, and
the cheap check (with --dedupe) that `train` runs before training.

Two images are exact duplicates when their file bytes are equal (for in-memory pixels, when the
arrays are equal: ImageRef.key of an array is already a digest of its content). Only files that
share their size with another file are read and hashed, so the check costs one stat per file
on most photo collections.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..data.types import ImageRef, ImageSet
from ..data.split import Splits

log = logging.getLogger("transferlab")
SPLIT_ORDER = ("train", "val", "test")
IMBALANCE_WARN = 3.0  # largest / smallest class in train at or above this gets a warning

_hashes: dict[str, str | None] = {}  # ImageRef.key (path, size, mtime) -> content hash, per process
_lock = threading.Lock()
_warned: set[str] = set()  # warning lines already given in this process (compare trains many runs)


@dataclass
class Item:
    """One image of the audited splits."""

    ref: ImageRef
    label: int
    split: str


def flatten(splits: Splits) -> list[Item]:
    """Every image of the splits, train first, with its label and split."""
    return [Item(ref, int(label), name) for name, part in splits.items()
            for ref, label in zip(part.images, part.labels)]


def _size(ref: ImageRef) -> str | None:
    if isinstance(ref.source, np.ndarray):
        return ref.key  # already a content digest
    try:
        return f"file:{os.stat(ref.source).st_size}"
    except OSError:
        return None  # missing: reported as unreadable elsewhere, never a duplicate


def _file_hash(path: str) -> str | None:
    digest = hashlib.blake2b(digest_size=20)
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def content_hash(ref: ImageRef) -> str | None:
    """A digest of the image's content (file bytes, or the array's digest); None when unreadable."""
    if isinstance(ref.source, np.ndarray):
        return ref.key
    with _lock:
        if ref.key in _hashes:
            return _hashes[ref.key]
    value = _file_hash(ref.source)
    with _lock:
        _hashes[ref.key] = value
    return value


def exact_groups(refs: list[ImageRef]) -> list[list[int]]:
    """Indices of images with identical content, groups of two or more, in order of first member."""
    by_size: dict[str, list[int]] = defaultdict(list)
    for i, ref in enumerate(refs):
        size = _size(ref)
        if size is not None:
            by_size[size].append(i)
    candidates = [i for members in by_size.values() if len(members) > 1 for i in members]
    with ThreadPoolExecutor(max_workers=4) as pool:  # hashlib releases the GIL on large reads
        digests = dict(zip(candidates, pool.map(lambda i: content_hash(refs[i]), candidates)))
    groups: dict[str, list[int]] = defaultdict(list)
    for i in sorted(candidates):
        if digests[i] is not None:
            groups[digests[i]].append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def describe(item: Item, classes: list[str]) -> dict:
    return {"name": item.ref.name, "split": item.split, "label": classes[item.label]}


@dataclass
class SplitCheck:
    """What the cheap audit finds in the splits a run would use."""

    items: list[Item]
    classes: list[str]
    groups: list[list[int]]                       # exact-duplicate groups, indices into items
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> images

    @property
    def leaked_groups(self) -> list[list[int]]:
        return [g for g in self.groups if len({self.items[i].split for i in g}) > 1]

    @property
    def conflict_groups(self) -> list[list[int]]:
        return [g for g in self.groups if len({self.items[i].label for i in g}) > 1]

    def leaked(self) -> list[int]:
        """The copies --dedupe drops: in each group, every val or test image whose content is
        also in an earlier split (train before val before test). Train images are never dropped,
        and copies within one split are not leakage."""
        drop = []
        for group in self.leaked_groups:
            first = min(SPLIT_ORDER.index(self.items[i].split) for i in group)
            drop += [i for i in group if SPLIT_ORDER.index(self.items[i].split) > first]
        return sorted(drop)

    def leaked_by_split(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for i in self.leaked():
            counts[self.items[i].split] = counts.get(self.items[i].split, 0) + 1
        return counts

    def imbalance(self) -> dict:
        train = self.counts.get("train", {})
        present = {c: n for c, n in train.items() if n > 0}
        if not present:
            return {"ratio": None, "largest": None, "smallest": None, "warning": False}
        largest, smallest = max(present, key=present.get), min(present, key=present.get)
        ratio = present[largest] / present[smallest]
        return {"ratio": round(ratio, 2), "largest": largest, "smallest": smallest,
                "warning": ratio >= IMBALANCE_WARN}

    def group_records(self, groups: list[list[int]]) -> list[dict]:
        records = []
        for g in groups:
            images = [describe(self.items[i], self.classes) for i in g]
            records.append({"images": images,
                            "splits": sorted({im["split"] for im in images}, key=SPLIT_ORDER.index),
                            "labels": sorted({im["label"] for im in images})})
        return records

    def summary(self) -> dict:
        """JSON-able counts for metrics.json (the full lists are `transferlab audit`'s job)."""
        return {"exact_groups": len(self.groups),
                "exact_copies": sum(len(g) - 1 for g in self.groups),
                "leaked": self.leaked_by_split(),
                "conflict_groups": len(self.conflict_groups),
                "imbalance": self.imbalance()["ratio"]}

    def warning(self, data: str, deduped: bool = False) -> str | None:
        """One line saying what looks wrong, or None when nothing does."""
        parts = []
        leaked = self.leaked_by_split()
        if leaked and not deduped:
            where = " and ".join(f"{n} {s}" for s, n in sorted(leaked.items(), key=lambda kv: SPLIT_ORDER.index(kv[0])))
            parts.append(f"{where} image(s) are exact copies of images in an earlier split (leakage)")
        conflicts = self.conflict_groups
        if conflicts:
            parts.append(f"{len(conflicts)} group(s) of identical images carry different labels")
        balance = self.imbalance()
        if balance["warning"]:
            parts.append(f"classes are imbalanced in train ({balance['ratio']:g}:1, '{balance['largest']}' "
                         f"{self.counts['train'][balance['largest']]} vs '{balance['smallest']}' "
                         f"{self.counts['train'][balance['smallest']]}; consider --balance weights)")
        if not parts:
            return None
        fix = " or train with --dedupe" if leaked and not deduped else ""
        return f"data audit: {'; '.join(parts)}: see `transferlab audit {data}` for details{fix}"


def check_splits(splits: Splits) -> SplitCheck:
    """Exact duplicates, leakage, label conflicts and class counts of a run's splits."""
    items = flatten(splits)
    groups = exact_groups([it.ref for it in items])
    counts = {name: part.class_counts() for name, part in splits.items()}
    return SplitCheck(items, list(splits.train.classes), groups, counts)


def dedupe_splits(splits: Splits, check: SplitCheck) -> tuple[Splits, list[dict]]:
    """The splits without the leaked copies in val and test, and what was dropped."""
    drop = check.leaked()
    if not drop:
        return splits, []
    dropped = [describe(check.items[i], check.classes) for i in drop]
    gone = {id(check.items[i].ref) for i in drop}

    def keep(part: ImageSet | None) -> ImageSet | None:
        if part is None:
            return None
        kept = [i for i, ref in enumerate(part.images) if id(ref) not in gone]
        return part.subset(kept) if kept else None

    origins = dict(splits.origins)
    for split, n in check.leaked_by_split().items():
        origins[split] = f"{origins.get(split, split + '/')}, {n} leaked cop{'y' if n == 1 else 'ies'} dropped"
    return Splits(splits.train, keep(splits.val), keep(splits.test), origins), dropped


def warn_once(line: str) -> None:
    """Warn the first time; a comparison's later runs on the same data get it at debug level."""
    if line in _warned:
        log.debug(line)
    else:
        _warned.add(line)
        log.warning(line)


def pre_training_check(splits: Splits, data: str, dedupe: bool) -> tuple[Splits, dict]:
    """What `train` runs before training: returns the (deduped) splits and metrics['audit']."""
    check = check_splits(splits)
    info = check.summary()
    if dedupe:
        splits, dropped = dedupe_splits(splits, check)
        info["dropped"] = [d["name"] for d in dropped]
        if dropped:
            where = ", ".join(f"{n} {s}" for s, n in check.leaked_by_split().items())
            log.info(f"--dedupe: dropped {len(dropped)} leaked cop{'y' if len(dropped) == 1 else 'ies'} "
                     f"({where}) that duplicate an image of an earlier split; listed in metrics.json")
    line = check.warning(data, deduped=dedupe)
    if line:
        warn_once(line)
    return splits, info
