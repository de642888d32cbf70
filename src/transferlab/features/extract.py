"""The frozen pass of the `features` strategy: pooled backbone features of every image, computed
once per (backbone, weights, preprocessing) and kept in a FeatureStore."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..common.progress import progress_bar
from ..data.cache import DecodedImages, frozen_batches
from ..data.decode import UnreadableImage
from ..data.device_decode import decode_crops, supported
from ..data.types import ImageRef
from ..models.network import Network, to_batch
from ..models.preprocess import Preprocess
from ..errors import TransferlabError
from ..runtime.frozen import (NotExportable, frozen_pass, int8_pass, resolve_runtime, runtime_key, say_once,
                              unexportable)
from .store import FeatureStore

log = logging.getLogger("transferlab")
FEATURE_FORMAT = 1  # bump when the way features are computed changes, so old caches are not reused
# Images per forward pass on a GPU: the frozen pass has no gradients to hold, and at 32 an H200
# spends its time launching kernels.
GPU_BATCH = 256


def device_decoding(device: str, preprocess: Preprocess) -> bool:
    """Whether the frozen pass on `device` decodes JPEGs there (data/device_decode.py)."""
    return str(device).startswith("cuda") and supported(preprocess.interpolation)


def extractor_key(backbone: str, weights_identity: str, preprocess: Preprocess, views: int = 1,
                  pooling: str | None = None, device_decoder: bool = False) -> str:
    """Identifies what a feature vector depends on besides the image itself."""
    pre = preprocess.to_dict()
    if pre["resize"] == "crop":  # the keys of cropped features stay those of earlier versions
        del pre["resize"]
    described = {"backbone": backbone, "weights": weights_identity, "format": FEATURE_FORMAT, "preprocess": pre}
    if views != 1:  # a key of its own; single-view keys stay those of earlier versions
        described["views"] = views
    if pooling:  # bilinear:<tapped layer>; average-pooled keys stay as they were
        described["pooling"] = pooling
    if device_decoder:  # other pixels (another decoder's rounding): features of their own
        described["decoder"] = "torchvision"
    text = json.dumps(described, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


@dataclass
class Extracted:
    features: np.ndarray           # (n_ok, F) float32, in the order of the readable images
    ok: np.ndarray                 # bool mask over the images asked for
    failures: list[UnreadableImage] = field(default_factory=list)
    computed: int = 0
    cached: int = 0
    forward_seconds: float = 0.0   # spent in the network's forward
    torch_seconds: float = 0.0     # what that forward would have taken in PyTorch (runtime/frozen.py)


def frozen_features(network: Network, images: list[ImageRef], preprocess: Preprocess, key: str,
                    cache: Path | None, runtime: str = "auto", device: str = "cpu",
                    stores: dict | None = None, **options) -> Extracted:
    """`extract_features` through the store of the runtime in use (runtime/frozen.py): onnxruntime
    where `runtime` resolves to it and the graph can be made, else PyTorch, said in one line.
    `key` is the extractor key (extractor_key), `cache` the cache root (None: no disk cache);
    `stores` keeps the opened FeatureStores across calls."""
    stores = {} if stores is None else stores
    chosen = resolve_runtime(runtime, device)
    why = unexportable(key, cache) if chosen != "torch" else None
    if why:
        if runtime != "auto":
            raise TransferlabError(f"--runtime {runtime}: {why}: give --runtime torch")
        # Not the user's problem (the PyTorch pass is the one every run had): said where -v shows it.
        say_once(f"runtime: {why}: this network's frozen pass runs in PyTorch", logging.INFO)
        chosen = "torch"
    forward = None
    if chosen == "onnx-int8":
        try:
            forward = int8_pass(network, preprocess.input_size, key, cache,
                                lambda: calibration_pixels(images, preprocess, options.get("decoded")))
        except NotExportable as err:
            raise TransferlabError(f"--runtime onnx-int8: {err}: give --runtime torch") from None
    # int8 features are another graph's for every calibration: cached under that graph's digest
    store_key = (runtime_key(key, f"onnx-int8:{forward.digest}" if forward else chosen), cache)
    if store_key not in stores:
        stores[store_key] = FeatureStore.for_extractor(*store_key)
    try:
        return extract_features(network, images, preprocess, stores[store_key], device=device, runtime=chosen,
                                graph=(key, cache), forward=forward, **options)
    except NotExportable:
        return frozen_features(network, images, preprocess, key, cache, runtime, device, stores, **options)


def extract_features(network: Network, images: list[ImageRef], preprocess: Preprocess,
                     store: FeatureStore, batch_size: int = 32, decoded: DecodedImages | None = None,
                     progress: bool = True, desc: str = "features", device: str = "cpu", runtime: str = "torch",
                     graph: tuple[str, Path | None] | None = None, forward=None) -> Extracted:
    """Pooled backbone features for every readable image; only images missing from `store` are
    decoded and run through the backbone (eval mode, inference mode) on `device`, in PyTorch
    (channels_last) or, with `runtime` 'onnx', through the graph named by `graph` (the extractor
    key and cache root), or through `forward` when given (an int8 pass). On a GPU, JPEGs are
    decoded there too (`device_decoding`), GPU_BATCH images at a time."""
    keys = [im.key for im in images]
    have = store.get_many(list(dict.fromkeys(keys)))
    todo = [i for i, k in enumerate(keys) if k not in have]
    failures: list[UnreadableImage] = []
    forward_seconds, speedup = 0.0, 1.0
    if todo:
        key, cache = graph or (store.path.stem if store.path else None, None)
        if key is None:  # nothing names the graph (nor the session kept for it): PyTorch's pass
            runtime = "torch"
        forward = forward or frozen_pass(network, preprocess.input_size, key, runtime, cache, device)
        speedup = forward.speedup
        bar = progress_bar(total=len(todo), desc=desc, enabled=progress)
        todo_images = [images[i] for i in todo]
        with torch.inference_mode():
            for positions, batch, failed in _batches(todo_images, preprocess, batch_size, decoded, device):
                failures += failed
                if positions:
                    started = time.perf_counter()
                    vectors = _features(forward, batch)
                    forward_seconds += time.perf_counter() - started
                    new = {todo_images[p].key: v for p, v in zip(positions, vectors)}
                    store.put_many(new)
                    have.update(new)
                bar.update(len(positions) + len(failed))
        network.to("cpu")
        bar.close()
    ok = np.array([k in have for k in keys], dtype=bool)
    dim = next(iter(have.values())).shape[0] if have else 0
    feats = np.stack([have[k] for k in keys if k in have]) if ok.any() else np.zeros((0, dim), np.float32)
    return Extracted(feats, ok, failures, computed=len(todo) - len(failures), cached=len(keys) - len(todo),
                     forward_seconds=forward_seconds, torch_seconds=forward_seconds * speedup)


def calibration_pixels(images: list[ImageRef], preprocess: Preprocess, decoded: DecodedImages | None = None
                       ) -> np.ndarray:
    """(N, 3, S, S) float32 eval views of up to CALIBRATION_IMAGES of `images` (a seeded draw):
    what an int8 graph's activation ranges are calibrated on."""
    from ..runtime.quantize import CALIBRATION_IMAGES

    rng = np.random.default_rng(0)
    chosen = sorted(rng.choice(len(images), min(CALIBRATION_IMAGES, len(images)), replace=False))
    crops = [preprocess.center_crop(p) for _, pixels, _ in
             frozen_batches([images[i] for i in chosen], preprocess.resize_size, preprocess.interpolation, 32, decoded)
             for p in pixels]
    if not crops:
        raise TransferlabError("--runtime onnx-int8: none of the images could be read to calibrate the int8 graph")
    return to_batch(crops).float().contiguous().numpy()


