"""Training augmentation: right shape and type always, reproducible from torch's seed, and each preset does what it says."""

import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from transferlab.data.augment import AUGMENT_PRESETS, AugmentOptions, build_augment, build_batch_mix
from transferlab.errors import TransferlabError

RANDOM_PRESETS = ("standard", "classic", "randaugment")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Per-image ops are tiny: on a busy 2-core machine, 2 intra-op threads make grid_sample ~30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _textured(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _coordinates(size):
    """R = column, G = row, B = 0: every pixel says where it came from."""
    ys, xs = np.mgrid[0:size, 0:size]
    return np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)


def _centre_crop(pixels, s):
    h, w = pixels.shape[:2]
    top, left = int(round((h - s) / 2)), int(round((w - s) / 2))
    return pixels[top:top + s, left:left + s]


def _chw(pixels):
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)


# --- shape and type ---------------------------------------------------------------------------

@pytest.mark.parametrize("preset", AUGMENT_PRESETS)
@pytest.mark.parametrize("shape,size", [
    ((36, 48, 3), 32),   # landscape, shorter side already at resize size
    ((48, 36, 3), 32),   # portrait
    ((32, 32, 3), 32),   # exactly the input size (CIFAR-like: resize size == input size)
    ((20, 27, 3), 32),   # smaller than the input size: resized up first
    ((5, 3, 3), 8),      # tiny and too small
])
def test_every_preset_returns_a_contiguous_uint8_square_of_the_input_size(preset, shape, size):
    pixels = _textured(*shape[:2])
    before = pixels.copy()
    torch.manual_seed(0)
    out = build_augment(AugmentOptions(preset=preset), size)(pixels)
    assert out.shape == (3, size, size) and out.dtype == torch.uint8 and out.is_contiguous()
    assert np.array_equal(pixels, before)  # the cached array is never written to
    out[:] = 0
    assert np.array_equal(pixels, before)  # ...and the result does not share its memory


def test_read_only_cached_arrays_are_accepted_without_warnings(recwarn):
    pixels = _textured(40, 50)
    pixels.setflags(write=False)
    for preset in AUGMENT_PRESETS:
        assert build_augment(AugmentOptions(preset=preset), 32)(pixels).shape == (3, 32, 32)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_none_is_exactly_the_eval_centre_crop():
    augment = build_augment(AugmentOptions(preset="none"), 32)
    for h, w in [(40, 57), (57, 40), (32, 32), (33, 34)]:
        pixels = _textured(h, w)
        expected = torch.from_numpy(np.ascontiguousarray(_centre_crop(pixels, 32).transpose(2, 0, 1)))
        assert torch.equal(augment(pixels), expected)


def test_too_small_images_are_resized_up_before_the_centre_crop():
    pixels = _textured(16, 24)
    out = build_augment(AugmentOptions(preset="none"), 32, "bilinear")(pixels)
    expected = F.center_crop(F.resize(_chw(pixels), [32], antialias=True), [32])
    assert torch.equal(out, expected)


# --- reproducibility --------------------------------------------------------------------------

@pytest.mark.parametrize("preset", RANDOM_PRESETS)
def test_the_same_torch_seed_gives_the_same_augmentation_and_another_seed_another(preset):
    pixels = _textured(40, 52)
    augment = build_augment(AugmentOptions(preset=preset), 32)

    def draw(seed):
        torch.manual_seed(seed)
        return torch.stack([augment(pixels) for _ in range(4)])

    first = draw(0)
    np.random.seed(123), random.seed(123)  # other RNGs play no part
    np.random.rand(), random.random()
    assert torch.equal(draw(0), first)
    assert not torch.equal(draw(1), first)
    assert not torch.equal(first[0], first[1])  # successive images get different draws


# --- standard ---------------------------------------------------------------------------------

