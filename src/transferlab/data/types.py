"""The data types every stage passes on: one image (a file or pixels in memory), a labelled set
of them, and what a source yields. They live apart from the readers so that each reader (folders,
CSV, CIFAR archives) imports them without importing the others."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ImageRef:
    """One image: a file path or pixels in memory, with a key that changes when the image does."""

    source: str | np.ndarray = field(compare=False)
    key: str
    name: str

    @classmethod
    def from_file(cls, path: str | Path) -> "ImageRef":
        path = os.path.abspath(path)
        try:
            st = os.stat(path)
            identity = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            identity = "missing"  # reported by the decoder, by name, when it tries to read it
        return cls(source=path, key=f"file:{path}:{identity}", name=path)

    @classmethod
    def from_array(cls, pixels: np.ndarray, name: str) -> "ImageRef":
        digest = hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest()
        digest = hashlib.sha1(f"{pixels.shape}{pixels.dtype}{digest}".encode()).hexdigest()
        return cls(source=pixels, key=f"array:{digest}", name=name)


@dataclass
class ImageSet:
    """Labelled images and the class names their integer labels index."""

    images: list[ImageRef]
    labels: np.ndarray
    classes: list[str]
    name: str = "data"

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices) -> "ImageSet":
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet([self.images[i] for i in indices], self.labels[indices], self.classes, self.name)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


@dataclass
class Source:
    """Everything a data source yields; `splits[i]` is None where the data says nothing."""

    images: ImageSet
    splits: list[str | None]
    root: str
    ignored: list[str] = field(default_factory=list)  # files skipped for their extension
    loose: list[str] = field(default_factory=list)    # images beside the class folders, in none

    @property
    def given_splits(self) -> set[str]:
        return {s for s in self.splits if s is not None}
