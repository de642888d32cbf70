"""Augmentation: owns training-time augmentation on cached decoded images.

The decoded-image cache holds (H, W, 3) uint8 arrays already resized to `resize_size` (the shorter
side, or the whole S x S square under `--resize squash`).
build_augment() turns one of them into a (3, S, S) uint8 tensor for training; build_batch_mix()
optionally mixes a batch (MixUp / CutMix). Both are thin wrappers around torchvision.transforms.v2:

* pixels stay uint8 (0..255) and are never normalised: the network normalises them itself;
* every random draw comes from torch's global RNG (v2 draws with torch.rand / torch.randint /
  torch.distributions), so torch.manual_seed() at the start of an epoch makes that epoch's
  augmentation exactly reproducible; numpy's and Python's `random` state play no part;
* it runs on every training image of every epoch on small CPUs, so the array is wrapped without a
  copy (torch.from_numpy(...).permute(2, 0, 1) is a channels-last view, which v2's native uint8
  resize handles directly) and the only full-size copy is the final .contiguous() of the S x S result.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..config import AUGMENT_PRESETS
from ..errors import TransferlabError


# RandomResizedCrop's aspect-ratio range (the torchvision / timm default).
_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# RandAugment's magnitude scale: torchvision's default num_magnitude_bins=31 gives magnitudes 0..30.
_MAGNITUDE_BINS = 31

# Decoding (Pillow) knows more filters than tensor resizing does. Tensors resize with nearest,
# bilinear, bicubic or lanczos; box and hamming fall back to antialiased bilinear, the closest
# tensor filter. Grid-sampled ops (RandomAffine, RandAugment's geometry) only do nearest/bilinear.
_RESIZE_MODES = {
    "nearest": v2.InterpolationMode.NEAREST,
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "lanczos": v2.InterpolationMode.LANCZOS,
    "box": v2.InterpolationMode.BILINEAR,
    "hamming": v2.InterpolationMode.BILINEAR,
}


@dataclass
class AugmentOptions:
    """What training-time augmentation to apply; each field has a command-line option of its own."""

    preset: str = "standard"       # --augment: one of AUGMENT_PRESETS
    scale_min: float = 0.25        # --scale-min: standard/randaugment RandomResizedCrop area range (scale_min, 1)
    width_shift: float = 0.1       # --width-shift: classic, fraction of width (Keras width_shift_range)
    height_shift: float = 0.1      # --height-shift: classic, fraction of height (Keras height_shift_range)
    rotation: float = 15.0         # --rotation: classic, degrees; angle drawn from [-rotation, rotation]
    zoom: float = 0.1              # --zoom: classic, Keras zoom_range -> scale in [1 - zoom, 1 + zoom]
    hflip: bool = True             # --hflip / --no-hflip: every preset except none
    magnitude: int = 9             # --magnitude: randaugment, 0..30
    mixup: float = 0.0             # --mixup: Beta alpha; 0 = off
    cutmix: float = 0.0            # --cutmix: Beta alpha; 0 = off


def _number(value, option: str, low: float, high: float, *, low_open: bool = False,
            high_open: bool = False, valid: str) -> float:
    """`value` as a float, or a TransferlabError naming `option` and its valid range."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if ok:
        value = float(value)
        ok = (math.isfinite(value)
              and (value > low if low_open else value >= low)
              and (value < high if high_open else value <= high))
    if not ok:
        raise TransferlabError(f"{option} {value!r} is not valid; use {valid}")
    return value


