"""Where labelled images come from: an image folder, a CSV of path,label, or the digits demo set.

A source yields images (files or in-memory pixels), their labels, the class names and, when the
data arrives already split (train/ val/ test/ folders, a CSV split column), each image's split.
Nothing here decodes pixels; that is `decode.py`'s job. `gather_files` finds unlabelled images (files,
folders, globs) for the commands that predict or explain.
"""

from __future__ import annotations

import csv
import difflib
import glob
import os
from pathlib import Path

import numpy as np

from ..errors import TransferlabError
from .cifar import is_cifar, load_cifar
from .types import ImageRef, ImageSet, Source

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
# Folder names people use for splits, mapped to ours.
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
SPLITS = ("train", "val", "test")
DEMO_SETS = ("digits",)


def load_source(data: str | os.PathLike, cifar_labels: str = "fine",
                classes: list[str] | None = None, min_classes: int = 2) -> Source:
    """Read a folder, a .csv file, a CIFAR archive or a demo set name into a Source.

    `classes` keeps only those classes (in the given names' sorted order); errors are one line.
    Training needs `min_classes` 2; scoring a fitted model on images of one class does not.
    """
    text = str(data)
    path = Path(text).expanduser()
    if text in DEMO_SETS:
        source = _digits()
    elif not path.exists():
        raise TransferlabError(
            f"data '{text}' does not exist: pass a folder with one sub-folder per class, "
            f"a .csv file of path,label, a CIFAR archive, or one of the demo sets: {', '.join(DEMO_SETS)}")
    elif is_cifar(path):
        source = load_cifar(path, cifar_labels)
    elif path.is_file():
        if path.suffix.lower() != ".csv":
            raise TransferlabError(
                f"data '{text}' is a file but neither a .csv nor a CIFAR archive: pass a folder with "
                "one sub-folder per class, or a .csv file with rows of path,label")
        source = _csv(path)
    else:
        source = _folder(path)
    if classes:
        source = _keep_classes(source, classes)
    _check_classes(source, min_classes)
    return source


