"""The frozen pass of the `features` strategy: pooled backbone features of every image, computed
once per (backbone, weights, preprocessing) and kept in a FeatureStore."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ..common.progress import progress_bar
from ..data.cache import DecodedImages, iter_decoded
from ..data.decode import UnreadableImage
from ..data.types import ImageRef
from ..models.network import Network, to_batch
from ..models.preprocess import Preprocess
from .store import FeatureStore

log = logging.getLogger("transferlab")
FEATURE_FORMAT = 1  # bump when the way features are computed changes, so old caches are not reused


def extractor_key(backbone: str, weights_identity: str, preprocess: Preprocess, views: int = 1,
                  pooling: str | None = None) -> str:
    """Identifies what a feature vector depends on besides the image itself."""
    pre = preprocess.to_dict()
    if pre["resize"] == "crop":  # the keys of cropped features stay those of earlier versions
        del pre["resize"]
    described = {"backbone": backbone, "weights": weights_identity, "format": FEATURE_FORMAT, "preprocess": pre}
    if views != 1:  # a key of its own; single-view keys stay those of earlier versions
        described["views"] = views
    if pooling:  # bilinear:<tapped layer>; average-pooled keys stay as they were
        described["pooling"] = pooling
    text = json.dumps(described, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


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
        bar = progress_bar(total=len(todo), desc=desc, enabled=progress)
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
