"""Decoding where the network runs (nvJPEG on a GPU): exercised here through torchvision's CPU
decoder, the same code path on another device. Every file the fast path cannot take (PNG, CMYK,
truncated, corrupt, missing) falls back to decode() and is reported by name as before."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.data.decode import decode
from transferlab.data.device_decode import decode_crops
from transferlab.data.types import ImageRef
from transferlab.features.extract import device_decoding, extractor_key
from transferlab.models.preprocess import Preprocess

PRE = Preprocess(224, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG); none on this machine")


def pillow_view(path, pre=PRE):
    return pre.center_crop(decode(path, pre.resize_size, pre.interpolation))


def as_hwc(batch: torch.Tensor) -> np.ndarray:
    return batch.permute(0, 2, 3, 1).cpu().numpy()


def test_jpeg_photos_decode_on_the_device_path_close_to_pillow(hymenoptera):
    files = sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[:12]
    batch = decode_crops([ImageRef.from_file(f) for f in files], PRE, "cpu")
    assert batch.on_device == 12 and batch.positions == list(range(12)) and not batch.failures
    assert batch.pixels.shape == (12, 3, 224, 224) and batch.pixels.dtype == torch.uint8
    assert batch.pixels.is_contiguous(memory_format=torch.channels_last)
    diff = np.abs(as_hwc(batch.pixels).astype(int) - np.stack([pillow_view(f) for f in files]).astype(int))
    assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 2, (diff.mean(), np.percentile(diff, 99))


def test_every_other_file_falls_back_to_decode_and_failures_are_named(hymenoptera, tmp_path):
    photo = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[0]
    shutil.copy(photo, tmp_path / "good.jpg")
    with Image.open(photo) as img:
        img.save(tmp_path / "picture.png")
        img.convert("CMYK").save(tmp_path / "cmyk.jpg")
        img.convert("L").save(tmp_path / "grey.jpg")
        rotated = img.copy()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown rotated by 90 degrees
    rotated.save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    data = photo.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_bytes(b"not a jpeg at all")
    names = ["good.jpg", "picture.png", "cut.jpg", "cmyk.jpg", "missing.jpg", "grey.jpg", "text.jpg", "rotated.jpg"]
    refs = [ImageRef.from_file(tmp_path / n) for n in names]
    batch = decode_crops(refs, PRE, "cpu")
    assert batch.positions == [0, 1, 3, 5, 7]
    assert batch.on_device == 3  # good, grey, rotated; the PNG and the CMYK JPEG went through decode()
    reasons = {f.source.rsplit("/", 1)[-1]: f.reason for f in batch.failures}
    assert reasons == {"cut.jpg": "truncated file", "missing.jpg": "file not found", "text.jpg": "not an image"}
    got = dict(zip(batch.positions, as_hwc(batch.pixels)))
    assert np.array_equal(got[1], pillow_view(tmp_path / "picture.png"))  # decode() itself: identical
    assert np.array_equal(got[3], pillow_view(tmp_path / "cmyk.jpg"))
    for k in (0, 5, 7):  # the device path: upright, RGB, close to Pillow's
        want = pillow_view(tmp_path / names[k])
        assert np.abs(got[k].astype(int) - want.astype(int)).mean() < 1.0, names[k]
    assert (got[5][..., 0] == got[5][..., 1]).all()


def test_an_interpolation_the_device_cannot_resize_with_goes_through_decode(hymenoptera):
    pre = Preprocess(96, 0.9, "lanczos", (0.5,) * 3, (0.5,) * 3)
    files = sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[:3]
    batch = decode_crops([ImageRef.from_file(f) for f in files], pre, "cpu")
    assert batch.on_device == 0
    assert np.array_equal(as_hwc(batch.pixels), np.stack([pillow_view(f, pre) for f in files]))
    assert not device_decoding("cuda", pre)


def test_features_decoded_on_a_gpu_are_cached_apart_from_pillow_ones():
    assert device_decoding("cuda", PRE) and device_decoding("cuda:1", PRE) and not device_decoding("cpu", PRE)
    plain = extractor_key("tf_efficientnet_lite0", "w", PRE)
    assert extractor_key("tf_efficientnet_lite0", "w", PRE, device_decoder=True) != plain
    assert extractor_key("tf_efficientnet_lite0", "w", PRE, device_decoder=False) == plain


@CUDA
def test_nvjpeg_on_the_gpu_matches_the_cpu_decoder(hymenoptera):
    files = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:16]
    refs = [ImageRef.from_file(f) for f in files]
    gpu, cpu = decode_crops(refs, PRE, "cuda"), decode_crops(refs, PRE, "cpu")
    assert gpu.on_device == 16 and gpu.pixels.device.type == "cuda"
    assert np.abs(as_hwc(gpu.pixels).astype(int) - as_hwc(cpu.pixels).astype(int)).mean() < 1.0
