"""Pictures for people: tile grids, heatmap overlays and PNG files."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..common.atomic import replacing


def _colormap(name: str):
    # The registry, not pyplot: no global figure state and no GUI backend is touched.
    import matplotlib

    return matplotlib.colormaps[name]


def colorize(values: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """(H, W) floats, scaled to their own min..max, as (H, W, 3) uint8 colours."""
    values = np.asarray(values, dtype=np.float64)
    low, high = np.nanmin(values), np.nanmax(values)
    unit = (values - low) / (high - low) if high > low else np.zeros_like(values)
    rgba = _colormap(cmap)(np.nan_to_num(unit))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def _as_tile(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        return colorize(image)
    if image.ndim == 3 and image.shape[2] == 3:
        return image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8)
    raise ValueError(f"grid tiles must be (H, W) maps or (H, W, 3) pixels, got shape {image.shape}")


def grid(images, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """One RGB uint8 image of tiles in rows of `columns` (about square by default), `pad` white
    pixels between tiles and around them. (H, W) float tiles are coloured with viridis, each
    scaled to its own range so that weak maps stay visible."""
    tiles = [_as_tile(im) for im in images]
    if not tiles:
        raise ValueError("grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    out = np.full((rows * th + (rows + 1) * pad, columns * tw + (columns + 1) * pad, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        top = pad + (k // columns) * (th + pad)
        left = pad + (k % columns) * (tw + pad)
        out[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    return out


def _resize_map(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    if heatmap.shape == (height, width):
        return heatmap
    image = Image.fromarray(heatmap.astype(np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))


def overlay(pixels: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image with a heatmap in [0, 1] laid over it in the 'jet' colours, as (H, W, 3) uint8."""
    pixels = np.asarray(pixels)
    height, width = pixels.shape[:2]
    heat = np.clip(_resize_map(np.asarray(heatmap, np.float32), height, width), 0.0, 1.0)
    colours = _colormap("jet")(heat)[..., :3] * 255.0
    blended = (1.0 - alpha) * pixels[..., :3].astype(np.float64) + alpha * colours
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write a uint8 image as PNG; a reader never sees a half-written file."""
    path = Path(path)
    with replacing(path, overwrite) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
    return path