def _keep_classes(source: Source, keep: list[str]) -> Source:
    images = source.images
    unknown = [c for c in keep if c not in images.classes]
    if unknown:
        close = difflib.get_close_matches(unknown[0], images.classes, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TransferlabError(f"--classes: '{unknown[0]}' is not a class of '{source.root}'{hint}; "
                               f"it has {', '.join(images.classes[:20])}" + (" ..." if len(images.classes) > 20 else ""))
    kept = sorted(set(keep), key=images.classes.index)
    index = np.array([images.classes.index(c) for c in kept])
    remap = np.full(len(images.classes), -1)
    remap[index] = np.arange(len(kept))
    chosen = np.flatnonzero(remap[images.labels] >= 0)
    subset = ImageSet([images.images[i] for i in chosen], remap[images.labels[chosen]], kept, images.name)
    return Source(subset, [source.splits[i] for i in chosen], source.root, source.ignored)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _scan_class_folder(folder: Path, ignored: list[str]) -> list[Path]:
    found = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop, or a link to a folder already scanned
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for fname in sorted(filenames):
            if _is_hidden(fname):
                continue
            full = Path(dirpath) / fname
            (found if full.suffix.lower() in IMAGE_EXTENSIONS else ignored).append(full)
    return found


def _folder(root: Path) -> Source:
    subdirs = _subdirs(root)
    split_dirs: dict[str, Path] = {}
    for d in subdirs:
        split = SPLIT_FOLDERS.get(d.name.lower())
        if split in split_dirs:
            raise TransferlabError(
                f"'{root}' has two {split} folders, {split_dirs[split].name}/ and {d.name}/: "
                "merge them into one")
        if split:
            split_dirs[split] = d
    if split_dirs:
        stray = [d.name for d in subdirs if d.name.lower() not in SPLIT_FOLDERS
                 and _scan_class_folder(d, [])]
        if stray:
            raise TransferlabError(
                f"'{root}' mixes split folders ({', '.join(d.name for d in split_dirs.values())}) "
                f"with image folders beside them ({', '.join(stray[:3])}): move those under train/")
    if split_dirs and "train" not in split_dirs:
        raise TransferlabError(
            f"'{root}' has split folders ({', '.join(d.name for d in split_dirs.values())}) but no "
            "train/ folder: add train/ with one sub-folder per class")
    layout = split_dirs if split_dirs else {None: root}
    ignored: list[str] = []
    per_split: dict[str | None, dict[str, list[Path]]] = {}
    for split, folder in layout.items():
        per_split[split] = {d.name: _scan_class_folder(d, ignored) for d in _subdirs(folder)}
    loose = [str(p) for folder in layout.values() for p in sorted(folder.iterdir())
             if p.is_file() and not _is_hidden(p.name) and p.suffix.lower() in IMAGE_EXTENSIONS]
    classes = sorted({c for by_class in per_split.values() for c, files in by_class.items() if files})
    index = {c: i for i, c in enumerate(classes)}
    images, labels, splits = [], [], []
    for split, by_class in per_split.items():
        for cls, files in by_class.items():
            for f in files:
                images.append(ImageRef.from_file(f))
                labels.append(index[cls])
                splits.append(split)
    if not images:
        where = "in the class sub-folders of " if any(per_split.values()) else "under "
        raise TransferlabError(
            f"no images found {where}'{root}' (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}): "
            "put each class's images in its own sub-folder, e.g. data/cats/1.jpg, data/dogs/2.jpg")
    return Source(ImageSet(images, np.array(labels), classes, root.name), splits, str(root),
                  [str(p) for p in ignored], loose)


def _csv(path: Path) -> Source:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        rows = [(reader.line_num, r) for r in reader if r and any(cell.strip() for cell in r)]
    if not rows:
        raise TransferlabError(f"'{path}' is empty: write one row per image as path,label")
    header = [c.strip().lower() for c in rows[0][1]]
    if "path" in header and "label" in header:
        cols = {name: header.index(name) for name in ("path", "label", "split") if name in header}
        rows = rows[1:]
        if not rows:
            raise TransferlabError(f"'{path}' has a header but no rows: add one row per image as path,label")
        width, expected = len(header), f"the header's {len(header)} ({','.join(header)})"
    else:
        cols = {"path": 0, "label": 1}
        width, expected = 2, "path,label (a split column needs the header path,label,split)"
    base = path.parent
    entries = []
    for lineno, row in rows:
        while len(row) > width and not row[-1].strip():
            row = row[:-1]  # empty cells at the end (a spreadsheet's export) are no values
        if len(row) > width:
            # Unquoted commas inside a path shift every column: the path would be "not found".
            raise TransferlabError(
                f"'{path}' line {lineno} has {len(row)} columns, too many for {expected}: quote a path "
                "that holds a comma (\"a,b.jpg\"), or remove the extra values")
        if len(row) <= max(cols.values()):
            raise TransferlabError(
                f"'{path}' line {lineno} has {len(row)} column(s), expected path,label"
                + (",split" if "split" in cols else "") + ": fix or remove that line")
        label = row[cols["label"]].strip()
        if not label:
            raise TransferlabError(f"'{path}' line {lineno} has an empty label: fill it in or remove the line")
        split = row[cols["split"]].strip().lower() if "split" in cols else ""
        if split and split not in SPLIT_FOLDERS:
            raise TransferlabError(
                f"'{path}' line {lineno}: split '{split}' is not one of train, val, test "
                "(or empty for no split)")
        p = Path(row[cols["path"]].strip()).expanduser()
        entries.append((p if p.is_absolute() else base / p, label, SPLIT_FOLDERS[split] if split else None))
    classes = sorted({label for _, label, _ in entries})
    index = {c: i for i, c in enumerate(classes)}
    images = [ImageRef.from_file(p) for p, _, _ in entries]
    labels = np.array([index[label] for _, label, _ in entries])
    if "split" in cols and not any(s in ("train", None) for _, _, s in entries):
        raise TransferlabError(
            f"'{path}' has a split column but no row with split 'train': mark the training rows "
            "with split train, or drop the split column")
    return Source(ImageSet(images, labels, classes, path.stem), [s for _, _, s in entries], str(path))


def _digits() -> Source:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 ink levels -> dark ink on white paper, the way a photographed digit looks.
    pixels = (255 - np.round(bunch.images * (255 / 16))).astype(np.uint8)
    images = [ImageRef.from_array(p, f"digits[{i}]") for i, p in enumerate(pixels)]
    classes = [str(c) for c in bunch.target_names]
    return Source(ImageSet(images, bunch.target, classes, "digits"), [None] * len(images), "digits")


def _check_classes(source: Source, min_classes: int) -> None:
    images = source.images
    if not images.classes:
        raise TransferlabError(f"found no labelled images in '{source.root}': one sub-folder (or CSV label) "
                               "per class")
    check_classes(images.classes, f"'{source.root}'", min_classes)


def check_classes(classes: list[str], where: str, min_classes: int = 2,
                  how: str = "one sub-folder (or CSV label) per class") -> None:
    """The one rule for what a classifier can be trained on, whatever brings the images (a folder,
    a CSV, a list given to ImageClassifier.fit): `classes` are those that have images."""
    if len(classes) < min_classes:
        only = f" ('{classes[0]}')" if classes else ""
        raise TransferlabError(
            f"found only {len(classes)} class{only} in {where}: a classifier needs at least 2 classes, {how}")


def gather_files(paths: list[str]) -> list[Path]:
    """Image files named directly, inside folders (recursively) or matched by glob patterns."""
    found: list[Path] = []
    for given in paths:
        matches = sorted(glob.glob(given, recursive=True)) if glob.has_magic(given) else [given]
        if not matches:
            raise TransferlabError(f"'{given}' matches no file: check the pattern (quote it so the shell "
                                   "does not expand it)")
        for match in map(Path, matches):
            if match.is_dir():
                found += sorted(p for p in match.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            elif match.exists() or not glob.has_magic(given):
                if not match.exists():
                    raise TransferlabError(f"'{match}' does not exist: give image files, folders or globs")
                found.append(match)
    if not found:
        raise TransferlabError(f"no images in {', '.join(paths)}: give image files, folders or globs")
    return list(dict.fromkeys(found))