def _features(forward, batch: torch.Tensor) -> np.ndarray:
    """Pooled features of a batch through `forward` (runtime/frozen.py). On a CPU a batch of one image takes another convolution path
    (about 1e-6 from the same image's vector in any larger batch), so a single image, say one
    recomputed after its cached vector was damaged, is run beside a copy of itself: its vector is
    then the one a clean cache holds, and so is the model fitted on it."""
    if len(batch) == 1:
        return forward(torch.cat([batch, batch]))[:1]
    return forward(batch)


def _batches(images: list[ImageRef], preprocess: Preprocess, batch_size: int, decoded: DecodedImages | None,
             device: str):
    """(positions, NCHW uint8 batch on `device`, failures): decoded on the CPU (the decoded-image
    cache, data/cache.py frozen_batches), or, on a GPU, by the device decoder with the next batch's files
    read and decoded while the current one runs."""
    if not device_decoding(device, preprocess):
        for positions, pixels, failed in frozen_batches(images, preprocess.resize_size, preprocess.interpolation,
                                                        batch_size, decoded, device):
            batch = to_batch([preprocess.center_crop(p) for p in pixels]) if pixels else None
            if batch is not None and str(device).startswith("cuda"):  # pinned: the copy overlaps the next decode
                batch = batch.pin_memory().to(device, non_blocking=True)
            elif batch is not None and str(device) != "cpu":
                batch = batch.to(device)
            yield positions, batch, failed
        return
    from concurrent.futures import ThreadPoolExecutor

    size = max(batch_size, GPU_BATCH)
    starts = list(range(0, len(images), size))
    with ThreadPoolExecutor(max_workers=1) as ahead:
        pending = ahead.submit(decode_crops, images[:size], preprocess, device)
        for k, start in enumerate(starts):
            done = pending.result()
            if k + 1 < len(starts):
                pending = ahead.submit(decode_crops, images[starts[k + 1]:starts[k + 1] + size], preprocess, device)
            yield [start + p for p in done.positions], done.pixels, done.failures
