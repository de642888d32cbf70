"""Decoding: owns turning any image file (or in-memory image) into RGB uint8 pixels.

Every image goes through decode() exactly once, so it is written for speed (JPEG draft
decoding, one resize in Pillow, one copy into numpy) and for honesty: an image that cannot
be read raises UnreadableImage naming the file and the reason, instead of coming back as
a half-grey picture or a Pillow exception type nobody catches.
"""

from __future__ import annotations

import io
import os
import re

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485  # same order as Pillow's own limit; images above are refused

_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# Pillow's convert("L") clips these at 255; they need scaling (16-bit) or rounding (float).
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_WHITE = (255, 255, 255)


class UnreadableImage(Exception):
    """Raised for one image that cannot be read.

    Attributes: .source (str: the path or name) and .reason (short lowercase text such as
    'truncated file', 'not an image', 'file not found',
    'decompression bomb: 120000000 pixels > limit 89478485'). str(exc) is "source: reason".
    """

    def __init__(self, source: object, reason: str):
        # Both go to Exception.__init__ so the exception survives pickling (worker processes).
        super().__init__(str(source), reason)
        self.source = str(source)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


def decode(source, shorter_side: int | tuple[int, int] | None = None, interpolation: str = "bicubic",
           max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return an (H, W, 3) uint8 C-contiguous array.

    source: a path (str or pathlib.Path), the bytes of an image file (an upload: decoded exactly as
    the same file on disk would be), a PIL.Image.Image, or a numpy array (H,W), (H,W,1),
    (H,W,3) or (H,W,4) of any integer dtype or float (floats are taken as [0,1] and scaled by
    255, uint16 by 1/257, other integers clipped to [0,255]). Alpha is composited onto white
    and EXIF orientation is applied.
    shorter_side: if given, resize so the shorter side equals it exactly and the longer side is
    int(long * shorter_side / short) (at least 1; truncated like torchvision); a (width, height)
    pair resizes to exactly that size, whatever the aspect ratio. Resizing uses `interpolation` in
    {"bilinear","bicubic","nearest","lanczos","box","hamming"}. Small images are upscaled.
    Raises UnreadableImage for an image that cannot be read, including a file or PIL image with
    more than max_pixels pixels (refused from its header, before its pixels are decoded).
    """
    if interpolation not in _FILTERS:
        raise ValueError(
            f"unknown interpolation {interpolation!r}; choose one of {', '.join(_FILTERS)}")
    sides = shorter_side if isinstance(shorter_side, tuple) and len(shorter_side) == 2 else (shorter_side,)
    if shorter_side is not None and any(type(v) is not int or v < 1 for v in sides):
        # type() rather than isinstance: True is an int, but shorter_side=True is a mistake
        raise ValueError(f"shorter_side must be a positive integer, a (width, height) pair or None, "
                         f"got {shorter_side!r}")
    resample = _FILTERS[interpolation]

    if isinstance(source, np.ndarray):
        name = f"<array {source.shape} {source.dtype}>"
        return _guarded(name, max_pixels, lambda: _from_pil(name, _from_array(name, source), shorter_side,
                                                            resample, max_pixels))
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or "<PIL image>"
        return _guarded(name, max_pixels,
                        lambda: _from_pil(name, source, shorter_side, resample, max_pixels))
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return _guarded(path, max_pixels,
                        lambda: _from_file(path, shorter_side, resample, max_pixels))
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = f"<{len(source)} bytes>"
        return _guarded(name, max_pixels,
                        lambda: _from_stream(name, io.BytesIO(source), shorter_side, resample, max_pixels))
    raise TypeError(
        f"decode() takes a path, image bytes, a PIL image or a numpy array, not {type(source).__name__}")


def _guarded(name: str, max_pixels: int, work) -> np.ndarray:
    """Run work() so that any failure comes out as UnreadableImage(name, short reason)."""
    try:
        return work()
    except UnreadableImage:
        raise
    except Exception as exc:
        raise UnreadableImage(name, _reason(exc, max_pixels)) from exc


def _reason(exc: Exception, max_pixels: int) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        # Pillow fired because the image is above its own limit (we make its warning an error),
        # so the limit that applied is the smaller of the two, whichever check came first.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
        pixels = found[1] if found else "too many"
        return f"decompression bomb: {pixels} pixels > limit {limit}"
    if "truncated" in str(exc).lower():
        return "truncated file"
    return f"corrupt file: {exc or type(exc).__name__}"


def _check_size(name: str, size: tuple[int, int], max_pixels: int, shorter_side: int | tuple | None = None) -> None:
    # Pillow only warns between 1x and 2x its own limit; refusing here at the smaller limit turns
    # that into a refusal too, without touching warning filters (not thread-safe; decoding
    # runs in threads).
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    pixels = size[0] * size[1]
    if pixels > limit:
        raise UnreadableImage(name, f"decompression bomb: {pixels} pixels > limit {limit}")
    if pixels == 0:
        raise UnreadableImage(name, "empty image (0 pixels)")
    if shorter_side:
        # A thin strip is small as a file but huge once its shorter side is scaled up:
        # 50000x1 at a 224 px shorter side would be 2.5 billion pixels.
        width, height = _target_size(size, shorter_side)
        if width * height > limit:
            raise UnreadableImage(name, f"too elongated: {size[0]}x{size[1]} resized to a {shorter_side} px "
                                        f"shorter side would be {width * height} pixels > limit {limit}")


def _from_file(path: str, shorter_side, resample, max_pixels) -> np.ndarray:
    # Opening the file ourselves closes it on every path, whatever Image.open does when it
    # raises (its bomb check runs after it has opened the file), so no ResourceWarnings.
    with open(path, "rb") as fp:
        return _from_stream(path, fp, shorter_side, resample, max_pixels)


def _from_stream(name: str, fp, shorter_side, resample, max_pixels) -> np.ndarray:
    with Image.open(fp) as img:
        _check_size(name, img.size, max_pixels, shorter_side)  # header only: nothing decoded yet
        full_size = img.size
        box = None
        # MPO is how Pillow opens many camera JPEGs (extra preview frames); same decoder.
        target = _target_size(full_size, shorter_side) if shorter_side else None
        if target and img.format in ("JPEG", "MPO") and all(f >= 2 * t for f, t in zip(full_size, target)):
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale; Pillow picks the smallest scale whose
            # result is still >= the requested size on both sides.
            drafted = img.draft("RGB", (shorter_side, shorter_side) if isinstance(shorter_side, int) else target)
            box = drafted[1] if drafted else None
        img.load()  # the full decode happens here, so truncation is detected here
        if box is not None and img.size != full_size:
            # Finish the reduction now, before orientation: the draft's box (the real content,
            # without the partial edge pixel) is in unrotated coordinates. Resize keeps .info,
            # so the JPEG's EXIF orientation is still there for _finish.
            reduced = img.resize(_target_size(full_size, shorter_side), resample, box=box,
                                 reducing_gap=None)
            return _finish(reduced, shorter_side, resample)
        return _finish(img, shorter_side, resample)


def _from_pil(name: str, img: Image.Image, shorter_side, resample, max_pixels) -> np.ndarray:
    _check_size(name, img.size, max_pixels, shorter_side)
    img.load()  # a lazily opened image would otherwise fail later, far from its name
    return _finish(img, shorter_side, resample)


def _from_array(name: str, arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or arr.size == 0:
        raise UnreadableImage(name, f"unsupported array shape {arr.shape}")
    if arr.dtype == np.uint16:
        arr = np.rint(arr / 257.0)
    elif arr.dtype.kind == "f":
        arr = np.rint(np.clip(np.nan_to_num(arr * 255.0), 0, 255))
    elif arr.dtype.kind == "b":
        arr = arr * 255
    elif arr.dtype.kind in "iu" and arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255)
    elif arr.dtype != np.uint8:
        raise UnreadableImage(name, f"unsupported array dtype {arr.dtype}")
    return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))  # L, RGB or RGBA by shape


def _finish(img: Image.Image, shorter_side, resample) -> np.ndarray:
    img = _orient(img)
    img = _flatten(img)  # "L" or "RGB" from here on
    if shorter_side:
        size = _target_size(img.size, shorter_side)
        if size != img.size:
            img = img.resize(size, resample, reducing_gap=None)
    if img.mode != "RGB":
        img = img.convert("RGB")  # grey is resized as one band, expanded only at the end
    return np.array(img)  # a writable copy; np.asarray would give a read-only view of bytes


def _orient(img: Image.Image) -> Image.Image:
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return img  # a broken EXIF block should cost the rotation, not the whole image
    return ImageOps.exif_transpose(img) if orientation in range(2, 9) else img


def _flatten(img: Image.Image) -> Image.Image:
    """Any mode -> "L" or "RGB", alpha composited onto white."""
    mode = img.mode
    if mode in ("L", "RGB") and "transparency" not in img.info:
        return img
    if mode in _WIDE_MODES:
        values = np.asarray(img, dtype=np.float64)
        if mode != "F":
            values = values / 257.0  # 65535 -> 255 and 32896 -> 128, not clipped at 255
        return Image.fromarray(np.rint(np.clip(np.nan_to_num(values), 0, 255)).astype(np.uint8))
    if mode == "1":
        return img.convert("L")
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _WHITE)
        canvas.paste(rgba, (0, 0), rgba)  # blends by alpha: transparent -> white
        return canvas
    return img.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV, RGBX, ...


def _target_size(size: tuple[int, int], shorter_side: int | tuple[int, int]) -> tuple[int, int]:
    # The long side is truncated, as torchvision's Resize does, so the pixels match timm's own
    # eval transform exactly.
    if isinstance(shorter_side, tuple):
        return shorter_side
    w, h = size
    if w <= h:
        return shorter_side, max(1, int(h * shorter_side / w))
    return max(1, int(w * shorter_side / h)), shorter_side
