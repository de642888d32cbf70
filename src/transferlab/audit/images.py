"""Image properties: unreadable files, tiny, huge and odd-aspect images, grayscale share; and the
small grey thumbnails the near-duplicate check compares pixel by pixel.

Each image is decoded once at a small size (JPEG draft decoding makes this cheap: the whole file
is still read, so truncation is caught) and its header read for the original size and mode.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..data.decode import UnreadableImage, decode
from ..data.types import ImageRef

TINY_SIDE = 32           # shorter side below this many pixels: little left for any network to see
HUGE_PIXELS = 40_000_000  # above this, every pass over the image costs seconds of decoding
ODD_ASPECT = 3.0         # longer / shorter side above this: a centre crop keeps under a third
GREY_SPREAD = 10         # channels within this many levels in 99% of pixels: a grayscale picture
THUMB = 32               # side of the grey thumbnails the pixel check compares
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass
class Inspected:
    width: int = 0
    height: int = 0
    mode: str = ""
    grayscale: bool = False
    thumb: np.ndarray | None = None  # (THUMB, THUMB) uint8 grey, squashed to a square
    error: str | None = None         # why it cannot be read


def _header(ref: ImageRef) -> tuple[int, int, str]:
    if isinstance(ref.source, np.ndarray):
        a = ref.source
        channels = 1 if a.ndim == 2 else a.shape[2]
        return a.shape[1], a.shape[0], "L" if channels == 1 else f"{channels}ch"
    with open(ref.source, "rb") as fp, Image.open(fp) as img:
        return img.size[0], img.size[1], img.mode


def inspect(ref: ImageRef) -> Inspected:
    try:
        pixels = decode(ref.source, 2 * THUMB)
        width, height, mode = _header(ref)
    except UnreadableImage as err:
        return Inspected(error=err.reason)
    except Exception as err:  # the header read after a good decode: reported, never fatal
        return Inspected(error=f"corrupt file: {err}")
    spread = pixels.max(2).astype(np.int16) - pixels.min(2)
    grey = mode in GREY_MODES or float(np.percentile(spread, 99)) <= GREY_SPREAD
    thumb = np.asarray(Image.fromarray(pixels).convert("L").resize((THUMB, THUMB), Image.Resampling.BOX))
    return Inspected(width, height, mode, grey, thumb)


def inspect_all(images: list[ImageRef], workers: int = 4) -> list[Inspected]:
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow decodes without the GIL
        return list(pool.map(inspect, images))


def flags(info: Inspected) -> list[str]:
    """Which of tiny, huge, odd_aspect apply to a readable image."""
    if info.error:
        return []
    short, long = sorted((info.width, info.height))
    found = []
    if short < TINY_SIDE:
        found.append("tiny")
    if info.width * info.height > HUGE_PIXELS:
        found.append("huge")
    if long > ODD_ASPECT * short:
        found.append("odd_aspect")
    return found


def edge_vector(thumb: np.ndarray) -> np.ndarray:
    """Horizontal and vertical differences of a grey thumbnail, centred and L2-normalised: what the
    pixel check correlates. Differences ignore brightness and smooth gradients (sky, sea), which
    make unrelated low-detail pictures correlate in plain intensity."""
    g = thumb.astype(np.float32)
    v = np.concatenate([np.diff(g, axis=1)[:-1].ravel(), np.diff(g, axis=0)[:, :-1].ravel()])
    v -= v.mean()
    return v / max(float(np.linalg.norm(v)), 1e-6)


def pixel_similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(edge_vector(a) @ edge_vector(b))
