"""The `explain`, `filters` and `activations` commands: open a run (or a bare backbone), read the
images the way prediction reads them, and write the pictures as PNG files and grids."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from ..common.atomic import check_writable
from ..common.run_files import claim_output
from ..data.sources import gather_files
from ..errors import TransferlabError
from ..models import saved
from ..models.factory import ModelSpec, build_model
from ..models.preprocess import Preprocess
from .activations import activation_maps, open_target
from .filters import grow_filter_images
from .gradcam import default_layer, gradcam_with_probabilities
from .images import grid, overlay, save_png

# More overlays than this make a grid too large to look at; every image still gets its own PNG.
GRID_LIMIT = 64
# Activation tiles smaller than this are enlarged (nearest neighbour: each cell stays a square).
_MIN_TILE = 32


@dataclass
class Opened:
    """A model to look inside: a run's network or a bare backbone, with its preprocessing."""

    model: nn.Module
    preprocess: Preprocess
    classes: list[str] | None
    label: str  # what the pictures are named after
    run: Path | None


def open_model(name: str, weights: str = "auto") -> Opened:
    """A run directory (one with model.json) or a timm backbone name with `weights`."""
    path = Path(name)
    if path.is_dir():
        if not (path / "model.json").is_file() and not (path / "config.yaml").is_file():
            raise TransferlabError(f"'{path}' is a folder but not a transferlab run (no model.json): give a run "
                                   "directory or a backbone name")
        model = saved.load(path)
        return Opened(model.network, model.preprocess, [str(c) for c in model.classes], path.name, path)
    if "/" in name or os.sep in name:  # a path that is not there (timm names have no slash)
        raise TransferlabError(f"'{name}' does not exist: give a run directory or a backbone name "
                               "(see `transferlab backbones`)")
    built = build_model(ModelSpec(backbone=name, weights=weights))
    return Opened(built.network.eval(), built.preprocess, None, name, None)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "layer"


def _unique_name(path: Path, used: set[str]) -> str:
    """`stem-gradcam.png`; images of the same name in different folders get their folder's name."""
    for name in (f"{path.stem}-gradcam.png", f"{path.parent.name}-{path.stem}-gradcam.png"):
        if name not in used:
            used.add(name)
            return name
    k = 2
    while f"{path.stem}-{k}-gradcam.png" in used:
        k += 1
    used.add(f"{path.stem}-{k}-gradcam.png")
    return f"{path.stem}-{k}-gradcam.png"


def _network_view(preprocess: Preprocess, path: Path) -> np.ndarray:
    """The (S, S, 3) pixels prediction would give the network for this file."""
    from ..data.decode import decode

    return preprocess.center_crop(decode(path, preprocess.resize_size, preprocess.interpolation))