def test_standard_with_full_scale_on_a_square_image_is_a_plain_resize_flipped_about_half_the_time():
    pixels = _textured(48, 48)  # asymmetric, so a flip is visible
    plain = F.resize(_chw(pixels), [32, 32], antialias=True)
    flipped = plain.flip(-1)
    augment = build_augment(AugmentOptions(preset="standard", scale_min=1.0), 32)
    torch.manual_seed(0)
    flips = 0
    for _ in range(200):
        out = augment(pixels)
        assert torch.equal(out, plain) or torch.equal(out, flipped)
        flips += torch.equal(out, flipped)
    assert 70 <= flips <= 130  # Binomial(200, 0.5): mean 100, sd about 7


def test_standard_without_hflip_never_flips():
    pixels = _textured(48, 48)
    plain = F.resize(_chw(pixels), [32, 32], antialias=True)
    augment = build_augment(AugmentOptions(preset="standard", scale_min=1.0, hflip=False), 32)
    torch.manual_seed(0)
    assert all(torch.equal(augment(pixels), plain) for _ in range(30))


def test_standard_crops_vary_in_area_between_scale_min_and_the_whole_image():
    size = 200
    pixels = _coordinates(size)
    augment = build_augment(AugmentOptions(preset="standard", scale_min=0.25), 64, "nearest")
    torch.manual_seed(0)
    areas, ratios = [], []
    for _ in range(150):
        out = augment(pixels).int()
        w = out[0].max() - out[0].min() + 1  # columns seen (a flip reverses them, not their span)
        h = out[1].max() - out[1].min() + 1
        areas.append(float(w * h) / size ** 2)
        ratios.append(float(w) / float(h))
    # nearest resize to 64 px can miss a few edge rows/columns of a 200 px crop
    assert min(areas) >= 0.25 * 0.9 and max(areas) <= 1.0
    assert min(areas) < 0.4 and max(areas) > 0.85  # the whole range is used
    assert min(ratios) >= 0.75 * 0.9 and max(ratios) <= 4 / 3 * 1.1


# --- classic ----------------------------------------------------------------------------------

def _bright_pixel(size, row, col):
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[row, col] = 255
    return pixels


def _brightest(out):
    flat = int(out[0].argmax())
    return divmod(flat, out.shape[-1])


def test_classic_shifts_stay_within_the_width_and_height_fractions():
    size = 65
    centre = size // 2
    options = AugmentOptions(preset="classic", rotation=0.0, zoom=0.0, width_shift=0.1,
                             height_shift=0.25, hflip=False)
    augment = build_augment(options, size)
    torch.manual_seed(0)
    dxs, dys = [], []
    for _ in range(150):
        out = augment(_bright_pixel(size, centre, centre))
        assert int(out[0].max()) == 255  # integer shifts move the pixel without blurring it
        row, col = _brightest(out)
        dxs.append(col - centre)
        dys.append(row - centre)
    assert max(abs(d) for d in dxs) <= round(0.1 * size)
    assert max(abs(d) for d in dys) <= round(0.25 * size)
    assert min(dxs) < -3 and max(dxs) > 3  # both directions, most of the range
    assert min(dys) < -10 and max(dys) > 10


def test_classic_centre_crops_to_the_input_size_before_the_affine():
    pixels = _textured(40, 50)
    options = AugmentOptions(preset="classic", rotation=0.0, zoom=0.0, width_shift=0.0,
                             height_shift=0.0, hflip=False)
    out = build_augment(options, 32)(pixels)
    assert torch.equal(out, _chw(_centre_crop(pixels, 32)))


