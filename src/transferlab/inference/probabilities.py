"""Running a fitted network over images: decode, centre crop, forward in batches."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..common.progress import progress_bar
from ..data.cache import frozen_batches
from ..data.decode import UnreadableImage, decode
from ..data.types import ImageRef
from ..models.network import Network, to_batch
from ..models.preprocess import Preprocess
from ..runtime.frozen import whole_pass



def ten_views(pixels: np.ndarray, size: int) -> list[np.ndarray]:
    """Test-time augmentation: the centre and four corner crops, each also mirrored."""
    h, w = pixels.shape[:2]
    centre = (round((h - size) / 2), round((w - size) / 2))  # Preprocess.center_crop's, the eval view
    corners = [centre, (0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]
    crops = [pixels[t:t + size, x:x + size] for t, x in corners]
    return crops + [c[:, ::-1] for c in crops]


def tta_decode_size(pre: Preprocess) -> int | tuple[int, int]:
    """What test-time augmentation decodes to: a crop run's own resize; a squash run's square
    enlarged by 1 / crop_pct, so its corner crops differ from its centre."""
    if pre.resize == "squash":
        side = max(pre.input_size, math.floor(pre.input_size / pre.crop_pct))
        return side, side
    return pre.resize_size


def tta_views(pixels: np.ndarray, pre: Preprocess) -> list[np.ndarray]:
    """The views averaged by `--tta`: a crop run's ten views (its eval view first); a squash run's
    whole image and its mirror, then the ten views of its enlarged square."""
    views = ten_views(pixels, pre.input_size)
    if pre.resize == "squash":
        whole = decode(pixels, (pre.input_size, pre.input_size), pre.interpolation)
        views = [whole, whole[:, ::-1], *views]
    return views


def _softmax(logits: np.ndarray, mean: bool = False) -> np.ndarray:
    proba = torch.softmax(torch.from_numpy(np.asarray(logits, np.float32)), 1)
    return (proba.mean(0, keepdim=True) if mean else proba).numpy()


def predict_pixels(network: Network, images: list[ImageRef], pre: Preprocess, batch_size: int = 32,
                   device: str = "cpu", progress: bool = False, tta: bool = False, runtime: str = "torch",
                   cache: Path | None = None) -> tuple[np.ndarray, np.ndarray, list[UnreadableImage]]:
    """(softmax probabilities of the readable images, mask of readable images, failures), the
    network run by runtime/frozen.py's `whole_pass` (`runtime`, the graph kept under `cache`).

    With `tta`, each image's probabilities are the mean over its views (tta_views)."""
    views = (12 if pre.resize == "squash" else 10) if tta else 1  # tta_views
    forward = whole_pass(network, pre.input_size, len(images) * views, runtime, cache, device)
    ok = np.zeros(len(images), dtype=bool)
    failures: list[UnreadableImage] = []
    rows: list[np.ndarray] = []
    bar = progress_bar(total=len(images), desc="predict", enabled=progress)
    with torch.inference_mode():
        size = tta_decode_size(pre) if tta else pre.resize_size
        for positions, pixels, failed in frozen_batches(images, size, pre.interpolation, batch_size, None, device):
            failures += failed
            if pixels and tta:
                for p in pixels:
                    x = to_batch(tta_views(p, pre)).to(device)
                    rows.append(_softmax(forward(x), mean=True))
                ok[positions] = True
            elif pixels:
                x = to_batch([pre.center_crop(p) for p in pixels]).to(device)
                rows.append(_softmax(forward(x)))
                ok[positions] = True
            bar.update(len(positions) + len(failed))
    bar.close()
    network.to("cpu")
    # Nothing readable: no rows, but still one column per class (the head's last linear layer's).
    linear = [m for m in network.head.modules() if isinstance(m, torch.nn.Linear)]
    classes = linear[-1].out_features if linear else getattr(network.head, "num_classes", 0)
    proba = np.concatenate(rows) if rows else np.zeros((0, classes), np.float32)
    return proba, ok, failures
