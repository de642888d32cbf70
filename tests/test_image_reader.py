"""Promises of transferlab.data.decode: any image becomes upright (H, W, 3) uint8 RGB pixels,
resized exactly when asked, or fails loudly with UnreadableImage naming the file."""

import gc
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from transferlab.data.decode import DEFAULT_MAX_PIXELS, UnreadableImage, decode

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


# ---------------------------------------------------------------- helpers


def _assert_rgb(arr, shape=None):
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    assert arr.flags.c_contiguous
    if shape is not None:
        assert arr.shape == shape


def _close(pixel, colour, tol=0):
    return np.all(np.abs(np.asarray(pixel, int) - np.asarray(colour, int)) <= tol)


def _halves(width, height, left, right, mode="RGB"):
    img = Image.new(mode, (width, height), left)
    img.paste(right, (width // 2, 0, width, height))
    return img


def _gradient(width, height):
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    return Image.fromarray(arr.astype(np.uint8))


def _png_bytes(width, height, bit_depth, colour_type, raw_rows):
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw_rows))
            + chunk(b"IEND", b""))


def _jpeg_with_orientation(path, img, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=95, exif=exif)
    return path


# ---------------------------------------------------------------- orientation


def test_exif_rotate_90_photo_comes_out_upright(tmp_path):
    """A 40x20 photo tagged 'rotate 90' (orientation 6) is returned 20 wide and 40 tall, with
    what was stored on the left now on top, as every photo viewer shows it."""
    path = _jpeg_with_orientation(tmp_path / "rot.jpg", _halves(40, 20, RED, BLUE), 6)
    arr = decode(path)
    _assert_rgb(arr, (40, 20, 3))
    assert _close(arr[5, 10], RED, 40)
    assert _close(arr[34, 10], BLUE, 40)


def test_exif_rotation_is_applied_on_the_fast_jpeg_draft_path_too(tmp_path):
    """Reduced-scale JPEG decoding does not lose the orientation or the exact output size."""
    path = _jpeg_with_orientation(tmp_path / "rot.jpg", _halves(800, 400, RED, BLUE), 6)
    arr = decode(path, shorter_side=100)
    _assert_rgb(arr, (200, 100, 3))
    assert _close(arr[20, 50], RED, 40)
    assert _close(arr[180, 50], BLUE, 40)