def test_classic_rotation_turns_a_known_pattern_about_its_centre_within_the_range():
    # Red dot due right of the centre, green dot straight above it: a rotation moves both along
    # the circle and keeps green a quarter turn anticlockwise of red (a flip or shear would not).
    size, radius = 33, 12
    centre = size // 2
    pattern = np.zeros((size, size, 3), np.uint8)
    pattern[centre, centre + radius, 0] = 255
    pattern[centre - radius, centre, 1] = 255
    options = AugmentOptions(preset="classic", rotation=90.0, zoom=0.0, width_shift=0.0,
                             height_shift=0.0, hflip=False)
    augment = build_augment(options, size)
    torch.manual_seed(0)
    angles = []
    for _ in range(100):
        out = augment(pattern)
        (ry, rx), (gy, gx) = [divmod(int(out[c].argmax()), size) for c in (0, 1)]
        red = np.degrees(np.arctan2(centre - ry, rx - centre))  # y axis up, anticlockwise positive
        green = np.degrees(np.arctan2(centre - gy, gx - centre))
        assert abs(np.hypot(rx - centre, ry - centre) - radius) <= 1.5  # turned about the centre
        assert abs(np.hypot(gx - centre, gy - centre) - radius) <= 1.5
        assert abs((green - red - 90 + 180) % 360 - 180) <= 8  # still a quarter turn apart
        assert -95 <= red <= 95  # angle drawn from [-rotation, rotation]
        angles.append(red)
    assert min(angles) < -70 and max(angles) > 70  # close to the ends of the range, both ways


# --- randaugment ------------------------------------------------------------------------------

def test_randaugment_magnitude_sets_how_strongly_images_change():
    pixels = _textured(48, 48)
    plain = F.resize(_chw(pixels), [32, 32], antialias=True).int()
    weak = build_augment(AugmentOptions(preset="randaugment", scale_min=1.0, magnitude=0,
                                        hflip=False), 32)
    torch.manual_seed(0)
    strong = build_augment(AugmentOptions(preset="randaugment", scale_min=1.0, magnitude=30,
                                          hflip=False), 32)
    weak_changes = [float((weak(pixels).int() - plain).abs().float().mean()) for _ in range(30)]
    strong_changes = [float((strong(pixels).int() - plain).abs().float().mean()) for _ in range(30)]
    assert np.mean(strong_changes) > np.mean(weak_changes)


# --- MixUp / CutMix ---------------------------------------------------------------------------

def _batch(n=6, size=16, classes=10):
    torch.manual_seed(1)
    x = torch.rand(n, 3, size, size) * 255  # no two pixels alike, so a pixel names its source
    y = torch.randperm(classes)[:n]         # distinct labels, so a target names its source image
    return x, y


def _sources(targets_row, y):
    """(batch index, weight) of every image that contributed, read from the soft targets."""
    return [(int((y == c).nonzero()), float(targets_row[c])) for c in targets_row.nonzero().flatten()]


def test_batch_mix_is_off_when_both_alphas_are_zero():
    assert build_batch_mix(AugmentOptions(), 10) is None
    assert build_batch_mix(AugmentOptions(mixup=0.0, cutmix=0.0), 10) is None


def test_mixup_gives_convex_combinations_whose_weights_are_the_soft_targets():
    mix = build_batch_mix(AugmentOptions(mixup=0.4), 10)
    x, y = _batch()
    original = x.clone()
    torch.manual_seed(0)
    for _ in range(5):
        mixed, targets = mix(x, y)
        assert torch.equal(x, original)  # the input batch is left alone
        assert mixed.dtype == torch.float32 and targets.shape == (6, 10) and targets.dtype == torch.float32
        assert torch.allclose(targets.sum(1), torch.ones(6)) and (targets >= 0).all()
        for i in range(6):
            sources = _sources(targets[i], y)
            assert 1 <= len(sources) <= 2 and any(j == i for j, _ in sources)
            expected = sum(w * x[j] for j, w in sources)
            assert torch.allclose(mixed[i], expected, atol=1e-3)


