"""Decoding on the accelerator: batches of JPEG files decoded by torchvision (nvJPEG on a GPU,
libjpeg on the CPU), resized and centre-cropped where they will be used; every other file, and
any JPEG that path refuses (CMYK, damaged, too large), goes through decode() as always.

On a GPU the network outruns the CPU's JPEG decoding many times over (EfficientNet-Lite0 in
bf16 on an H200 takes microseconds per image), so decoding where the network runs is what keeps
it busy. The pixels are not bit-identical to decode()'s (another JPEG decoder's rounding, and
torch's antialiased resize, which is written to match Pillow's closely): a test bounds the
difference, and a consumer that caches by pixels must key this decoder apart.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .decode import (
    DEFAULT_MAX_PIXELS,
    UnreadableImage,
    _check_size,
    _target_size,
    decode,
)
from .types import ImageRef

_JPEG_MAGIC, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
# Modes nvJPEG turns into RGB the way decode() does; CMYK and YCCK (Adobe) JPEGs are left to Pillow.
_DEVICE_MODES = {"RGB", "L"}
_MODES = {"bilinear": "bilinear", "bicubic": "bicubic"}  # torch's antialiased kernels


@dataclass
class DecodedBatch:
    pixels: torch.Tensor             # (n_ok, 3, S, S) uint8 on the device, in the order of `positions`
    positions: list[int]             # which of the images asked for these are
    failures: list[UnreadableImage] = field(default_factory=list)
    on_device: int = 0               # how many took the device path (the rest went through decode())


def supported(interpolation: str) -> bool:
    """Whether the device path can resize with this interpolation (else decode() does it all)."""
    return interpolation in _MODES


def decode_crops(images: list[ImageRef], preprocess, device: str | torch.device,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedBatch:
    """The network's view (resize, centre crop) of each readable image, on `device`."""
    device = torch.device(device)
    size = preprocess.input_size
    jpegs: dict[int, tuple[torch.Tensor, tuple[int, int]]] = {}
    results: dict[int, torch.Tensor] = {}
    failures: list[UnreadableImage] = []
    for k, image in enumerate(images):
        data = _jpeg_bytes(image, max_pixels, preprocess.resize_size) if supported(preprocess.interpolation) else None
        if data is not None:
            jpegs[k] = data
    decoded = _decode_jpegs([jpegs[k][0] for k in jpegs], device)
    for k, pixels in zip(list(jpegs), decoded):
        if pixels is not None:
            results[k] = _resize_crop(pixels, preprocess)
    on_device = len(results)
    for k, image in enumerate(images):
        if k in results:
            continue
        try:
            pixels = decode(image.source, preprocess.resize_size, preprocess.interpolation, max_pixels)
        except UnreadableImage as err:
            err.source = image.name
            failures.append(err)
            continue
        crop = np.ascontiguousarray(preprocess.center_crop(pixels))
        results[k] = torch.from_numpy(crop).permute(2, 0, 1).to(device, non_blocking=True)
    positions = sorted(results)
    stacked = torch.stack([results[k] for k in positions]) if positions else \
        torch.zeros((0, 3, size, size), dtype=torch.uint8, device=device)
    return DecodedBatch(stacked.contiguous(memory_format=torch.channels_last), positions, failures, on_device)


def _jpeg_bytes(image: ImageRef, max_pixels: int, resize_size) -> tuple[torch.Tensor, tuple[int, int]] | None:
    """The file's bytes as a uint8 tensor when the device path can take it; None sends it to decode()."""
    if not isinstance(image.source, (str, os.PathLike)):
        return None
    try:
        with open(image.source, "rb") as fp:
            data = fp.read()
    except OSError:
        return None  # decode() reports it by name
    if not data.startswith(_JPEG_MAGIC) or not data.rstrip(b"\x00").endswith(_JPEG_END):
        return None  # not a JPEG, or one cut short: nvJPEG may not say so, decode() does
    try:
        with Image.open(io.BytesIO(data)) as img:  # the header only: size and colour mode
            if img.mode not in _DEVICE_MODES:
                return None
            _check_size(image.name, img.size, max_pixels, resize_size)
            size = img.size
    except Exception:  # noqa: BLE001 - whatever is odd about it, decode() says it by name
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), size


def _decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decoded (3, H, W) uint8 tensors on `device`, EXIF orientation applied; None where the
    decoder refused a file (the whole batch fails on one bad file, so then each is tried alone)."""
    if not datas:
        return []
    from torchvision.io import ImageReadMode, decode_jpeg

    def run(batch):
        with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec, which this machine may lack
            warnings.simplefilter("ignore")
            return decode_jpeg(batch, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)

    try:
        return list(run(datas))
    except RuntimeError:
        pass
    out: list[torch.Tensor | None] = []
    for data in datas:
        try:
            out.append(run([data])[0])
        except RuntimeError:
            out.append(None)
    return out


def _resize_crop(pixels: torch.Tensor, preprocess) -> torch.Tensor:
    """decode()'s resize (shorter side, or the square under squash) then the centre crop, in torch."""
    h, w = pixels.shape[-2:]
    width, height = _target_size((w, h), preprocess.resize_size)
    if (height, width) != (h, w):
        mode = _MODES[preprocess.interpolation]
        x = F.interpolate(pixels[None].float(), size=(height, width), mode=mode, antialias=True,
                          align_corners=False)
        pixels = x[0].round_().clamp_(0, 255).to(torch.uint8)
    s = preprocess.input_size
    top, left = round((height - s) / 2), round((width - s) / 2)  # Preprocess.center_crop's
    return pixels[:, top:top + s, left:left + s]
