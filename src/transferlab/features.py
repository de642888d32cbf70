"""The `features` strategy: run the backbone once per image, cache pooled features on disk, fit a
classifier on them (logistic regression, or an MLP head trained with the engine)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.cache import DecodedImages, iter_decoded
from .data.decode import UnreadableImage
from .data.sources import ImageRef
from .models.network import Network, to_batch
from .models.preprocess import Preprocess

log = logging.getLogger("transferlab")
FEATURE_FORMAT = 1  # bump when the way features are computed changes, so old caches are not reused


def default_cache_dir() -> Path:
    if os.environ.get("TRANSFERLAB_CACHE"):
        return Path(os.environ["TRANSFERLAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "transferlab"


def extractor_key(backbone: str, weights_identity: str, preprocess: Preprocess) -> str:
    """Identifies what a feature vector depends on besides the image itself."""
    text = json.dumps({"backbone": backbone, "weights": weights_identity, "format": FEATURE_FORMAT,
                       "preprocess": preprocess.to_dict()}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


class FeatureStore:
    """Feature vectors by image key in one SQLite file per extractor.

    SQLite gives atomic commits (an interrupted run leaves no half-written vectors) and safe
    concurrent readers and writers (several runs of a comparison share one store).
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._memory: dict[str, np.ndarray] = {}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute("CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, vec BLOB)")

    @classmethod
    def for_extractor(cls, key: str, cache_dir: Path | None) -> "FeatureStore":
        return cls(None if cache_dir is None else Path(cache_dir) / "features" / f"{key}.sqlite")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        found = {k: self._memory[k] for k in keys if k in self._memory}
        wanted = [k for k in keys if k not in found]
        if self.path is None or not wanted:
            return found
        with self._connect() as db:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                rows = db.execute(f"SELECT key, vec FROM features WHERE key IN ({','.join('?' * len(chunk))})",
                                  chunk)
                found.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        return found

    def put_many(self, vectors: dict[str, np.ndarray]) -> None:
        if self.path is None:
            self._memory.update(vectors)
            return
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?)",
                           [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in vectors.items()])


@dataclass
class Extracted:
    features: np.ndarray           # (n_ok, F) float32, in the order of the readable images
    ok: np.ndarray                 # bool mask over the images asked for
    failures: list[UnreadableImage] = field(default_factory=list)
    computed: int = 0
    cached: int = 0


def extract_features(network: Network, images: list[ImageRef], preprocess: Preprocess,
                     store: FeatureStore, batch_size: int = 32, decoded: DecodedImages | None = None,
                     progress: bool = True, desc: str = "features") -> Extracted:
    """Pooled backbone features for every readable image; only images missing from `store` are
    decoded and run through the backbone (eval mode, inference mode, channels_last)."""
    keys = [im.key for im in images]
    have = store.get_many(list(dict.fromkeys(keys)))
    todo = [i for i, k in enumerate(keys) if k not in have]
    failures: list[UnreadableImage] = []
    if todo:
        network.eval()
        network.to(memory_format=torch.channels_last)
        bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress or None, leave=False)
        todo_images = [images[i] for i in todo]
        with torch.inference_mode():
            for positions, pixels, failed in iter_decoded(todo_images, preprocess.resize_size,
                                                          preprocess.interpolation, batch_size, decoded):
                failures += failed
                if pixels:
                    batch = to_batch([preprocess.center_crop(p) for p in pixels])
                    vectors = network.features(batch).float().numpy()
                    new = {todo_images[p].key: v for p, v in zip(positions, vectors)}
                    store.put_many(new)
                    have.update(new)
                bar.update(len(positions) + len(failed))
        bar.close()
    ok = np.array([k in have for k in keys], dtype=bool)
    dim = next(iter(have.values())).shape[0] if have else 0
    feats = np.stack([have[k] for k in keys if k in have]) if ok.any() else np.zeros((0, dim), np.float32)
    return Extracted(feats, ok, failures, computed=len(todo) - len(failures), cached=len(keys) - len(todo))
