"""Decoded images stay in memory: a second pass over the data never decodes a file again."""

import numpy as np
from PIL import Image

from transferlab import ImageClassifier, load_source
from transferlab.data import cache as cache_module
from transferlab.data.cache import DecodedImages, iter_decoded
from transferlab.data.sources import ImageRef


def _images(tmp_path, n=10, size=40):
    refs = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((size, size + i, 3), (i * 20) % 256, np.uint8)).save(path)
        refs.append(ImageRef.from_file(path))
    return refs


def test_a_second_pass_decodes_nothing(tmp_path):
    cache = DecodedImages()
    refs = _images(tmp_path)
    first = [p for _, pixels, _ in iter_decoded(refs, 32, "bicubic", 4, cache) for p in pixels]
    assert cache.decodes == 10
    second = [p for _, pixels, _ in iter_decoded(refs, 32, "bicubic", 4, cache) for p in pixels]
    assert cache.decodes == 10
    assert all(a is b for a, b in zip(first, second))
    # another size is another decode
    list(iter_decoded(refs[:3], 16, "bicubic", 4, cache))
    assert cache.decodes == 13


def test_batches_come_back_in_order_with_failures_named(tmp_path):
    refs = _images(tmp_path, n=7)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    refs.insert(3, ImageRef.from_file(broken))
    cache = DecodedImages()
    batches = list(iter_decoded(refs, 32, "bicubic", 3, cache))
    positions = [p for pos, _, _ in batches for p in pos]
    assert positions == [0, 1, 2, 4, 5, 6, 7]
    failures = [f for _, _, fs in batches for f in fs]
    assert [f.source for f in failures] == [str(broken)]
    # a broken file is tried once per process, not once per pass
    list(iter_decoded(refs, 32, "bicubic", 3, cache))
    assert cache.decodes == 7


def test_the_cache_keeps_within_its_memory_budget(tmp_path):
    refs = _images(tmp_path, n=20, size=100)
    cache = DecodedImages(budget_mb=0)
    cache.budget = 5 * 100 * 100 * 3 + 2000  # room for about five images
    list(iter_decoded(refs, 100, "bicubic", 4, cache))
    assert cache._bytes <= cache.budget and len(cache._arrays) <= 5
    list(iter_decoded(refs[-3:], 100, "bicubic", 4, cache))
    assert cache.decodes == 20  # the most recent images were still there


def test_fitting_twice_in_one_process_decodes_each_image_once(tmp_path, monkeypatch):
    """Without the on-disk feature cache the backbone runs again, but no file is decoded again."""
    monkeypatch.setattr(cache_module, "default_cache", DecodedImages())
    for cls, value in (("dark", 40), ("light", 210)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((30, 30, 3), value + i, np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    images = load_source(tmp_path / "data").images
    options = dict(strategy="features", backbone="mobilenetv2_050", weights="none", image_size=32, feature_cache=False,
                   progress=False)
    ImageClassifier(**options).fit(images)
    assert cache_module.default_cache.decodes == 12
    ImageClassifier(**options).fit(images)
    assert cache_module.default_cache.decodes == 12