def _class_index(classes: list[str], name: str | None) -> int | None:
    if name is None:
        return None
    if name in classes:
        return classes.index(name)
    import difflib

    close = difflib.get_close_matches(name, classes, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise TransferlabError(f"--class '{name}' is not a class of this run: {hint}its classes are "
                           f"{', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}")


def explain(run: str | Path, paths: list[str], layer: str | None = None, class_name: str | None = None,
            out: str | Path | None = None, alpha: float = 0.45, columns: int | None = None) -> dict:
    """Grad-CAM overlays for each image (predicted class, or `class_name`) as PNGs and one grid.

    The grid shows the first GRID_LIMIT images. Returns {"layer", "images": [{"path", "class",
    "probability", "png"}], "grid", "unreadable"}."""
    from ..data.decode import UnreadableImage

    if out:  # a file given as the folder is one line before the model loads
        check_writable(out, create=False, option="--out")
    opened = open_model(str(run))
    if opened.run is None:
        raise TransferlabError(f"explain needs a trained run, not the backbone '{run}': Grad-CAM explains "
                               "a class decision (use `transferlab filters` or `activations` for a backbone)")
    if not 0 <= alpha <= 1:
        raise TransferlabError(f"--alpha {alpha} is outside [0, 1]: 0 shows the image, 1 the heatmap only")
    target = _class_index(opened.classes, class_name)
    files = gather_files(paths)
    size = opened.preprocess.input_size
    name = layer or default_layer(opened.model, size)
    open_target(opened.model, name)  # an unknown layer fails before any file is written
    folder = check_writable(Path(out) if out else opened.run / "explain", option="--out")  # before any image
    results, tiles, unreadable, used = [], [], [], set()
    for path in files:
        try:
            view = _network_view(opened.preprocess, path)
        except UnreadableImage as err:
            unreadable.append(str(err))
            continue
        heat, cls, probabilities = gradcam_with_probabilities(opened.model, view, name, target)
        probability = float(probabilities[cls])
        shown = overlay(view, heat, alpha)
        png = save_png(shown, folder / _unique_name(path, used))
        if len(tiles) < GRID_LIMIT:
            tiles.append(shown)
        results.append({"path": str(path), "class": opened.classes[cls], "probability": probability,
                        "png": str(png)})
    grid_path = None
    if tiles:
        grid_path = str(save_png(grid(tiles, columns), folder / "gradcam-grid.png"))
    return {"layer": name, "images": results, "grid": grid_path, "unreadable": unreadable}


def filters(model: str, layer: str, count: int = 16, size: int = 96, steps: int = 60, seed: int = 0,
            out: str | Path | None = None, weights: str = "auto", force: bool = False) -> dict:
    """Gradient-ascent pictures of the first `count` channels of `layer`, as one grid PNG."""
    if count < 1:
        raise TransferlabError(f"--count {count} must be at least 1")
    if size < 16:
        raise TransferlabError(f"--size {size} is too small to show a pattern: give 64 or more")
    opened = open_model(model, weights)
    name = open_target(opened.model, layer).name
    target = _output(out, opened, f"filters-{_slug(name)}.png", force)
    images, start, final = grow_filter_images(opened.model, name, count, size, steps, seed)
    path = save_png(grid(list(images)), target, overwrite=force or out is None)
    return {"layer": name, "channels": len(images), "start": start.tolist(), "final": final.tolist(),
            "png": str(path)}


def _output(out, opened: Opened, default: str, force: bool) -> Path:
    """The PNG to write: `out` as the user named it (checked now: not a run's file, not an existing
    file unless forced), else `default` in the run (or here, named after the backbone)."""
    if out:
        return claim_output(out, force)
    target = opened.run / default if opened.run else Path(f"{_slug(opened.label)}-{default}")
    check_writable(target.parent)
    return target


def _enlarged(maps: np.ndarray) -> np.ndarray:
    side = min(maps.shape[-2:])
    if side >= _MIN_TILE:
        return maps
    factor = -(-_MIN_TILE // side)
    return maps.repeat(factor, axis=-2).repeat(factor, axis=-1)


def activations(model: str, image: str, layer: str, count: int | None = None,
                out: str | Path | None = None, weights: str = "auto", force: bool = False) -> dict:
    """The feature maps of one image at `layer` (all channels, or the first `count`), one tile
    per channel, as a grid PNG; each tile is coloured on its own range."""
    from ..data.decode import UnreadableImage

    if count is not None and count < 1:
        raise TransferlabError(f"--count {count} must be at least 1")
    opened = open_model(model, weights)
    path = Path(image)
    if not path.is_file():
        raise TransferlabError(f"image '{image}' does not exist: give one image file")
    try:
        view = _network_view(opened.preprocess, path)
    except UnreadableImage as err:
        raise TransferlabError(f"cannot read {err}") from None
    maps = activation_maps(opened.model, view, layer)
    maps = maps[:count] if count else maps
    name = open_target(opened.model, layer).name
    default = f"activations-{_slug(path.stem)}-{_slug(name)}.png"
    target = _output(out, opened, default, force)
    png = save_png(grid(list(_enlarged(maps))), target, overwrite=force or out is None)
    return {"layer": name, "channels": int(len(maps)), "map_size": list(maps.shape[-2:]), "png": str(png)}
