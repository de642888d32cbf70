"""Decoded, resized images kept in memory, so no later pass over the data decodes a file again."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from .decode import DEFAULT_MAX_PIXELS, UnreadableImage, decode
from .types import ImageRef, ImageSet

if TYPE_CHECKING:
    from ..models.preprocess import Preprocess

DEFAULT_BUDGET_MB = int(os.environ.get("TRANSFERLAB_DECODE_CACHE_MB", "4096"))
# Decoding threads: Pillow releases the GIL while it decodes and resizes, so threads scale with the
# cores; a GPU's network needs many of them fed (2 was enough on a 2-core laptop, not on 16 cores).
DECODE_WORKERS = max(2, min(16, os.cpu_count() or 2))


class DecodedImages:
    """A byte-budgeted LRU of decoded uint8 images keyed by (image key, shorter side, interpolation).

    Files that fail to decode are remembered too, so a broken file costs one attempt per process
    and is reported once.
    """

    def __init__(self, budget_mb: int = DEFAULT_BUDGET_MB):
        self.budget = budget_mb * 1024 * 1024
        self._arrays: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._failed: dict[tuple, UnreadableImage] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.decodes = 0  # how many times a file was actually decoded

    def get(self, image: ImageRef, shorter_side: int | tuple[int, int], interpolation: str,
            max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        key = (image.key, shorter_side, interpolation)
        with self._lock:
            if key in self._arrays:
                self._arrays.move_to_end(key)
                return self._arrays[key]
            if key in self._failed:
                raise self._failed[key]
        try:
            pixels = decode(image.source, shorter_side, interpolation, max_pixels)
        except UnreadableImage as err:
            err.source = image.name  # memory images have no path; their name says which one
            with self._lock:
                self._failed[key] = err
            raise
        with self._lock:
            self.decodes += 1
            if key not in self._arrays and pixels.nbytes <= self.budget:
                self._arrays[key] = pixels
                self._bytes += pixels.nbytes
                while self._bytes > self.budget:
                    _, old = self._arrays.popitem(last=False)
                    self._bytes -= old.nbytes
        return pixels

    def clear(self) -> None:
        with self._lock:
            self._arrays.clear()
            self._failed.clear()
            self._bytes = 0


default_cache = DecodedImages()


def iter_decoded(images: Sequence[ImageRef], shorter_side: int | tuple[int, int], interpolation: str,
                 batch_size: int, cache: DecodedImages | None = None, workers: int = DECODE_WORKERS,
                 overlap: bool = True) -> Iterator[tuple[list[int], list[np.ndarray], list[UnreadableImage]]]:
    """Yield batches of (positions, pixels, failures) in order, decoding the next batch meanwhile.

    Decoding runs in threads (Pillow releases the GIL) one batch ahead, so memory stays bounded
    by two batches and the caller's compute overlaps the next batch's decoding. Without `overlap`
    a batch is decoded only when asked for, by every thread at once (see frozen_batches).
    """
    cache = cache or default_cache
    starts = range(0, len(images), batch_size)

    def load(start: int):
        positions, pixels, failures = [], [], []
        chunk = images[start:start + batch_size]
        for pos, result in zip(range(start, start + len(chunk)), pool.map(_safe_get, chunk)):
            if isinstance(result, UnreadableImage):
                failures.append(result)
            else:
                positions.append(pos)
                pixels.append(result)
        return positions, pixels, failures

    def _safe_get(image: ImageRef):
        try:
            return cache.get(image, shorter_side, interpolation)
        except UnreadableImage as err:
            return err

    with ThreadPoolExecutor(max_workers=workers) as pool, ThreadPoolExecutor(max_workers=1) as ahead:
        pending = None
        for start in starts:
            current = pending.result() if pending is not None else load(start)
            nxt = start + batch_size
            pending = ahead.submit(load, nxt) if overlap and nxt < len(images) else None
            yield current


# Images decoded at a time by a frozen pass on a CPU, before they go through the network in batches.
CPU_CHUNK = 256


def frozen_batches(images: Sequence[ImageRef], shorter_side: int | tuple[int, int], interpolation: str,
                   batch_size: int, cache: DecodedImages | None = None, device: str = "cpu"
                   ) -> Iterator[tuple[list[int], list[np.ndarray], list[UnreadableImage]]]:
    """iter_decoded's batches for a pass that needs no gradient. On an accelerator decoding
    overlaps the forward. On a CPU the two take turns, each with every core: CPU_CHUNK images
    decoded by all the threads, then run in batches. Both saturate the cores, and side by side
    onnxruntime's threads wait at each operator for the one a decoding thread had preempted:
    on 2 cores (cars43, Lite0 in onnxruntime) taking turns ran 188-198 images/s against 171-176
    overlapped (raw forward 271), the same as overlapping with the decoding threads at nice 19,
    which is Linux-only."""
    if str(device) != "cpu":
        yield from iter_decoded(images, shorter_side, interpolation, batch_size, cache)
        return
    for positions, pixels, failures in iter_decoded(images, shorter_side, interpolation, max(CPU_CHUNK, batch_size),
                                                    cache, overlap=False):
        if failures:
            yield [], [], failures
        for start in range(0, len(positions), batch_size):
            yield positions[start:start + batch_size], pixels[start:start + batch_size], []


def readable(images: ImageSet, preprocess: Preprocess, batch_size: int = 64,
             decoded: DecodedImages | None = None) -> tuple[ImageSet, list[UnreadableImage]]:
    """Decode every image once (filling the cache); return the readable ones and the failures."""
    ok = np.zeros(len(images), dtype=bool)
    failures: list[UnreadableImage] = []
    for positions, _, failed in iter_decoded(images.images, preprocess.resize_size,
                                             preprocess.interpolation, batch_size, decoded):
        ok[positions] = True
        failures += failed
    return images.subset(np.flatnonzero(ok)), failures