def _check_options(options: AugmentOptions) -> None:
    if not isinstance(options.preset, str) or options.preset not in AUGMENT_PRESETS:
        raise TransferlabError(
            f"--augment {options.preset!r} is not a known preset; use one of {', '.join(AUGMENT_PRESETS)}")
    _number(options.scale_min, "--scale-min", 0.0, 1.0, low_open=True,
            valid="a number in (0, 1], the smallest crop area as a fraction of the image")
    _number(options.width_shift, "--width-shift", 0.0, 1.0, high_open=True,
            valid="a fraction of the width in [0, 1)")
    _number(options.height_shift, "--height-shift", 0.0, 1.0, high_open=True,
            valid="a fraction of the height in [0, 1)")
    _number(options.rotation, "--rotation", 0.0, 180.0, valid="degrees in [0, 180]")
    _number(options.zoom, "--zoom", 0.0, 1.0, high_open=True,
            valid="a number in [0, 1) (scale drawn from [1 - zoom, 1 + zoom])")
    if not isinstance(options.hflip, (bool, np.bool_)):
        raise TransferlabError(f"--hflip {options.hflip!r} is not valid; use true or false")
    magnitude = options.magnitude
    if (isinstance(magnitude, (bool, np.bool_)) or not isinstance(magnitude, (int, np.integer))
            or not 0 <= magnitude < _MAGNITUDE_BINS):
        raise TransferlabError(
            f"--magnitude {magnitude!r} is not valid; use a whole number from 0 to {_MAGNITUDE_BINS - 1}")
    _number(options.mixup, "--mixup", 0.0, math.inf, high_open=True,
            valid="a Beta alpha >= 0 (0 turns MixUp off; 0.2 to 1 is usual)")
    _number(options.cutmix, "--cutmix", 0.0, math.inf, high_open=True,
            valid="a Beta alpha >= 0 (0 turns CutMix off; 1 is usual)")


def _check_size(input_size) -> int:
    if isinstance(input_size, (bool, np.bool_)) or not isinstance(input_size, (int, np.integer)) or input_size < 1:
        raise TransferlabError(f"input size {input_size!r} is not valid; use a positive whole number of pixels")
    return int(input_size)


def _resize_mode(interpolation: str) -> v2.InterpolationMode:
    if interpolation not in _RESIZE_MODES:
        raise TransferlabError(
            f"interpolation {interpolation!r} is not known; use one of {', '.join(_RESIZE_MODES)}")
    return _RESIZE_MODES[interpolation]


