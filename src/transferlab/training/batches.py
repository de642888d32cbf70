"""Batches for the engine: decoded images (augmented for training) or tensors held in memory.

Order and sampling come from a generator seeded per epoch, augmentation from torch's global RNG
that the engine seeds per epoch, and augmentation runs in this thread in batch order, so an epoch
is the same whether the run was interrupted before it or not. Decoding runs one batch ahead in a
thread and hits the in-memory cache after the first pass.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch

from ..data.cache import DecodedImages, default_cache, iter_decoded
from ..data.decode import UnreadableImage
from ..data.types import ImageSet
from ..errors import TransferlabError
from ..models.network import to_batch
from ..models.preprocess import Preprocess
from .distributed import World


def shard_size(n: int, world: World, training: bool) -> int:
    """Items per epoch on one rank: training shards are padded to equal sizes, evaluation's are not."""
    if not world.active:
        return n
    return world.shard_len(n) if training else len(range(world.rank, n, world.size))


def epoch_order(labels: np.ndarray, gen: torch.Generator, shuffle: bool, balanced: bool) -> np.ndarray:
    """Which images an epoch visits, in which order: as stored, shuffled, or class-balanced."""
    n = len(labels)
    if balanced:
        # Each class drawn equally often (with replacement): 1 / class count per image.
        counts = np.bincount(labels)
        weights = torch.from_numpy(1.0 / counts[labels])
        return torch.multinomial(weights, n, replacement=True, generator=gen).numpy()
    if shuffle:
        return torch.randperm(n, generator=gen).numpy()
    return np.arange(n)


@contextmanager
def one_torch_thread():
    """Per-image tensor ops are ~10x slower with several intra-op threads (measured: 7 ms vs
    0.65 ms for a standard augmentation at 224 px on 2 cores); switching costs microseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class PixelBatches:
    """(uint8 NCHW pixels, labels) batches of an ImageSet at the backbone's input size."""

    def __init__(self, images: ImageSet, preprocess: Preprocess, batch_size: int,
                 augment: Callable[[np.ndarray], torch.Tensor] | None = None, shuffle: bool = False,
                 balanced: bool = False, decoded: DecodedImages | None = None, world: World | None = None):
        self.images = images
        self.world = world or World()  # several ranks: each takes its shard of every epoch
        self.pre = preprocess
        self.batch_size = batch_size
        self.augment = augment
        self.shuffle = shuffle or balanced
        self.balanced = balanced
        self.decoded = decoded or default_cache

    def __len__(self) -> int:
        return math.ceil(shard_size(len(self.images), self.world, self.shuffle) / self.batch_size)

    def order(self, seed: int) -> np.ndarray:
        order = epoch_order(self.images.labels, torch.Generator().manual_seed(seed), self.shuffle, self.balanced)
        return self.world.shard(order, pad=self.shuffle)

    def _pixels(self, idx: np.ndarray) -> list[np.ndarray]:
        refs = self.images.images
        try:
            return [self.decoded.get(refs[i], self.pre.resize_size, self.pre.interpolation) for i in idx]
        except UnreadableImage as err:  # it was readable when the run started
            raise TransferlabError(f"{err}: the file changed during training; restore it or start again") from None

    def batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order(seed)
        chunks = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        labels = self.images.labels
        with ThreadPoolExecutor(max_workers=1) as ahead:
            pending = ahead.submit(self._pixels, chunks[0]) if chunks else None
            for k, idx in enumerate(chunks):
                pixels = pending.result()
                pending = ahead.submit(self._pixels, chunks[k + 1]) if k + 1 < len(chunks) else None
                if self.augment is None:
                    x = to_batch([self.pre.center_crop(p) for p in pixels])
                else:
                    with one_torch_thread():
                        x = torch.stack([self.augment(p) for p in pixels])
                yield x, torch.from_numpy(labels[idx])


class TensorBatches:
    """Batches of tensors held in memory (cached features), shuffled per epoch when asked."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False):
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if self.shuffle else torch.arange(n)
        for s in range(0, n, self.batch_size):
            idx = order[s:s + self.batch_size]
            yield self.x[idx], self.y[idx]


def channel_stats(images: ImageSet, preprocess: Preprocess, decoded: DecodedImages | None = None
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..1 scale) of the training images' eval views: featurewise
    normalisation, as Keras's ImageDataGenerator(featurewise_center, featurewise_std_normalization)."""
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for _, pixels, _ in iter_decoded(images.images, preprocess.resize_size, preprocess.interpolation,
                                     64, decoded):
        for p in pixels:
            view = preprocess.center_crop(p).reshape(-1, 3).astype(np.float64) / 255.0
            total += view.sum(0)
            squares += (view ** 2).sum(0)
            count += len(view)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean ** 2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