def test_the_bytes_of_a_file_decode_exactly_as_the_file(tmp_path):
    """An upload (the file's bytes in memory) takes the same path as the file on disk: EXIF
    orientation, JPEG draft decoding, resizing; its failures are named by its size."""
    path = _jpeg_with_orientation(tmp_path / "rot.jpg", _halves(800, 400, RED, BLUE), 6)
    data = path.read_bytes()
    for side in (None, 100, (64, 48)):
        assert np.array_equal(decode(data, shorter_side=side), decode(path, shorter_side=side))
    with pytest.raises(UnreadableImage) as err:
        decode(data[: len(data) // 2], shorter_side=100)
    assert err.value.reason == "truncated file" and err.value.source == f"<{len(data) // 2} bytes>"
    with pytest.raises(UnreadableImage, match="not an image"):
        decode(b"plain text")


# ---------------------------------------------------------------- modes


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP"])
def test_palette_image_gives_its_palette_colours(tmp_path, fmt):
    img = _halves(8, 4, RED, BLUE).convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    path = tmp_path / f"p.{fmt.lower()}"
    img.save(path, format=fmt)
    with Image.open(path) as check:
        assert check.mode == "P"
    arr = decode(path)
    _assert_rgb(arr, (4, 8, 3))
    assert _close(arr[0, 0], RED) and _close(arr[0, 7], BLUE)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparent_index_becomes_white_not_black(tmp_path, fmt):
    img = Image.new("P", (4, 2), 0)
    img.putpalette([*RED, *BLUE, 0, 0, 0])
    img.paste(1, (2, 0, 4, 2))
    path = tmp_path / f"pt.{fmt.lower()}"
    img.save(path, format=fmt, transparency=1)
    arr = decode(path)
    _assert_rgb(arr, (2, 4, 3))
    assert _close(arr[0, 0], RED) and _close(arr[0, 3], WHITE)


def test_greyscale_image_gives_three_equal_channels(tmp_path):
    path = tmp_path / "l.png"
    Image.fromarray(np.array([[0, 77, 255]], np.uint8)).save(path)
    arr = decode(path)
    _assert_rgb(arr, (1, 3, 3))
    assert arr[0].tolist() == [[0, 0, 0], [77, 77, 77], [255, 255, 255]]


def test_grey_with_alpha_is_composited_onto_white(tmp_path):
    path = tmp_path / "la.png"
    Image.fromarray(np.array([[[0, 255], [0, 0], [0, 128]]], np.uint8)).save(path)
    with Image.open(path) as check:
        assert check.mode == "LA"
    arr = decode(path)
    _assert_rgb(arr, (1, 3, 3))
    assert _close(arr[0, 0], (0, 0, 0)) and _close(arr[0, 1], WHITE)
    assert _close(arr[0, 2], (127, 127, 127), 1)  # half-transparent black over white


def test_rgba_transparent_pixel_becomes_white_and_opaque_pixel_keeps_its_colour(tmp_path):
    path = tmp_path / "rgba.png"
    pixels = np.array([[[255, 0, 0, 255], [0, 0, 0, 0], [0, 0, 255, 128]]], np.uint8)
    Image.fromarray(pixels).save(path)
    arr = decode(path)
    _assert_rgb(arr, (1, 3, 3))
    assert _close(arr[0, 0], RED) and _close(arr[0, 1], WHITE)
    assert _close(arr[0, 2], (127, 127, 255), 1)  # half-transparent blue over white


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_file_gives_rgb_colours(tmp_path, fmt):
    path = tmp_path / f"cmyk.{fmt.lower()}"
    _halves(16, 16, (0, 255, 255, 0), (255, 255, 0, 0), mode="CMYK").save(path, format=fmt)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    arr = decode(path)
    _assert_rgb(arr, (16, 16, 3))
    assert _close(arr[8, 2], RED, 10) and _close(arr[8, 13], BLUE, 10)


def test_one_bit_image_gives_black_and_white(tmp_path):
    path = tmp_path / "bw.png"
    _halves(8, 2, 0, 1, mode="1").save(path)
    arr = decode(path)
    _assert_rgb(arr, (2, 8, 3))
    assert _close(arr[0, 0], (0, 0, 0)) and _close(arr[0, 7], WHITE)


def test_16bit_greyscale_png_is_scaled_to_8bit_not_clipped(tmp_path):
    """65535 is white (255) and 32896 is mid grey (128); Pillow's own convert('L') would
    clip both to 255."""
    path = tmp_path / "g16.png"
    Image.fromarray(np.array([[0, 257, 32896, 65535]], np.uint16)).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    arr = decode(path)
    _assert_rgb(arr, (1, 4, 3))
    assert arr[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (arr[..., 0] == arr[..., 2]).all()


def test_16bit_rgb_and_rgba_png_give_8bit_colours(tmp_path):
    rgb = struct.pack(">6H", 65535, 0, 0, 0, 32896, 65535)
    rgba = struct.pack(">8H", 65535, 0, 0, 65535, 0, 0, 0, 0)
    (tmp_path / "rgb16.png").write_bytes(_png_bytes(2, 1, 16, 2, b"\x00" + rgb))
    (tmp_path / "rgba16.png").write_bytes(_png_bytes(2, 1, 16, 6, b"\x00" + rgba))
    arr = decode(tmp_path / "rgb16.png")
    _assert_rgb(arr, (1, 2, 3))
    assert _close(arr[0, 0], RED) and _close(arr[0, 1], (0, 128, 255), 1)
    arr = decode(tmp_path / "rgba16.png")
    assert _close(arr[0, 0], RED) and _close(arr[0, 1], WHITE)


def test_16bit_greyscale_tiff_is_scaled_like_png(tmp_path):
    path = tmp_path / "g16.tif"
    Image.fromarray(np.array([[0, 32896, 65535]], np.uint16)).save(path)
    assert decode(path)[0, :, 1].tolist() == [0, 128, 255]


def test_float_tiff_is_rounded_and_clipped_to_0_255(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.array([[-5.0, 0.0, 127.6, 300.0]], np.float32)).save(path)
    with Image.open(path) as check:
        assert check.mode == "F"
    arr = decode(path)
    _assert_rgb(arr, (1, 4, 3))
    assert arr[0, :, 0].tolist() == [0, 0, 128, 255]


@pytest.mark.parametrize("mode", ["YCbCr", "HSV", "LAB", "RGBX", "CMYK", "PA", "RGBa"])
def test_other_colour_spaces_come_back_as_rgb(mode):
    if mode == "PA":
        img = Image.new("PA", (3, 2), (0, 255))
        img.putpalette([*RED])
    else:
        img = Image.new("RGBA", (3, 2), (*RED, 255)).convert(mode)
    assert img.mode == mode
    arr = decode(img)
    _assert_rgb(arr, (2, 3, 3))
    assert _close(arr[1, 2], RED, 6)


def test_lab_tiff_file_comes_back_as_rgb(tmp_path):
    path = tmp_path / "lab.tif"
    Image.new("RGB", (4, 4), (40, 120, 200)).convert("LAB").save(path)
    with Image.open(path) as check:
        assert check.mode == "LAB"
        expected = np.array(check.convert("RGB"))
    assert (decode(path) == expected).all()
    assert _close(expected[2, 2], (40, 120, 200), 12)


# ---------------------------------------------------------------- in-memory inputs


def test_numpy_greyscale_uint8_2d_and_single_channel():
    grey = np.array([[0, 100], [200, 255]], np.uint8)
    for arr in (grey, grey[:, :, None]):
        out = decode(arr)
        _assert_rgb(out, (2, 2, 3))
        assert out[..., 0].tolist() == grey.tolist() and (out[..., 1] == out[..., 2]).all()


def test_numpy_rgba_is_composited_onto_white():
    arr = np.array([[[0, 255, 0, 255], [0, 255, 0, 0]]], np.uint8)
    out = decode(arr)
    _assert_rgb(out, (1, 2, 3))
    assert _close(out[0, 0], (0, 255, 0)) and _close(out[0, 1], WHITE)


def test_numpy_float_in_0_1_is_scaled_by_255():
    out = decode(np.array([[[0.0, 0.5, 1.0]]], np.float32))
    assert out[0, 0].tolist() == [0, 128, 255]
    assert decode(np.array([[-0.5, 2.0, np.nan]]))[0, :, 0].tolist() == [0, 255, 0]


def test_numpy_uint16_is_scaled_by_1_over_257():
    out = decode(np.array([[0, 257, 32896, 65535]], np.uint16))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_numpy_other_integer_types_are_clipped_to_0_255():
    out = decode(np.array([[-3, 17, 300]], np.int64))
    assert out[0, :, 0].tolist() == [0, 17, 255]


def test_numpy_rgb_output_is_a_writable_copy_not_the_input():
    arr = np.zeros((4, 5, 3), np.uint8)
    out = decode(arr)
    out[0, 0] = 9
    assert arr[0, 0, 0] == 0 and out.flags.writeable


@pytest.mark.parametrize("shape", [(2, 3, 2), (2, 3, 5), (4,), (0, 3, 3)])
def test_numpy_of_unsupported_shape_is_refused_by_name(shape):
    with pytest.raises(UnreadableImage, match="shape"):
        decode(np.zeros(shape, np.uint8))


def test_pil_image_input_is_decoded_and_left_unchanged():
    img = Image.new("RGBA", (6, 4), (0, 0, 255, 0))
    out = decode(img, shorter_side=2)
    _assert_rgb(out, (2, 3, 3))
    assert _close(out[1, 1], WHITE)
    assert img.mode == "RGBA" and img.size == (6, 4)


def test_pil_image_opened_from_a_truncated_file_is_refused_with_its_filename(tmp_path):
    path = tmp_path / "cut.jpg"
    _gradient(200, 200).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with Image.open(path) as img:
        with pytest.raises(UnreadableImage) as info:
            decode(img)
    assert info.value.source == str(path) and info.value.reason == "truncated file"


def test_other_source_types_are_a_type_error():
    with pytest.raises(TypeError):
        decode(42)


# ---------------------------------------------------------------- resizing


@pytest.mark.parametrize("size, expected_hw", [((300, 200), (100, 150)), ((200, 300), (150, 100)),
                                               ((333, 500), (150, 100)), ((100, 100), (100, 100))])
def test_shorter_side_is_exact_and_aspect_is_kept(tmp_path, size, expected_hw):
    path = tmp_path / "img.png"
    _gradient(*size).save(path)
    out = decode(path, shorter_side=100)
    _assert_rgb(out, (*expected_hw, 3))
    h, w = out.shape[:2]
    assert abs(w * size[1] / size[0] - h) <= 1


def test_tiny_image_is_upscaled_to_the_requested_side():
    out = decode(np.full((8, 8, 3), 77, np.uint8), shorter_side=64)
    _assert_rgb(out, (64, 64, 3))
    assert (out == 77).all()


def test_very_elongated_image_keeps_at_least_one_pixel_on_the_long_side():
    _assert_rgb(decode(np.zeros((1, 3000), np.uint8), shorter_side=1), (1, 3000, 3))
    _assert_rgb(decode(np.zeros((1000, 10), np.uint8), shorter_side=3), (300, 3, 3))


@pytest.mark.parametrize("name", ["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"])
def test_every_interpolation_name_is_accepted(name):
    out = decode(np.asarray(_gradient(40, 30)), shorter_side=20, interpolation=name)
    _assert_rgb(out, (20, 26, 3))  # 40 * 20 / 30 = 26.7, truncated as torchvision does


def test_unknown_interpolation_is_a_value_error_listing_the_choices():
    with pytest.raises(ValueError) as info:
        decode(np.zeros((4, 4), np.uint8), shorter_side=2, interpolation="cubic")
    for name in ["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"]:
        assert name in str(info.value)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_shorter_side_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError):
        decode(np.zeros((4, 4), np.uint8), shorter_side=bad)


@pytest.mark.parametrize("size", [(800, 600), (801, 603), (600, 1000)])
def test_jpeg_draft_decoding_gives_almost_the_same_pixels_as_a_full_decode(tmp_path, size):
    """The reduced-scale JPEG decode is only a speed-up: the result matches resizing the fully
    decoded image (a PIL image input is never drafted) within resampling noise."""
    path = tmp_path / "grad.jpg"
    _gradient(*size).save(path, quality=95)
    fast = decode(path, shorter_side=150)
    with Image.open(path) as img:
        img.load()
        reference = decode(img, shorter_side=150)
    assert fast.shape == reference.shape and min(fast.shape[:2]) == 150
    assert np.abs(fast.astype(int) - reference.astype(int)).mean() < 3


@pytest.mark.parametrize("size, edge", [((1001, 601), 900), ((605, 803), 500)])
@pytest.mark.parametrize("orientation", [1, 6])
def test_jpeg_draft_decoding_puts_edges_where_a_full_decode_does(tmp_path, size, edge, orientation):
    """Sizes not divisible by the draft scale leave a partial pixel at the edge; it must not
    stretch the picture (a sharp black/white edge lands within 0.25 px of the full decode)."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, edge:] = 255
    path = _jpeg_with_orientation(tmp_path / "edge.jpg", Image.fromarray(arr), orientation)
    fast = decode(path, shorter_side=150)
    with Image.open(path) as img:
        img.load()
        reference = decode(img, shorter_side=150)
    assert fast.shape == reference.shape

    def white_width(pixels):
        pixels = pixels.swapaxes(0, 1) if orientation == 6 else pixels
        return pixels[..., 1].astype(float).sum(axis=1).mean() / 255

    assert abs(white_width(fast) - white_width(reference)) < 0.25


def test_jpeg_is_decoded_at_reduced_scale_only_when_it_still_covers_the_target(
        tmp_path, monkeypatch):
    """The speed-up is really taken for a big JPEG and a small target, and skipped when the
    reduced image would be smaller than the target (or no resize is asked for)."""
    from PIL import JpegImagePlugin

    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        calls.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    path = tmp_path / "grad.jpg"
    _gradient(800, 600).save(path)
    decode(path, shorter_side=150)
    assert calls == [((150, 150), (200, 150))]
    calls.clear()
    for side in (None, 301, 600, 1000):
        decode(path, shorter_side=side)
    assert calls == []


def test_jpeg_without_resize_is_decoded_at_full_size(tmp_path):
    path = tmp_path / "grad.jpg"
    _gradient(160, 120).save(path)
    _assert_rgb(decode(path), (120, 160, 3))
    _assert_rgb(decode(str(path), shorter_side=1000), (1000, 1333, 3))


# ---------------------------------------------------------------- failures


def _unreadable(source, **kwargs):
    with pytest.raises(UnreadableImage) as info:
        decode(source, **kwargs)
    assert str(info.value).startswith(str(source) + ": ")
    assert info.value.source == str(source)
    return info.value.reason


def test_missing_file_is_reported_as_file_not_found(tmp_path):
    assert _unreadable(tmp_path / "nope.jpg") == "file not found"


def test_directory_is_reported_as_such(tmp_path):
    assert _unreadable(tmp_path) == "is a directory"


def test_text_file_named_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n")
    assert _unreadable(path) == "not an image"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert _unreadable(empty) == "not an image"


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("shorter_side", [None, 50])
def test_truncated_jpeg_is_refused_not_returned_as_grey_pixels(tmp_path, progressive, shorter_side):
    path = tmp_path / "cut.jpg"
    _gradient(400, 300).save(path, quality=90, progressive=progressive)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert _unreadable(path, shorter_side=shorter_side) == "truncated file"


def test_truncated_png_is_refused(tmp_path):
    path = tmp_path / "cut.png"
    _gradient(200, 100).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert _unreadable(path) == "truncated file"


def test_corrupt_png_data_is_refused_as_corrupt(tmp_path):
    path = tmp_path / "bad.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(path)
    data = bytearray(path.read_bytes())
    start = data.find(b"IDAT") + 6
    data[start:start + 14] = bytes(b ^ 0xFF for b in data[start:start + 14])
    path.write_bytes(bytes(data))
    assert _unreadable(path).startswith("corrupt file")


def test_image_above_max_pixels_is_refused_naming_both_numbers(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(path)
    assert _unreadable(path, max_pixels=100) == "decompression bomb: 400 pixels > limit 100"
    _assert_rgb(decode(path, max_pixels=400), (20, 20, 3))


def test_header_claiming_a_huge_size_is_refused_before_decoding(tmp_path):
    """The IDAT is garbage, so the reason being 'decompression bomb' (not 'corrupt') shows the
    refusal happened on the header alone."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bytes(20_000, 20_000, 8, 2, b"garbage"))
    assert _unreadable(path) == f"decompression bomb: 400000000 pixels > limit {DEFAULT_MAX_PIXELS}"


@pytest.mark.parametrize("side", [10_000, 100_000])
def test_pillows_own_bomb_warning_and_error_become_unreadable_image(tmp_path, side):
    """Even when the caller allows more than Pillow does, Pillow's own DecompressionBombWarning
    (1x-2x its limit) and DecompressionBombError (above 2x) come out as UnreadableImage.

    Pillow's own warning may still be shown: silencing it would mean changing warning filters,
    which is not thread-safe, and decoding runs in threads."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bytes(side, side, 8, 2, b"garbage"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reason = _unreadable(path, max_pixels=10**12)
    assert reason == f"decompression bomb: {side * side} pixels > limit {Image.MAX_IMAGE_PIXELS}"


def test_pillow_global_settings_are_left_alone(tmp_path):
    max_pixels, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    path = tmp_path / "cut.jpg"
    _gradient(200, 200).save(path)
    path.write_bytes(path.read_bytes()[:1000])
    _unreadable(path)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bytes(20_000, 20_000, 8, 2, b"x"))
    _unreadable(bomb)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == max_pixels
    assert warnings.filters == filters


@pytest.mark.slow
def test_failures_leave_no_file_open(tmp_path):
    cut = tmp_path / "cut.png"
    _gradient(100, 100).save(cut)
    cut.write_bytes(cut.read_bytes()[:300])
    text = tmp_path / "t.jpg"
    text.write_text("x")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bytes(100_000, 100_000, 8, 2, b"x"))
    good = tmp_path / "good.jpg"
    _gradient(300, 200).save(good)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path, kwargs in [(cut, {}), (text, {}), (bomb, {"max_pixels": 10**12}), (bomb, {})]:
            with pytest.raises(UnreadableImage):
                decode(path, **kwargs)
        decode(good, shorter_side=50)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_unreadable_image_survives_pickling_for_worker_processes():
    err = pickle.loads(pickle.dumps(UnreadableImage(Path("a/b.jpg"), "truncated file")))
    assert (err.source, err.reason) == ("a/b.jpg", "truncated file")
    assert str(err) == "a/b.jpg: truncated file"