def build_augment(options: AugmentOptions, input_size: int,
                  interpolation: str = "bilinear") -> Callable[[np.ndarray], torch.Tensor]:
    """Return f(pixels) -> (3, input_size, input_size) contiguous uint8 tensor, for training.

    pixels: an (H, W, 3) uint8 array, normally with its shorter side already at the eval resize
    size. It is never modified and the result never shares its memory. An image whose shorter side
    is below input_size is first resized up (v2.Resize) so the presets that start with a centre crop
    (none, classic) have enough pixels; RandomResizedCrop resizes any crop to size by itself.

    Presets:
      none:        centre crop of input_size, exactly the eval view
                   (top = int(round((h - s) / 2)), left likewise); no randomness.
      standard:    RandomResizedCrop(input_size, scale=(scale_min, 1), ratio=(3/4, 4/3), antialias)
                   + RandomHorizontalFlip (if hflip).
      classic:     Keras ImageDataGenerator style: centre crop to input_size, then
                   RandomAffine(degrees=rotation, translate=(width_shift, height_shift),
                   scale=(1 - zoom, 1 + zoom)) + RandomHorizontalFlip (if hflip).
      randaugment: as standard, then RandAugment(num_ops=2, magnitude=magnitude).

    `interpolation` (the backbone's, as in Preprocess) is used for resizing; box and hamming become
    bilinear. Grid-sampled ops use bilinear, or nearest when interpolation is "nearest".
    Invalid options raise TransferlabError naming the option (--augment, --scale-min, ...).
    """
    _check_options(options)
    size = _check_size(input_size)
    resize_mode = _resize_mode(interpolation)
    grid_mode = v2.InterpolationMode.NEAREST if interpolation == "nearest" else v2.InterpolationMode.BILINEAR
    flip = [v2.RandomHorizontalFlip(p=0.5)] if options.hflip else []
    preset = options.preset

    if preset == "none":
        steps = [v2.CenterCrop(size)]
    elif preset == "classic":
        steps = [
            v2.CenterCrop(size),
            # Keras semantics: angle in [-rotation, rotation], shifts as fractions of width and
            # height (v2 rounds them to whole pixels), scale in [1 - zoom, 1 + zoom]. Keras fills
            # uncovered corners with the nearest edge pixel (fill_mode="nearest"); v2 has no such
            # mode for affine, so they are filled with 0 (black), which is fine for training.
            # fill=None *is* the 0 fill: grid_sample's zero padding, in one pass. fill=0 would add
            # a mask channel (~25% slower) and multiply edge pixels by their coverage twice.
            v2.RandomAffine(degrees=float(options.rotation),
                            translate=(float(options.width_shift), float(options.height_shift)),
                            scale=(1.0 - float(options.zoom), 1.0 + float(options.zoom)),
                            interpolation=grid_mode, fill=None),
            *flip,
        ]
    else:  # standard, randaugment
        steps = [
            v2.RandomResizedCrop(size, scale=(float(options.scale_min), 1.0), ratio=_CROP_RATIO,
                                 interpolation=resize_mode, antialias=True),
            *flip,
        ]
        if preset == "randaugment":
            steps.append(v2.RandAugment(num_ops=2, magnitude=int(options.magnitude),
                                        num_magnitude_bins=_MAGNITUDE_BINS, interpolation=grid_mode,
                                        fill=None))  # 0 (black) corners, as in classic
    pipeline = v2.Compose(steps)
    needs_full_size = preset in ("none", "classic")

    def augment(pixels: np.ndarray) -> torch.Tensor:
        if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8
                and pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.shape[0] > 0 and pixels.shape[1] > 0):
            raise ValueError(f"augment expects an (H, W, 3) uint8 array, got "
                             f"{getattr(pixels, 'shape', None)} {getattr(pixels, 'dtype', type(pixels))}")
        if pixels.flags.writeable:
            image = torch.from_numpy(pixels)
        else:
            # A read-only cached array: nothing below writes into the input, so wrapping it is safe.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                image = torch.from_numpy(pixels)
        image = image.permute(2, 0, 1)  # CHW view of HWC memory (channels-last strides), no copy
        if needs_full_size and min(pixels.shape[0], pixels.shape[1]) < size:
            image = F.resize(image, [size], interpolation=resize_mode, antialias=True)
        out = pipeline(image)
        out = out.contiguous()
        if out.data_ptr() == image.data_ptr():  # a 1x1 image at input_size 1 is already "contiguous"
            out = out.clone()
        return out

    return augment


def build_batch_mix(options: AugmentOptions, num_classes: int
                    ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """Return None when mixup and cutmix are both 0, else f(x, y) -> (mixed x, soft targets).

    x: a float (N, C, H, W) batch of 0..255 pixels (an integer batch is converted to float32);
    y: (N,) integer labels in [0, num_classes). Returns the mixed float batch (x itself is not
    modified) and (N, num_classes) float targets whose rows sum to 1. Uses torchvision v2 MixUp
    and/or CutMix (v2.RandomChoice between them, equally likely, when both are on). v2 pairs each
    sample with its predecessor in the batch (a roll by one), so the batch should be shuffled.
    """
    _check_options(options)
    if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise TransferlabError(f"number of classes {num_classes!r} is not valid; use a positive whole number")
    num_classes = int(num_classes)
    mixers = []
    if options.mixup > 0:
        mixers.append(v2.MixUp(alpha=float(options.mixup), num_classes=num_classes))
    if options.cutmix > 0:
        mixers.append(v2.CutMix(alpha=float(options.cutmix), num_classes=num_classes))
    if not mixers:
        return None
    mixer = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def mix(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"batch mix expects x (N, C, H, W) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
        if not x.is_floating_point():
            x = x.float()
        mixed, targets = mixer(x, y.long())
        return mixed, targets

    return mix
