"""Promises of transferlab.data.sources and transferlab.data.split: image folders, CSVs and the
digits demo set become labelled images with stable keys; splits are honest, seeded and per class;
every user mistake is a one-line TransferlabError naming the culprit and the fix."""

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.data.sources import ImageRef, ImageSet, Source, load_source
from transferlab.data.split import Splits, split_source
from transferlab.errors import TransferlabError

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"

_counter = itertools.count(1)


# ---------------------------------------------------------------- helpers


def _pixels(seed: int) -> np.ndarray:
    """8x8 RGB pixels that differ from those of every other seed."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    arr[0, 0] = (seed % 256, (seed // 256) % 256, 7)  # guarantees distinctness
    return arr


def _img(path: Path, seed: int | None = None, fmt: str | None = None) -> Path:
    """Write a tiny, distinct real image at `path` (format from the extension unless `fmt`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt is None:
        fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP",
               ".gif": "GIF"}[path.suffix.lower()]
    Image.fromarray(_pixels(next(_counter) if seed is None else seed)).save(path, format=fmt)
    return path


def _class_tree(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    for cls, n in counts.items():
        for i in range(n):
            _img(root / cls / f"{cls}_{i:03d}{ext}")
    return root


def _names(image_set: ImageSet | None) -> set[str]:
    return set() if image_set is None else {ref.name for ref in image_set.images}


def _keys(image_set: ImageSet | None) -> set[str]:
    return set() if image_set is None else {ref.key for ref in image_set.images}


def _label_names(image_set: ImageSet) -> list[str]:
    return [image_set.classes[i] for i in image_set.labels]


def _by_name(source: Source) -> dict[str, tuple[str, str | None]]:
    """file name -> (class, given split) for every image of a source."""
    imgs = source.images
    return {Path(ref.name).name: (imgs.classes[lab], split)
            for ref, lab, split in zip(imgs.images, imgs.labels, source.splits)}


def _error(fn, *args, hint: bool = True, **kwargs) -> str:
    """The one-line TransferlabError message that fn(*args, **kwargs) raises."""
    with pytest.raises(TransferlabError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, f"message is not one line: {message!r}"
    if hint:
        assert ": " in message, f"message has no 'what: how to fix' part: {message!r}"
    return message


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- class folders


def test_class_folders_give_sorted_classes_and_correct_labels(tmp_path):
    _class_tree(tmp_path / "data", {"zebra": 2, "apple": 3, "mango": 1})
    src = load_source(tmp_path / "data")
    imgs = src.images
    assert imgs.classes == ["apple", "mango", "zebra"]
    assert len(imgs) == 6
    for ref, label in zip(imgs.images, imgs.labels):
        assert Path(ref.name).parent.name == imgs.classes[label]
        assert Path(ref.name).name.startswith(imgs.classes[label] + "_")
    assert imgs.class_counts() == {"apple": 3, "mango": 1, "zebra": 2}
    assert src.splits == [None] * 6 and src.given_splits == set()
    assert src.root == str(tmp_path / "data")


def test_class_folders_find_images_in_nested_sub_folders(tmp_path):
    root = tmp_path / "data"
    _img(root / "cats" / "top.png")
    _img(root / "cats" / "2019" / "summer" / "deep.png")
    _img(root / "dogs" / "a" / "b" / "c" / "deeper.jpg")
    _img(root / "dogs" / "flat.jpg")
    found = _by_name(load_source(root))
    assert found == {"top.png": ("cats", None), "deep.png": ("cats", None),
                     "deeper.jpg": ("dogs", None), "flat.jpg": ("dogs", None)}


def test_hidden_files_and_folders_are_ignored_entirely(tmp_path):
    root = _class_tree(tmp_path / "data", {"cats": 2, "dogs": 2})
    _write(root / "cats" / ".DS_Store", "junk")
    _img(root / "cats" / ".hidden" / "secret.png")
    _img(root / "dogs" / "._resource.png")  # macOS resource fork: starts with a dot
    _img(root / ".hidden" / "x" / "y.png")  # hidden class folder must not become a class
    _img(root / "__MACOSX" / "cats" / "z.png")
    src = load_source(root)
    assert src.images.classes == ["cats", "dogs"]
    assert len(src.images) == 4
    rel = [str(Path(r.name).relative_to(root)) for r in src.images.images]
    assert not any("hidden" in p or "._" in p or "MACOSX" in p for p in rel)
    assert not any(".DS_Store" in p or ".hidden" in p for p in src.ignored)


def test_non_image_files_are_not_loaded_but_listed_as_ignored(tmp_path):
    root = _class_tree(tmp_path / "data", {"cats": 2, "dogs": 2})
    notes = _write(root / "cats" / "notes.txt", "hello")
    meta = _write(root / "dogs" / "sub" / "labels.json", "{}")
    src = load_source(root)
    assert len(src.images) == 4
    assert not any(r.name.endswith((".txt", ".json")) for r in src.images.images)
    assert sorted(src.ignored) == sorted([str(notes), str(meta)])


def test_upper_case_image_extensions_are_loaded(tmp_path):
    root = tmp_path / "data"
    _img(root / "cats" / "A.JPG", fmt="JPEG")
    _img(root / "cats" / "B.Png", fmt="PNG")
    _img(root / "dogs" / "C.JPEG", fmt="JPEG")
    _img(root / "dogs" / "d.jpg")
    src = load_source(root)
    assert sorted(Path(r.name).name for r in src.images.images) == ["A.JPG", "B.Png", "C.JPEG", "d.jpg"]
    assert src.ignored == []


def test_a_folder_given_as_str_or_path_or_with_trailing_slash_loads_the_same(tmp_path):
    root = _class_tree(tmp_path / "data", {"cats": 2, "dogs": 2})
    a, b, c = load_source(root), load_source(str(root)), load_source(str(root) + os.sep)
    assert [r.key for r in a.images.images] == [r.key for r in b.images.images] \
        == [r.key for r in c.images.images]


# ---------------------------------------------------------------- split folders


def test_train_and_val_folders_become_given_splits(tmp_path):
    root = tmp_path / "data"
    _class_tree(root / "train", {"cats": 3, "dogs": 2})
    _class_tree(root / "val", {"cats": 1, "dogs": 2})
    src = load_source(root)
    assert src.images.classes == ["cats", "dogs"]
    assert src.given_splits == {"train", "val"}
    assert src.splits.count("train") == 5 and src.splits.count("val") == 3
    for ref, split, label in zip(src.images.images, src.splits, src.images.labels):
        rel = Path(ref.name).relative_to(root)
        assert rel.parts[0] == split
        assert rel.parts[1] == src.images.classes[label]


def test_train_val_test_folders_become_three_given_splits(tmp_path):
    root = tmp_path / "data"
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        _class_tree(root / split, {"cats": n, "dogs": n})
    src = load_source(root)
    assert src.given_splits == {"train", "val", "test"}
    assert {s: src.splits.count(s) for s in ("train", "val", "test")} == {"train": 6, "val": 4, "test": 2}


def test_alternative_split_folder_names_training_validation_testing_are_recognised(tmp_path):
    root = tmp_path / "data"
    _class_tree(root / "training", {"cats": 3, "dogs": 3})
    _class_tree(root / "validation", {"cats": 2, "dogs": 2})
    _class_tree(root / "testing", {"cats": 1, "dogs": 1})
    src = load_source(root)
    assert src.images.classes == ["cats", "dogs"]  # split names never become classes
    assert {s: src.splits.count(s) for s in ("train", "val", "test")} == {"train": 6, "val": 4, "test": 2}


@pytest.mark.parametrize("train_name,val_name", [("train", "valid"), ("Train", "Val")])
def test_split_folder_names_are_matched_case_insensitively_and_valid_means_val(tmp_path, train_name,
                                                                                val_name):
    root = tmp_path / "data"
    _class_tree(root / train_name, {"cats": 2, "dogs": 2})
    _class_tree(root / val_name, {"cats": 1, "dogs": 1})
    src = load_source(root)
    assert src.images.classes == ["cats", "dogs"]
    assert src.splits.count("train") == 4 and src.splits.count("val") == 2


def test_split_folders_without_train_are_an_error_asking_for_train(tmp_path):
    root = tmp_path / "data"
    _class_tree(root / "val", {"cats": 2, "dogs": 2})
    _class_tree(root / "test", {"cats": 2, "dogs": 2})
    msg = _error(load_source, root)
    assert str(root) in msg and "train/" in msg


def test_a_class_only_in_val_folder_is_an_error_naming_the_class(tmp_path):
    root = tmp_path / "data"
    _class_tree(root / "train", {"cats": 4, "dogs": 4})
    _class_tree(root / "val", {"cats": 2, "dogs": 2, "owls": 2})
    src = load_source(root)
    msg = _error(split_source, src)
    assert "owls" in msg and "cats" not in msg and "dogs" not in msg
    assert str(root) in msg and "train/" in msg


def test_a_class_only_in_val_and_test_folders_is_an_error_naming_the_class(tmp_path):
    root = tmp_path / "data"
    _class_tree(root / "train", {"cats": 4, "dogs": 4})
    _class_tree(root / "val", {"cats": 1, "dogs": 1, "owls": 1})
    _class_tree(root / "test", {"cats": 1, "dogs": 1, "owls": 1})
    msg = _error(split_source, load_source(root))
    assert "owls" in msg and str(root) in msg


def test_train_folder_without_images_is_a_one_line_error_not_a_crash(tmp_path):
    root = tmp_path / "data"
    (root / "train" / "cats").mkdir(parents=True)
    (root / "train" / "dogs").mkdir(parents=True)
    _class_tree(root / "val", {"cats": 2, "dogs": 2})
    msg = _error(split_source, load_source(root))
    assert str(root) in msg and "train" in msg


# ---------------------------------------------------------------- CSV


def test_csv_with_header_loads_paths_and_labels(tmp_path):
    for i in range(2):
        _img(tmp_path / "imgs" / f"c{i}.png")
        _img(tmp_path / "imgs" / f"d{i}.png")
    csv_path = _write(tmp_path / "labels.csv",
                      "path,label\nimgs/c0.png,cat\nimgs/d0.png,dog\nimgs/c1.png,cat\nimgs/d1.png,dog\n")
    src = load_source(csv_path)
    assert src.images.classes == ["cat", "dog"]
    assert [Path(r.name).name for r in src.images.images] == ["c0.png", "d0.png", "c1.png", "d1.png"]
    assert _label_names(src.images) == ["cat", "dog", "cat", "dog"]
    assert src.splits == [None] * 4
    assert src.root == str(csv_path)
    assert not any(r.key.endswith(":missing") for r in src.images.images)


def test_csv_header_may_list_columns_in_any_order_and_case(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    csv_path = _write(tmp_path / "labels.csv", "Label , PATH\nx,a.png\ny,b.png\n")
    src = load_source(csv_path)
    assert _label_names(src.images) == ["x", "y"]
    assert [Path(r.name).name for r in src.images.images] == ["a.png", "b.png"]


def test_csv_without_header_treats_first_row_as_data(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    _img(tmp_path / "c.png")
    csv_path = _write(tmp_path / "labels.csv", "a.png,cat\nb.png,dog\nc.png, dog \n")
    src = load_source(csv_path)
    assert len(src.images) == 3
    assert _label_names(src.images) == ["cat", "dog", "dog"]  # labels are stripped


def test_csv_split_column_gives_the_splits(tmp_path):
    rows = ["path,label,split"]
    for i, split in enumerate(["train", "train", "val", "test", "TRAIN", "validation", "testing", "train"]):
        _img(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'ab'[i % 2]},{split}")
    src = load_source(_write(tmp_path / "s.csv", "\n".join(rows) + "\n"))
    assert src.splits == ["train", "train", "val", "test", "train", "val", "test", "train"]
    assert src.given_splits == {"train", "val", "test"}


def test_csv_relative_paths_resolve_against_the_csv_folder_not_the_working_dir(tmp_path, monkeypatch):
    data = tmp_path / "project" / "data"
    img_a = _img(data / "pics" / "a.png")
    img_b = _img(data / "pics" / "b.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _write(data / "list.csv", "path,label\npics/a.png,x\n./pics/../pics/b.png,y\n")
    src = load_source(os.path.relpath(data / "list.csv", elsewhere))
    assert [r.source for r in src.images.images] == [str(img_a), str(img_b)]
    assert all(os.path.isabs(r.source) for r in src.images.images)
    assert not any(r.key.endswith(":missing") for r in src.images.images)


def test_csv_absolute_paths_are_used_as_given(tmp_path):
    a = _img(tmp_path / "far" / "a.png")
    b = _img(tmp_path / "far" / "b.png")
    src = load_source(_write(tmp_path / "sub" / "l.csv", f"{a},x\n{b},y\n"))
    assert [r.source for r in src.images.images] == [str(a), str(b)]


def test_csv_row_with_a_missing_column_is_an_error_naming_csv_and_line(tmp_path):
    _img(tmp_path / "a.png")
    csv_path = _write(tmp_path / "l.csv", "path,label\na.png,x\nb.png\n")
    msg = _error(load_source, csv_path)
    assert str(csv_path) in msg and "line 3" in msg and "path,label" in msg


def test_csv_without_header_missing_column_reports_the_data_line(tmp_path):
    csv_path = _write(tmp_path / "l.csv", "a.png,x\nb.png,y\nc.png\n")
    msg = _error(load_source, csv_path)
    assert str(csv_path) in msg and "line 3" in msg


def test_csv_with_split_header_row_missing_split_is_an_error(tmp_path):
    csv_path = _write(tmp_path / "l.csv", "path,label,split\na.png,x,train\nb.png,y\n")
    msg = _error(load_source, csv_path)
    assert str(csv_path) in msg and "line 3" in msg and "split" in msg


def test_csv_error_line_number_counts_blank_lines(tmp_path):
    csv_path = _write(tmp_path / "l.csv", "path,label\na.png,x\n\nb.png\n")
    msg = _error(load_source, csv_path)
    assert "line 4" in msg


def test_csv_unknown_split_value_is_an_error_naming_value_and_line(tmp_path):
    csv_path = _write(tmp_path / "l.csv", "path,label,split\na.png,x,train\nb.png,y,holdout\n")
    msg = _error(load_source, csv_path)
    assert str(csv_path) in msg and "line 3" in msg and "holdout" in msg
    assert "train" in msg and "val" in msg and "test" in msg


def test_csv_split_column_without_any_train_row_is_an_error(tmp_path):
    csv_path = _write(tmp_path / "l.csv", "path,label,split\na.png,x,val\nb.png,y,test\n")
    msg = _error(load_source, csv_path, hint=False)
    assert str(csv_path) in msg and "train" in msg


def test_csv_split_column_without_any_train_row_error_says_how_to_fix_it(tmp_path):
    csv_path = _write(tmp_path / "l.csv", "path,label,split\na.png,x,val\nb.png,y,test\n")
    _error(load_source, csv_path, hint=True)


def test_csv_pointing_at_a_missing_file_still_loads_with_a_missing_key(tmp_path):
    _img(tmp_path / "here.png")
    src = load_source(_write(tmp_path / "l.csv", "here.png,x\ngone.png,y\n"))
    here, gone = src.images.images
    assert gone.key.endswith(":missing") and gone.source == str(tmp_path / "gone.png")
    assert "missing" in gone.key
    assert not here.key.endswith(":missing")


def test_csv_with_utf8_bom_header_is_recognised(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes("\ufeffpath,label\na.png,x\nb.png,y\n".encode("utf-8"))
    src = load_source(csv_path)
    assert len(src.images) == 2 and src.images.classes == ["x", "y"]


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return load_source("digits")


def test_digits_demo_set_has_1797_images_in_10_classes(digits):
    assert len(digits.images) == 1797
    assert digits.images.classes == [str(d) for d in range(10)]
    assert sorted(set(digits.images.labels.tolist())) == list(range(10))
    assert digits.splits == [None] * 1797


def test_digits_pixels_are_in_memory_arrays_with_unique_keys(digits):
    refs = digits.images.images
    assert all(isinstance(r.source, np.ndarray) for r in refs)
    assert refs[0].source.shape == (8, 8) and refs[0].source.dtype == np.uint8
    assert len({r.key for r in refs}) == 1797
    assert len({r.name for r in refs}) == 1797


def test_digits_split_keeps_every_class_in_every_split(digits):
    splits = split_source(digits, seed=3)
    for name, part in splits.items():
        assert set(part.labels.tolist()) == set(range(10)), name
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797


# ---------------------------------------------------------------- errors


def test_missing_data_folder_is_an_error_naming_it_and_what_to_pass(tmp_path):
    missing = tmp_path / "nope"
    msg = _error(load_source, missing)
    assert str(missing) in msg and "does not exist" in msg
    assert ".csv" in msg and "digits" in msg


def test_a_non_csv_file_as_data_is_an_error_asking_for_folder_or_csv(tmp_path):
    f = _img(tmp_path / "cat.png")
    msg = _error(load_source, f)
    assert str(f) in msg and ".csv" in msg and "folder" in msg


def test_class_folders_without_images_are_an_error_listing_extensions(tmp_path):
    root = tmp_path / "data"
    _write(root / "cats" / "notes.txt", "x")
    (root / "dogs").mkdir()
    msg = _error(load_source, root)
    assert str(root) in msg and "no images" in msg and ".jpg" in msg and ".png" in msg


def test_an_empty_folder_is_an_error_naming_it(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    msg = _error(load_source, root)
    assert str(root) in msg and "no images" in msg


def test_a_folder_with_only_one_class_is_an_error_naming_the_class(tmp_path):
    root = _class_tree(tmp_path / "data", {"cats": 3})
    (root / "dogs").mkdir()  # an empty class folder is not a class
    msg = _error(load_source, root)
    assert str(root) in msg and "'cats'" in msg and "2 classes" in msg


def test_a_csv_with_only_one_label_is_an_error(tmp_path):
    csv_path = _write(tmp_path / "l.csv", "a.png,x\nb.png,x\n")
    msg = _error(load_source, csv_path)
    assert str(csv_path) in msg and "'x'" in msg


@pytest.mark.parametrize("text", ["", "\n\n", " , \n", "\ufeff"])
def test_an_empty_csv_is_an_error_naming_it(tmp_path, text):
    csv_path = tmp_path / "empty.csv"
    csv_path.write_text(text, encoding="utf-8")
    msg = _error(load_source, csv_path)
    assert str(csv_path) in msg and "empty" in msg and "path,label" in msg


def test_a_class_with_one_image_is_too_few_to_split_and_the_error_names_it(tmp_path):
    root = _class_tree(tmp_path / "data", {"cats": 10, "dogs": 10, "lonely": 1})
    msg = _error(split_source, load_source(root))
    assert "'lonely'" in msg and "cats" not in msg and str(root) in msg
    assert "--test-fraction" in msg and "--test-fraction 0" in msg  # the hint


def test_a_class_with_two_images_is_too_few_for_train_val_and_test(tmp_path):
    root = _class_tree(tmp_path / "data", {"cats": 10, "pair": 2})
    msg = _error(split_source, load_source(root))
    assert "'pair'" in msg and "--val-fraction" in msg


@pytest.mark.parametrize("kwargs,option", [
    ({"val_fraction": 1.5}, "--val-fraction 1.5"),
    ({"val_fraction": -0.1}, "--val-fraction -0.1"),
    ({"test_fraction": 1.0}, "--test-fraction 1.0"),
    ({"test_fraction": float("nan")}, "--test-fraction nan"),
])
def test_fractions_outside_zero_to_one_are_an_error_naming_the_option(tmp_path, kwargs, option):
    src = load_source(_class_tree(tmp_path / "data", {"a": 10, "b": 10}))
    msg = _error(split_source, src, **kwargs)
    assert option in msg and "0.15" in msg


@pytest.mark.parametrize("val,test", [(0.5, 0.5), (0.6, 0.45), (0.7, 0.3)])
def test_val_plus_test_fraction_of_one_or_more_is_an_error(tmp_path, val, test):
    src = load_source(_class_tree(tmp_path / "data", {"a": 10, "b": 10}))
    msg = _error(split_source, src, val_fraction=val, test_fraction=test)
    assert "--val-fraction" in msg and "--test-fraction" in msg and "below 1" in msg


# ---------------------------------------------------------------- splits


@pytest.fixture(scope="module")
def hundred_per_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("splits") / "data"
    return load_source(_class_tree(root, {"a": 100, "b": 100, "c": 100}))


def test_split_is_reproducible_for_the_same_seed(hundred_per_class):
    one, two = split_source(hundred_per_class, seed=7), split_source(hundred_per_class, seed=7)
    for (n1, s1), (n2, s2) in zip(one.items(), two.items()):
        assert n1 == n2
        assert [r.key for r in s1.images] == [r.key for r in s2.images]
        assert s1.labels.tolist() == s2.labels.tolist()


def test_split_differs_for_another_seed(hundred_per_class):
    one, two = split_source(hundred_per_class, seed=0), split_source(hundred_per_class, seed=1)
    assert _keys(one.test) != _keys(two.test)
    assert _keys(one.val) != _keys(two.val)


def test_split_sizes_match_the_fractions_per_class_exactly(hundred_per_class):
    s = split_source(hundred_per_class, val_fraction=0.15, test_fraction=0.15, seed=0)
    assert s.val.class_counts() == {"a": 15, "b": 15, "c": 15}
    assert s.test.class_counts() == {"a": 15, "b": 15, "c": 15}
    assert s.train.class_counts() == {"a": 70, "b": 70, "c": 70}


def test_every_class_is_in_train_val_and_test(hundred_per_class):
    s = split_source(hundred_per_class, val_fraction=0.05, test_fraction=0.02, seed=4)
    for name, part in s.items():
        assert set(part.classes[i] for i in part.labels) == {"a", "b", "c"}, name


def test_small_classes_still_get_one_image_in_each_split(tmp_path):
    root = _class_tree(tmp_path / "data", {"big": 40, "small": 3})
    s = split_source(load_source(root))
    assert s.val.class_counts()["small"] == 1
    assert s.test.class_counts()["small"] == 1
    assert s.train.class_counts()["small"] == 1


def test_no_image_is_in_two_splits_and_none_is_lost(hundred_per_class):
    s = split_source(hundred_per_class, seed=11)
    train, val, test = _keys(s.train), _keys(s.val), _keys(s.test)
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == _keys(hundred_per_class.images)
    assert len(s.train) + len(s.val) + len(s.test) == 300


def test_split_keeps_each_image_with_its_label(hundred_per_class):
    s = split_source(hundred_per_class, seed=2)
    for _, part in s.items():
        assert part.classes == ["a", "b", "c"]
        for ref, label in zip(part.images, part.labels):
            assert Path(ref.name).parent.name == part.classes[label]


def test_unsplit_data_origins_name_fractions_and_seed(hundred_per_class):
    s = split_source(hundred_per_class, seed=5)
    assert s.origins == {"train": "the data", "test": "0.15 of the data, seed 5",
                         "val": "0.15 of the data, seed 5"}
    assert s.score_split == "test"
    assert s.summary() == ("train 210 (the data), val 45 (0.15 of the data, seed 5), "
                           "test 45 (0.15 of the data, seed 5)")


def test_zero_test_fraction_means_no_test_split_and_val_is_scored(hundred_per_class):
    s = split_source(hundred_per_class, val_fraction=0.2, test_fraction=0)
    assert s.test is None and "test" not in s.origins
    assert s.score_split == "val"
    assert s.val.class_counts() == {"a": 20, "b": 20, "c": 20}
    assert [n for n, _ in s.items()] == ["train", "val"]


@pytest.fixture
def train_val_tree(tmp_path):
    root = tmp_path / "data"
    _class_tree(root / "train", {"cats": 20, "dogs": 20})
    _class_tree(root / "val", {"cats": 5, "dogs": 6})
    return root


def test_train_val_data_holds_val_folder_out_as_test_and_cuts_val_from_train(train_val_tree):
    src = load_source(train_val_tree)
    s = split_source(src, val_fraction=0.15, seed=0)
    val_folder = {str(p) for p in (train_val_tree / "val").rglob("*.png")}
    train_folder = {str(p) for p in (train_val_tree / "train").rglob("*.png")}
    assert _names(s.test) == val_folder
    assert _names(s.val) <= train_folder and _names(s.train) <= train_folder
    assert not (_names(s.val) & _names(s.train))
    assert _names(s.val) | _names(s.train) == train_folder
    assert s.val.class_counts() == {"cats": 3, "dogs": 3}  # round(0.15 * 20)
    assert s.score_split == "test"
    assert s.origins == {"train": "train/", "test": "val/, held out", "val": "0.15 of train/, seed 0"}


def test_train_val_data_ignores_test_fraction(train_val_tree):
    s = split_source(load_source(train_val_tree), val_fraction=0.1, test_fraction=0.4)
    assert len(s.test) == 11 and len(s.train) + len(s.val) == 40
    assert s.val.class_counts() == {"cats": 2, "dogs": 2}


def test_train_test_data_keeps_test_folder_and_cuts_val_from_train(tmp_path):
    root = tmp_path / "data"
    _class_tree(root / "train", {"cats": 20, "dogs": 20})
    _class_tree(root / "test", {"cats": 4, "dogs": 4})
    s = split_source(load_source(root), val_fraction=0.25, seed=1)
    assert _names(s.test) == {str(p) for p in (root / "test").rglob("*.png")}
    assert _names(s.val) <= {str(p) for p in (root / "train").rglob("*.png")}
    assert s.val.class_counts() == {"cats": 5, "dogs": 5}  # 0.25 of train/, not of train minus test
    assert s.origins == {"train": "train/", "test": "test/", "val": "0.25 of train/, seed 1"}
    assert s.score_split == "test"


def test_train_val_test_folders_are_used_exactly_as_given(tmp_path):
    root = tmp_path / "data"
    _class_tree(root / "train", {"cats": 6, "dogs": 6})
    _class_tree(root / "val", {"cats": 2, "dogs": 3})
    _class_tree(root / "test", {"cats": 4, "dogs": 1})
    for seed in (0, 1):
        s = split_source(load_source(root), seed=seed)
        for name in ("train", "val", "test"):
            assert _names(getattr(s, name)) == {str(p) for p in (root / name).rglob("*.png")}
        assert s.origins == {"train": "train/", "test": "test/", "val": "val/"}
        assert s.score_split == "test"


def test_csv_split_column_is_used_like_split_folders(tmp_path):
    rows = ["path,label,split"]
    for i in range(12):
        _img(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'xy'[i % 2]},{'train' if i < 8 else 'val'}")
    s = split_source(load_source(_write(tmp_path / "l.csv", "\n".join(rows))), val_fraction=0.25)
    assert _names(s.test) == {str(tmp_path / f"{i}.png") for i in range(8, 12)}
    assert s.origins["test"] == "val/, held out"
    assert len(s.val) == 2 and len(s.train) == 6


def test_splits_is_a_plain_container_for_prebuilt_image_sets():
    refs = [ImageRef.from_array(_pixels(i), f"p{i}") for i in range(4)]
    tr = ImageSet(refs[:2], [0, 1], ["a", "b"])
    va = ImageSet(refs[2:], [0, 1], ["a", "b"])
    s = Splits(tr, va, None, {"train": "x", "val": "y"})
    assert s.score_split == "val" and [n for n, _ in s.items()] == ["train", "val"]


# ---------------------------------------------------------------- ImageRef keys


def test_the_same_file_gives_the_same_key_twice(tmp_path):
    f = _img(tmp_path / "a.png")
    assert ImageRef.from_file(f).key == ImageRef.from_file(f).key
    assert ImageRef.from_file(f) == ImageRef.from_file(str(f))


def test_the_same_file_reached_by_different_relative_paths_gives_the_same_key(tmp_path, monkeypatch):
    f = _img(tmp_path / "dir" / "a.png")
    monkeypatch.chdir(tmp_path / "dir")
    assert ImageRef.from_file("a.png").key == ImageRef.from_file(f).key == \
        ImageRef.from_file("../dir/./a.png").key


def test_rewriting_a_file_with_new_content_changes_its_key(tmp_path):
    f = _img(tmp_path / "a.png", seed=1)
    before = ImageRef.from_file(f).key
    st = os.stat(f)
    _img(f, seed=2)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    after = ImageRef.from_file(f).key
    assert after != before
    assert ImageRef.from_file(f).key == after  # and is stable again


def test_touching_a_file_changes_its_key(tmp_path):
    f = _img(tmp_path / "a.png")
    before = ImageRef.from_file(f).key
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns - 3_000_000_000))
    assert ImageRef.from_file(f).key != before


def test_keys_of_different_files_differ(tmp_path):
    a, b = _img(tmp_path / "a.png", seed=5), _img(tmp_path / "b.png", seed=5)  # same pixels
    assert ImageRef.from_file(a).key != ImageRef.from_file(b).key


def test_a_missing_file_gets_a_missing_key_that_changes_once_it_exists(tmp_path):
    f = tmp_path / "later.png"
    ref = ImageRef.from_file(f)
    assert ref.key.endswith(":missing") and ref.source == str(f) and ref.name == str(f)
    _img(f)
    assert not ImageRef.from_file(f).key.endswith(":missing")


def test_the_same_pixels_as_arrays_give_the_same_key(tmp_path):
    p = _pixels(3)
    a = ImageRef.from_array(p, "first")
    b = ImageRef.from_array(p.copy(), "second")
    c = ImageRef.from_array(np.asfortranarray(p), "third")  # memory layout is not content
    assert a.key == b.key == c.key
    assert a.name == "first" and a.source is p


def test_different_pixels_as_arrays_give_different_keys():
    p = _pixels(3)
    q = p.copy()
    q[4, 4, 1] ^= 1  # a single bit differs
    assert ImageRef.from_array(p, "p").key != ImageRef.from_array(q, "q").key


def test_arrays_with_equal_bytes_but_other_shape_or_dtype_get_different_keys():
    p = np.arange(64, dtype=np.uint8)
    keys = {ImageRef.from_array(p.reshape(8, 8), "a").key,
            ImageRef.from_array(p.reshape(4, 16), "b").key,
            ImageRef.from_array(p.view(np.int8).reshape(8, 8), "c").key}
    assert len(keys) == 3


# ---------------------------------------------------------------- real data


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="../shared/data/hymenoptera not present")
def test_hymenoptera_loads_as_train_and_val_and_val_becomes_the_test_split():
    src = load_source(HYMENOPTERA)
    assert src.images.classes == ["ants", "bees"]
    assert src.splits.count("train") == 245 and src.splits.count("val") == 153
    assert len(src.images) == 398
    val_keys = {r.key for r, s in zip(src.images.images, src.splits) if s == "val"}
    s = split_source(src)
    assert len(s.test) == 153 and _keys(s.test) == val_keys
    assert all(Path(r.name).relative_to(HYMENOPTERA).parts[0] == "val" for r in s.test.images)
    assert len(s.train) + len(s.val) == 245
    assert s.origins["test"] == "val/, held out"
