"""A damaged feature cache is never trusted: whatever happened to its file (truncated, pages of
junk, vectors overwritten with NaN or cut short, removed while a run uses it), what is damaged
is said in one line and recomputed, and the run ends with the model a clean cache gives."""

import logging
import os
import sqlite3

import numpy as np
import pytest
from safetensors.numpy import load_file

from transferlab.cli import main
from transferlab.features import store as feature_store
from transferlab.features.store import FeatureStore

FAST = ["--strategy", "features", "--weights", "none", "--image-size", "32", "--backbone", "mobilenetv2_050"]


def _vectors(n=300, dim=640):
    rng = np.random.default_rng(0)
    return {f"file:/photos/{i}.jpg:100:{i}": rng.standard_normal(dim).astype(np.float32) for i in range(n)}


def _truncate(path):
    os.truncate(path, path.stat().st_size // 2)


def _junk_pages(path):
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    for page in rng.choice(np.arange(1, len(data) // 4096), 4, replace=False):
        data[page * 4096:(page + 1) * 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _update(path, sql, *args):
    with sqlite3.connect(path) as db:
        db.execute(sql, args)
    db.close()


def _nan_rows(path):
    nan = np.full(640, np.nan, np.float32).tobytes()
    _update(path, "UPDATE features SET vec = ? WHERE key IN (SELECT key FROM features LIMIT 40)", nan)


def _short_vector(path):
    _update(path, "UPDATE features SET vec = substr(vec, 1, 3) WHERE key = (SELECT key FROM features LIMIT 1)")


def _header(path):
    data = bytearray(path.read_bytes())
    data[:100] = b"\0" * 100
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, lost", [(_truncate, None), (_junk_pages, None), (_header, "all"),
                                          (_nan_rows, 40), (_short_vector, 1)])
def test_damage_is_reported_once_and_only_sound_vectors_come_back(tmp_path, caplog, damage, lost):
    vectors = _vectors()
    path = tmp_path / "key.sqlite"
    FeatureStore(path).put_many(vectors)
    damage(path)
    feature_store._CHECKED.discard(path)  # a new process: the file is checked when opened
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        store = FeatureStore(path)
        got = store.get_many(list(vectors))
    assert all(np.array_equal(got[k], vectors[k]) for k in got), "a damaged vector was returned"
    if lost == "all":
        assert not got
    elif lost is not None:
        assert len(got) == len(vectors) - lost
    else:
        assert len(got) < len(vectors)  # the damage reached vectors (whole file or rows)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and str(path) in lines[0] and "\n" not in lines[0], lines
    assert "recomput" in lines[0]
    # What is missing is computed again and kept: the next read is whole and says nothing.
    store.put_many({k: v for k, v in vectors.items() if k not in got})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        again = FeatureStore(path).get_many(list(vectors))
    assert len(again) == len(vectors) and not caplog.records


def test_a_cache_removed_while_in_use_is_made_again(tmp_path, caplog):
    vectors = _vectors(20)
    path = tmp_path / "key.sqlite"
    store = FeatureStore(path)
    store.put_many(dict(list(vectors.items())[:10]))
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        store.put_many(dict(list(vectors.items())[10:]))
    assert len(store.get_many(list(vectors))) == 10
    assert "removed while in use" in caplog.records[0].getMessage()


def test_a_cache_of_the_earlier_format_is_read_and_checked(tmp_path):
    vectors = _vectors(20)
    path = tmp_path / "key.sqlite"
    with sqlite3.connect(path) as db:  # how 0.1.0 wrote it: no checksum column
        db.execute("CREATE TABLE features (key TEXT PRIMARY KEY, vec BLOB)")
        db.executemany("INSERT INTO features VALUES (?, ?)", [(k, v.tobytes()) for k, v in vectors.items()])
        first = next(iter(vectors))
        db.execute("UPDATE features SET vec = ? WHERE key = ?", (np.full(640, np.inf, np.float32).tobytes(), first))
    db.close()
    got = FeatureStore(path).get_many(list(vectors))
    assert set(got) == set(vectors) - {first}
    assert all(np.array_equal(got[k], vectors[k]) for k in got)


@pytest.mark.slow
def test_a_run_on_a_damaged_cache_ends_with_the_clean_model(tmp_path, colour_folder, caplog):
    data = colour_folder(tmp_path / "colours", per_class=10)
    cache = tmp_path / "cache"
    # --keep-known 0: the unknown-image detector's Lite0 features would be a second store
    options = ["-q", "train", str(data), "--out", str(tmp_path / "runs"), "--cache-dir", str(cache), *FAST,
               "--keep-known", "0"]
    assert main([*options, "--name", "clean"]) == 0
    clean = load_file(str(tmp_path / "runs" / "clean" / "model.safetensors"))
    files = list((cache / "features").glob("*.sqlite"))
    assert len(files) == 1
    # A single damaged vector is recomputed alone, in a batch of one image.
    for k, damage in enumerate((_nan_rows, _truncate, _short_vector)):
        damage(files[0])
        feature_store._CHECKED.discard(files[0])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="transferlab"):
            assert main([*options, "--name", f"damaged{k}"]) == 0
        assert [str(files[0]) in r.getMessage() for r in caplog.records] == [True]
        got = load_file(str(tmp_path / "runs" / f"damaged{k}" / "model.safetensors"))
        assert got.keys() == clean.keys() and all(np.array_equal(got[n], clean[n]) for n in got)
