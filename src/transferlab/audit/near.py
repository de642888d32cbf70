"""Near-duplicates: pairs of images whose backbone features point the same way, or whose features
are close and whose pixels agree.

Features come from the same route and on-disk cache as the `features` strategy (same backbone,
weights and preprocessing give the same cache key), so an audit followed by a `features` run
computes every image's features once. Similarity is the cosine of L2-normalised pooled
features, computed in tiles so tens of thousands of images never need an n x n matrix.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from ..data.types import ImageRef

# Calibrated with the default backbone (tf_efficientnet_lite0, packaged weights) by
# benchmarks/audit.py. Backbone features alone do not separate a re-encoded copy from a
# distinct photo of the same class: a hymenoptera photo re-saved at JPEG quality 60 and 0.7x size
# scores 0.59-0.99 against its original (median 0.88), while distinct photos reach 0.81 against
# their nearest neighbour (CIFAR-10: 0.89). Their features still rank the copy first or second
# among its neighbours. So a pair is a near-duplicate when
#  - its cosine is at least `threshold` (features alone: the same picture, whatever the pixels), or
#  - one image is among the other's NEIGHBOURS most similar (cosine >= CANDIDATE) and the edges
#    of their small grey thumbnails correlate at least PIXEL_THRESHOLD (re-saves: 0.95 or more;
#    distinct photos: at most 0.68 over all 79,000 hymenoptera pairs, 0.65 on CIFAR-10).
DEFAULT_THRESHOLD = 0.90
CANDIDATE = 0.40
NEIGHBOURS = 5
PIXEL_THRESHOLD = 0.80
TILE = 2048
MAX_PAIRS = 10_000  # kept in audit.json, most similar first; the count says how many there were


@dataclass
class Features:
    vectors: np.ndarray   # (n_ok, F) float32, L2-normalised
    ok: np.ndarray        # bool over the images asked for
    failures: list        # UnreadableImage of the rest
    backbone: str
    computed: int
    cached: int


def backbone_features(images: list[ImageRef], backbone: str | None = None, weights: str = "auto",
                      cache_dir: str | None = None, feature_cache: bool = True, batch_size: int = 32,
                      progress: bool = True, runtime: str = "auto", resize: str = "crop") -> Features:
    """Pooled, L2-normalised features of every readable image, through the feature cache;
    `resize` is the view (crop or squash), cached as a `features` run with it caches it."""
    from ..common.paths import cache_root
    from ..config import RunConfig
    from ..features.extract import extractor_key, frozen_features
    from ..models.factory import ModelSpec, build_model
    from ..training.strategies import resolve

    # The `features` strategy's own resolution: the same backbone, weights, input size and resize.
    cfg = resolve(RunConfig(strategy="features", backbone=backbone, weights=weights, resize=resize))
    built = build_model(ModelSpec(backbone=cfg.backbone, weights=cfg.weights, image_size=cfg.image_size,
                                  resize=cfg.resize, seed=cfg.seed))
    cache = cache_root(cache_dir) if feature_cache else None
    key = extractor_key(cfg.backbone, built.weights.identity, built.preprocess)
    ex = frozen_features(built.network.eval(), images, built.preprocess, key, cache, runtime,
                         batch_size=batch_size, progress=progress,
                         desc="audit features" if resize == "crop" else f"audit features ({resize})")
    vectors = ex.features.astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return Features(vectors, ex.ok, ex.failures, cfg.backbone, ex.computed, ex.cached)


def similar_pairs(vectors: np.ndarray, threshold: float, tile: int = TILE,
                  limit: int = MAX_PAIRS) -> tuple[list[tuple[int, int, float]], int]:
    """(i, j, cosine) for i < j with cosine >= threshold, most similar first, at most `limit`;
    and how many pairs there were in all. `vectors` must be L2-normalised."""
    n = len(vectors)
    found: list[tuple[float, int, int]] = []  # a min-heap of the best `limit`
    total = 0
    for a in range(0, n, tile):
        rows = vectors[a:a + tile]
        for b in range(a, n, tile):
            sims = rows @ vectors[b:b + tile].T
            if a == b:
                sims = np.triu(sims, k=1) + np.tril(np.full_like(sims, -2.0))
            ii, jj = np.nonzero(sims >= threshold)
            total += len(ii)
            for i, j in zip(ii.tolist(), jj.tolist()):
                entry = (float(sims[i, j]), a + i, b + j)
                if len(found) < limit:
                    heapq.heappush(found, entry)
                elif entry > found[0]:
                    heapq.heapreplace(found, entry)
    found.sort(key=lambda e: (-e[0], e[1], e[2]))
    return [(i, j, s) for s, i, j in found], total


def neighbours(vectors: np.ndarray, k: int = NEIGHBOURS, minimum: float = CANDIDATE,
               tile: int = TILE) -> list[tuple[int, int, float]]:
    """(i, j, cosine), i < j, for each image's `k` most similar others with cosine >= `minimum`."""
    n = len(vectors)
    k = min(k, n - 1)
    found: dict[tuple[int, int], float] = {}
    if k < 1:
        return []
    for a in range(0, n, tile):
        rows = vectors[a:a + tile]
        best_s = np.full((len(rows), k), -2.0, dtype=np.float32)
        best_j = np.zeros((len(rows), k), dtype=np.int64)
        for b in range(0, n, tile):
            sims = rows @ vectors[b:b + tile].T
            if a == b:
                np.fill_diagonal(sims, -2.0)
            s = np.concatenate([best_s, sims], axis=1)
            j = np.concatenate([best_j, np.broadcast_to(np.arange(b, b + sims.shape[1]), sims.shape)], axis=1)
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
            best_s, best_j = np.take_along_axis(s, top, 1), np.take_along_axis(j, top, 1)
        for r, (row_s, row_j) in enumerate(zip(best_s, best_j)):
            for value, j in zip(row_s.tolist(), row_j.tolist()):
                if value >= minimum:
                    found[(min(a + r, j), max(a + r, j))] = value
    return [(i, j, s) for (i, j), s in sorted(found.items())]


def near_pairs(vectors: np.ndarray, thumbs: list, threshold: float = DEFAULT_THRESHOLD,
               pixel_threshold: float = PIXEL_THRESHOLD) -> tuple[list[dict], int]:
    """Near-duplicate pairs over `vectors` (row i belongs to thumbs[i], None when missing), as
    {i, j, cosine, pixels, by: 'features' | 'pixels'}, most similar first; and their count."""
    from .images import pixel_similarity

    def pixels(i: int, j: int) -> float | None:
        if thumbs[i] is None or thumbs[j] is None:
            return None
        return round(pixel_similarity(thumbs[i], thumbs[j]), 4)

    above, total = similar_pairs(vectors, threshold)
    found = {(i, j): {"i": i, "j": j, "cosine": round(s, 4), "pixels": pixels(i, j), "by": "features"}
             for i, j, s in above}
    for i, j, s in neighbours(vectors):
        if (i, j) in found:
            continue
        p = pixels(i, j)
        if p is not None and p >= pixel_threshold:
            found[(i, j)] = {"i": i, "j": j, "cosine": round(s, 4), "pixels": p, "by": "pixels"}
            total += 1
    pairs = sorted(found.values(), key=lambda d: (-max(d["cosine"], d["pixels"] or 0), d["i"], d["j"]))
    return pairs, total