def test_cutmix_pastes_a_rectangle_from_another_image_sized_by_the_soft_targets():
    mix = build_batch_mix(AugmentOptions(cutmix=1.0), 10)
    x, y = _batch()
    torch.manual_seed(0)
    pasted_any = False
    for _ in range(5):
        mixed, targets = mix(x, y)
        assert torch.allclose(targets.sum(1), torch.ones(6))
        for i in range(6):
            sources = dict(_sources(targets[i], y))
            own = (mixed[i] == x[i]).all(0)
            if len(sources) == 1:
                assert own.all()
                continue
            (j,) = [k for k in sources if k != i]
            pasted = (mixed[i] == x[j]).all(0)
            assert (own ^ pasted).all()  # every pixel is from one image or the other
            rows, cols = pasted.nonzero(as_tuple=True)
            box = pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert box.all()  # the pasted pixels form a rectangle
            assert abs(float(pasted.float().mean()) - sources[j]) < 1e-5
            pasted_any = True
    assert pasted_any


def test_with_mixup_and_cutmix_both_on_each_batch_gets_one_of_them():
    mix = build_batch_mix(AugmentOptions(mixup=1.0, cutmix=1.0), 10)
    x, y = _batch()
    torch.manual_seed(0)
    kinds = set()
    for _ in range(20):
        mixed, targets = mix(x, y)
        assert torch.allclose(targets.sum(1), torch.ones(6))
        from_sources = ((mixed == x) | (mixed == x.roll(1, 0))).all()
        kinds.add("cutmix" if from_sources else "mixup")
    assert kinds == {"mixup", "cutmix"}


def test_batch_mix_is_reproducible_from_the_torch_seed():
    mix = build_batch_mix(AugmentOptions(mixup=0.4, cutmix=1.0), 10)
    x, y = _batch()

    def draw(seed):
        torch.manual_seed(seed)
        return [mix(x, y) for _ in range(4)]

    first, again, other = draw(0), draw(0), draw(1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other))


def test_batch_mix_accepts_uint8_batches_and_returns_float():
    mix = build_batch_mix(AugmentOptions(mixup=0.2), 5)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mixed, targets = mix(x, torch.tensor([0, 1, 2, 3]))
    assert mixed.dtype == torch.float32 and targets.shape == (4, 5)


# --- bad options ------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,option", [
    ("preset", "autoaugment", "--augment"),
    ("scale_min", 0.0, "--scale-min"),
    ("scale_min", 1.5, "--scale-min"),
    ("scale_min", float("nan"), "--scale-min"),
    ("width_shift", -0.1, "--width-shift"),
    ("height_shift", 1.0, "--height-shift"),
    ("rotation", -5.0, "--rotation"),
    ("rotation", 400.0, "--rotation"),
    ("zoom", 1.0, "--zoom"),
    ("zoom", "0.1", "--zoom"),
    ("magnitude", 31, "--magnitude"),
    ("magnitude", 2.5, "--magnitude"),
    ("mixup", -1.0, "--mixup"),
    ("cutmix", float("inf"), "--cutmix"),
])
def test_bad_options_raise_a_transferlab_error_naming_the_option(field, value, option):
    options = replace(AugmentOptions(), **{field: value})
    with pytest.raises(TransferlabError, match=option):
        build_augment(options, 32)
    with pytest.raises(TransferlabError, match=option):
        build_batch_mix(options, 10)


def test_an_unknown_preset_error_lists_the_valid_ones():
    with pytest.raises(TransferlabError) as info:
        build_augment(AugmentOptions(preset="fancy"), 32)
    assert all(p in str(info.value) for p in AUGMENT_PRESETS)


def test_bad_sizes_and_interpolations_raise_transferlab_errors():
    with pytest.raises(TransferlabError, match="input size"):
        build_augment(AugmentOptions(), 0)
    with pytest.raises(TransferlabError, match="interpolation"):
        build_augment(AugmentOptions(), 32, "cubic-ish")
    with pytest.raises(TransferlabError, match="classes"):
        build_batch_mix(AugmentOptions(mixup=0.2), 0)
