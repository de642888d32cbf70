"""Promises of transferlab.data.cifar: the official CIFAR-10 / CIFAR-100 python archives (and the
folders they extract to) become labelled 32x32 RGB images with the classes in the meta file's
order; pickles that would run code are refused; every broken input is a one-line TransferlabError
naming the file."""

import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.data.cifar import is_cifar, load_cifar
from transferlab.errors import TransferlabError

CIFAR10_CLASSES = ["truck", "ship", "airplane", "horse"]  # deliberately not alphabetical
CIFAR100_FINE = ["zebra", "apple", "whale", "bicycle", "maple_tree"]
CIFAR100_COARSE = ["vehicles", "animals", "plants"]


# ---------------------------------------------------------------- helpers: the official format


class _Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote at protocol 2: every str/bytes as a byte string.

    That is how the official files store keys, label names and the array's raw pixel bytes, so
    they load as bytes with encoding="bytes"."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_byte_string(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_byte_string
    dispatch[str] = _save_byte_string


def _py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 1.x (and the originals) name the array constructor numpy.core.multiarray.
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n_reconstruct\n",
                                  b"cnumpy.core.multiarray\n_reconstruct\n")


def _pixels(seed: int) -> np.ndarray:
    """32x32x3 uint8 pixels unique to `seed`."""
    arr = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    arr[0, 0] = (seed % 256, seed // 256, 123)
    return arr


def _rows(images: list[np.ndarray]) -> np.ndarray:
    """The official data layout: per image 1024 red, then 1024 green, then 1024 blue values, each
    plane row-major."""
    return np.stack([np.concatenate([im[:, :, c].ravel() for c in range(3)]) for im in images])


def _batch(images, labels, key=b"labels", name=b"training batch 1 of 5") -> dict:
    return {b"batch_label": name, key: list(labels), b"data": _rows(images),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}


def _cifar10_files(per_batch: int = 2, n_test: int = 3, dump=_py2_pickle):
    """{file name: bytes} of a small CIFAR-10, and the expected train/test (pixels, labels)."""
    files, expected = {}, {"train": ([], []), "test": ([], [])}
    seed = 1
    for name, split, n in [*((f"data_batch_{b}", "train", per_batch) for b in range(1, 6)),
                           ("test_batch", "test", n_test)]:
        images = [_pixels(seed + i) for i in range(n)]
        labels = [(seed + i) % len(CIFAR10_CLASSES) for i in range(n)]
        seed += n
        files[name] = dump(_batch(images, labels))
        expected[split][0].extend(images)
        expected[split][1].extend(labels)
    files["batches.meta"] = dump({b"num_cases_per_batch": per_batch,
                                  b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                  b"num_vis": 3072})
    files["readme.html"] = b"<html>CIFAR-10</html>"
    return files, expected


def _cifar100_files(dump=_py2_pickle):
    images = {"train": [_pixels(500 + i) for i in range(4)], "test": [_pixels(600 + i) for i in range(2)]}
    fine = {"train": [4, 0, 2, 1], "test": [3, 0]}
    coarse = {"train": [2, 1, 1, 0], "test": [0, 1]}
    files = {}
    for split in ("train", "test"):
        batch = _batch(images[split], fine[split], key=b"fine_labels", name=split.encode())
        batch[b"coarse_labels"] = coarse[split]
        files[split] = dump(batch)
    files["meta"] = dump({b"fine_label_names": [c.encode() for c in CIFAR100_FINE],
                          b"coarse_label_names": [c.encode() for c in CIFAR100_COARSE]})
    return files, images, fine, coarse


def _tar(path: Path, top: str, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        folder = tarfile.TarInfo(top)
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _folder(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def _cifar10_archive(tmp_path: Path, **kw) -> Path:
    files, _ = _cifar10_files(**kw)
    return _tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)


def _cifar100_archive(tmp_path: Path) -> Path:
    files, *_ = _cifar100_files()
    return _tar(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", files)


def _pixels_of(source, split: str) -> list[np.ndarray]:
    return [ref.source for ref, s in zip(source.images.images, source.splits) if s == split]


def _labels_of(source, split: str) -> list[int]:
    return [int(lab) for lab, s in zip(source.images.labels, source.splits) if s == split]


# ---------------------------------------------------------------- reading CIFAR-10


def test_cifar10_archive_and_its_extracted_folder_give_the_same_images_labels_and_splits(tmp_path):
    files, expected = _cifar10_files()
    archive = _tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    folder = _folder(tmp_path / "extracted" / "cifar-10-batches-py", files)

    from_archive, from_folder = load_cifar(archive), load_cifar(folder)

    for source in (from_archive, from_folder):
        assert len(source.images) == 10 + 3
        for split in ("train", "test"):
            pixels = _pixels_of(source, split)
            assert all(p.shape == (32, 32, 3) and p.dtype == np.uint8 for p in pixels)
            np.testing.assert_array_equal(np.stack(pixels), np.stack(expected[split][0]))
            assert _labels_of(source, split) == expected[split][1]
    assert from_archive.splits == from_folder.splits == ["train"] * 10 + ["test"] * 3
    assert [r.key for r in from_archive.images.images] == [r.key for r in from_folder.images.images]
    np.testing.assert_array_equal(from_archive.images.labels, from_folder.images.labels)


def test_pixels_decode_red_green_blue_planes_into_row_column_channel_order(tmp_path):
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    red = (rows * 8).astype(np.uint8)      # brighter further down
    green = (cols * 8).astype(np.uint8)    # brighter further right
    blue = np.full((32, 32), 200, np.uint8)
    # Written by hand in the documented layout: 1024 red, 1024 green, 1024 blue, row-major.
    row = np.concatenate([red.ravel(), green.ravel(), blue.ravel()])[None, :]
    files, _ = _cifar10_files()
    files["data_batch_1"] = _py2_pickle({b"batch_label": b"b1", b"labels": [1], b"data": row,
                                         b"filenames": [b"gradient.png"]})
    source = load_cifar(_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files))

    first = source.images.images[0].source
    assert first.shape == (32, 32, 3)
    for r, c in [(0, 0), (0, 31), (31, 0), (5, 17), (17, 5), (31, 31)]:
        assert tuple(int(v) for v in first[r, c]) == (8 * r, 8 * c, 200)
    # A decoded image is what PIL shows for the same picture.
    assert np.array_equal(np.asarray(Image.fromarray(first)), first)


def test_images_are_named_by_archive_split_and_index_counted_across_batches(tmp_path):
    source = load_cifar(_cifar10_archive(tmp_path))  # 5 batches of 2 train, 3 test
    names = [r.name for r in source.images.images]
    assert names[:3] == [f"cifar-10-python.tar.gz:train[{i}]" for i in range(3)]
    assert names[9] == "cifar-10-python.tar.gz:train[9]"  # second image of data_batch_5
    assert names[10:] == [f"cifar-10-python.tar.gz:test[{i}]" for i in range(3)]
    assert source.root == str(tmp_path / "cifar-10-python.tar.gz")
    assert source.images.name == "cifar10"


def test_class_names_keep_the_meta_file_order_so_label_i_is_name_i(tmp_path):
    source = load_cifar(_cifar10_archive(tmp_path))
    assert source.images.classes == CIFAR10_CLASSES  # not sorted
    assert all(isinstance(c, str) for c in source.images.classes)


def test_tgz_and_plain_tar_archives_read_the_same_as_tar_gz(tmp_path):
    files, expected = _cifar10_files()
    for name, mode in [("cifar-10-python.tgz", "w:gz"), ("cifar-10-python.tar", "w")]:
        source = load_cifar(_tar(tmp_path / name, "cifar-10-batches-py", files, mode))
        np.testing.assert_array_equal(np.stack(_pixels_of(source, "test")), np.stack(expected["test"][0]))
        assert source.images.images[0].name == f"{name}:train[0]"


def test_files_resaved_by_python3_pickle_load_like_the_originals(tmp_path):
    files, expected = _cifar10_files()
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        resaved, _ = _cifar10_files(dump=lambda obj: pickle.dumps(obj, protocol=protocol))
        source = load_cifar(_folder(tmp_path / f"p{protocol}", resaved))
        np.testing.assert_array_equal(np.stack(_pixels_of(source, "train")), np.stack(expected["train"][0]))
        assert _labels_of(source, "test") == expected["test"][1]
        assert source.images.classes == CIFAR10_CLASSES


# ---------------------------------------------------------------- reading CIFAR-100


def test_cifar100_fine_labels_name_the_hundred_classes_in_file_order(tmp_path):
    _, images, fine, _ = _cifar100_files()
    source = load_cifar(_cifar100_archive(tmp_path))  # labels="fine" is the default
    assert source.images.name == "cifar100"
    assert source.images.classes == CIFAR100_FINE
    assert source.splits == ["train"] * 4 + ["test"] * 2
    assert _labels_of(source, "train") == fine["train"] and _labels_of(source, "test") == fine["test"]
    np.testing.assert_array_equal(np.stack(_pixels_of(source, "test")), np.stack(images["test"]))
    assert source.images.images[4].name == "cifar-100-python.tar.gz:test[0]"


def test_cifar100_coarse_labels_use_the_superclass_names(tmp_path):
    files, images, _, coarse = _cifar100_files()
    archive = _cifar100_archive(tmp_path)
    folder = _folder(tmp_path / "cifar-100-python", files)
    for source in (load_cifar(archive, labels="coarse"), load_cifar(folder, labels="coarse")):
        assert source.images.classes == CIFAR100_COARSE
        assert _labels_of(source, "train") == coarse["train"]
        assert _labels_of(source, "test") == coarse["test"]
        np.testing.assert_array_equal(np.stack(_pixels_of(source, "train")), np.stack(images["train"]))


# ---------------------------------------------------------------- recognising CIFAR


def test_is_cifar_recognises_both_official_archives_and_their_extracted_folders(tmp_path):
    files10, _ = _cifar10_files()
    files100, *_ = _cifar100_files()
    assert is_cifar(_cifar10_archive(tmp_path))
    assert is_cifar(_cifar100_archive(tmp_path))
    assert is_cifar(_tar(tmp_path / "c10.tar", "cifar-10-batches-py", files10, "w"))
    assert is_cifar(_folder(tmp_path / "cifar-10-batches-py", files10))
    assert is_cifar(_folder(tmp_path / "cifar-100-python", files100))


def test_is_cifar_is_false_for_an_image_folder_and_an_unrelated_archive(tmp_path):
    images = tmp_path / "photos"
    for split, cls in [("train", "cats"), ("train", "dogs"), ("test", "cats")]:
        (images / split / cls).mkdir(parents=True)
        Image.fromarray(_pixels(len(cls))).save(images / split / cls / "1.png")
    assert not is_cifar(images)
    png = images / "train" / "cats" / "1.png"
    with tarfile.open(tmp_path / "backup.tar.gz", "w:gz") as tar:
        tar.add(images, arcname="photos")
    assert not is_cifar(tmp_path / "backup.tar.gz")
    assert not is_cifar(png)
    assert not is_cifar(tmp_path / "does-not-exist.tar.gz")


# ---------------------------------------------------------------- refusing pickles that run code


class _RunsACommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_pickle_that_would_call_os_system_is_refused_and_nothing_runs(tmp_path, capfd):
    marker = tmp_path / "pwned"
    files, _ = _cifar10_files()
    evil = {b"batch_label": b"x", b"labels": [0], b"data": _RunsACommand(f"echo pwned > {marker}")}
    files["data_batch_3"] = pickle.dumps(evil, protocol=2)  # pickled, never executed here
    archive = _tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)

    with pytest.raises(TransferlabError) as err:
        load_cifar(archive)
    message = str(err.value)
    assert "refuses to unpickle" in message and ".system'" in message
    assert "cifar-10-batches-py/data_batch_3" in message and str(archive) in message
    assert "\n" not in message
    assert not marker.exists()
    assert "pwned" not in capfd.readouterr().out


def test_a_pickle_reaching_for_other_builtins_is_refused(tmp_path):
    files, _ = _cifar10_files()
    # builtins.eval("...") spelled in raw protocol-2 opcodes, as an attacker would write it.
    files["batches.meta"] = b"\x80\x02c__builtin__\neval\nX\x04\x00\x00\x001+1;\x85R."
    with pytest.raises(TransferlabError, match=r"batches\.meta. .*refuses to unpickle .__builtin__\.eval."):
        load_cifar(_folder(tmp_path / "cifar-10-batches-py", files))


# ---------------------------------------------------------------- user mistakes and damaged files


def test_an_archive_missing_a_batch_names_the_missing_member(tmp_path):
    files, _ = _cifar10_files()
    del files["data_batch_4"]
    archive = _tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    with pytest.raises(TransferlabError, match=r"cifar-10-batches-py/data_batch_4") as err:
        load_cifar(archive)
    assert str(archive) in str(err.value)


def test_a_folder_missing_the_test_batch_names_it(tmp_path):
    files, _ = _cifar10_files()
    del files["test_batch"]
    folder = _folder(tmp_path / "cifar-10-batches-py", files)
    with pytest.raises(TransferlabError, match=r"lacks test_batch"):
        load_cifar(folder)


def test_coarse_labels_on_cifar10_say_it_has_only_one_label_set(tmp_path):
    with pytest.raises(TransferlabError, match=r"CIFAR-10.*only one label set"):
        load_cifar(_cifar10_archive(tmp_path), labels="coarse")


def test_an_unknown_label_set_names_the_option_and_its_choices(tmp_path):
    with pytest.raises(TransferlabError, match=r"--cifar-labels 'superclass'.*fine.*coarse"):
        load_cifar(_cifar100_archive(tmp_path), labels="superclass")


def test_a_truncated_or_garbage_archive_is_an_error_naming_the_path(tmp_path):
    whole = _cifar10_archive(tmp_path).read_bytes()
    truncated = tmp_path / "cut" / "cifar-10-python.tar.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(whole[: len(whole) // 2])
    garbage = tmp_path / "junk.tar.gz"
    garbage.write_bytes(b"this is not a gzip file at all" * 10)
    for path in (truncated, garbage):
        with pytest.raises(TransferlabError) as err:
            load_cifar(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    # A damaged download of the official archive is still routed to CIFAR, to get that message.
    assert is_cifar(truncated)


def test_a_batch_without_a_data_array_is_an_error_naming_the_file(tmp_path):
    files, _ = _cifar10_files()
    files["test_batch"] = _py2_pickle({b"batch_label": b"test", b"labels": [0, 1]})
    archive = _tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    with pytest.raises(TransferlabError, match=r"cifar-10-batches-py/test_batch' has no data array"):
        load_cifar(archive)


def test_labels_that_do_not_match_the_images_are_an_error(tmp_path):
    files, _ = _cifar10_files()
    files["data_batch_2"] = _py2_pickle(_batch([_pixels(900), _pixels(901)], [0]))
    with pytest.raises(TransferlabError, match=r"data_batch_2' has labels that are not one integer"):
        load_cifar(_folder(tmp_path / "cifar-10-batches-py", files))
