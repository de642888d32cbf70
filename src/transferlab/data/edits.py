"""A user's corrections of the labels, given back to `train`: `--exclude FILE` leaves listed
images out, `--relabel FILE` gives them another label. Both are CSV files with a `path` column,
such as the label_issues.csv that `transferlab audit DATA --labels` writes; with an `action`
column, `--exclude` takes the rows marked exclude and `--relabel` those marked relabel (keep: neither).

They change train and val, never test: val makes the run's choices (C, early stopping, auto's
selection), and a label known to be wrong there misleads them as it misleads training; test is
the score, and a score on labels changed by a model's opinion would flatter that model.
The cut into train/val/test is made first, on the data as it is, so every image the files do not
name stays in the split it would be in without them.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import TransferlabError
from .split import Splits
from .types import ImageSet

ACTIONS = ("exclude", "relabel", "keep")


@dataclass
class Edits:
    """What the files asked and what was done: the counts metrics.json records."""
    excluded: int = 0
    relabelled: int = 0
    not_in_data: dict[str, list[str]] = field(default_factory=dict)  # option -> listed paths no image has
    in_test: int = 0                                        # listed images of test, left as they are
    files: dict[str, str] = field(default_factory=dict)     # option -> file

    def to_dict(self) -> dict:
        return {"excluded": self.excluded, "relabelled": self.relabelled,
                "not_in_data": sum(len(v) for v in self.not_in_data.values()), "in_test": self.in_test,
                "files": self.files}


def read_rows(path: str, option: str, action: str) -> list[tuple[int, dict]]:
    """(line number, row) of each row of the CSV `path` that `option` applies: every row, or with
    an `action` column the rows whose action is `action`. One-line errors name the file and row."""
    try:
        with open(os.path.expanduser(path), newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = columns
            rows = list(enumerate(reader, start=2))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise TransferlabError(f"{option} '{path}' cannot be read as CSV ({type(err).__name__}: {err}): give a "
                               "UTF-8 CSV file with a header row and a path column") from None
    if "path" not in columns:
        raise TransferlabError(f"{option} '{path}' has no 'path' column (its header: {', '.join(columns) or 'none'}): "
                               "give a CSV whose first row names the columns, one of them path, such as the "
                               "label_issues.csv of `transferlab audit DATA --labels`")
    if "action" not in columns:
        return rows
    chosen = []
    for line, row in rows:
        value = (row.get("action") or "").strip().lower()
        if value not in ACTIONS:
            raise TransferlabError(f"{option} '{path}' row {line}: action '{row.get('action') or ''}' is not one of "
                                   f"{', '.join(ACTIONS)}: fix it there")
        if value == action:
            chosen.append((line, row))
    return chosen


class _Finder:
    """Finds an image of the data by a path as a user writes it: absolute, relative to the data's
    root (as label_issues.csv writes them) or to the current folder."""

    def __init__(self, splits: Splits, root: str):
        self.root = os.path.abspath(root)
        self.where: dict[str, tuple[str, int]] = {}
        for name, part in splits.items():
            for i, ref in enumerate(part.images):
                self.where[os.path.normpath(ref.name)] = (name, i)

    def find(self, text: str) -> tuple[str, int] | None:
        text = os.path.expanduser(text.strip())
        for candidate in (text, os.path.join(self.root, text), os.path.abspath(text)):
            found = self.where.get(os.path.normpath(candidate))
            if found is not None:
                return found
        return None


def apply_edits(splits: Splits, root: str, exclude: str | None, relabel: str | None) -> tuple[Splits, Edits]:
    """`splits` with the images `exclude` lists left out of train and val, and those `relabel`
    lists given their new label there (exclusion wins when a file names an image in both).
    Nothing slow: the files are read and checked before any image is decoded."""
    edits = Edits()
    if exclude is None and relabel is None:
        return splits, edits
    finder = _Finder(splits, root)
    classes = splits.train.classes
    dropped: dict[str, set[int]] = {"train": set(), "val": set()}
    relabelled: dict[str, dict[int, int]] = {"train": {}, "val": {}}
    for option, path, action in (("--exclude", exclude, "exclude"), ("--relabel", relabel, "relabel")):
        if path is None:
            continue
        edits.files[option.lstrip("-")] = str(path)
        rows = read_rows(path, option, action)
        column = None
        if action == "relabel":
            header = set(rows[0][1]) if rows else set()
            column = "label" if "label" in header else "suggested" if "suggested" in header else None
            if rows and column is None:
                raise TransferlabError(f"--relabel '{path}' has no 'label' column (nor label_issues.csv's "
                                       "'suggested'): give rows of path,label")
        for line, row in rows:
            found = finder.find(row.get("path") or "")
            if found is None:
                edits.not_in_data.setdefault(option, []).append(row.get("path") or "")
                continue
            split, i = found
            if split == "test":
                edits.in_test += 1
                continue
            if action == "exclude":
                dropped[split].add(i)
                continue
            label = (row.get(column) or "").strip()
            if label not in classes:
                raise TransferlabError(f"--relabel '{path}' row {line}: label '{label}' is not a class of the data: "
                                       f"give one of {', '.join(classes)}")
            relabelled[split][i] = classes.index(label)
    parts = {}
    for name in ("train", "val"):
        part = getattr(splits, name)
        if part is None:
            parts[name] = None
            continue
        labels = part.labels.copy()
        for i, label in relabelled[name].items():
            if i not in dropped[name] and labels[i] != label:
                labels[i] = label
                edits.relabelled += 1
        keep = np.array([i for i in range(len(part)) if i not in dropped[name]], dtype=np.int64)
        edits.excluded += len(part) - len(keep)
        parts[name] = ImageSet([part.images[i] for i in keep], labels[keep], part.classes, part.name)
    origins = dict(splits.origins)
    if parts["val"] is not None and not len(parts["val"]):
        parts["val"] = None  # every val image left out: the run has no val, as data without one
        origins.pop("val", None)
    empty = [c for j, c in enumerate(classes) if not (parts["train"].labels == j).any()]
    if empty:
        option = "--exclude" if exclude is not None else "--relabel"
        raise TransferlabError(f"{option} leaves class '{empty[0]}' with no training image: mark some of its rows "
                               f"keep (action column) or drop them from '{exclude or relabel}'")
    return Splits(parts["train"], parts["val"], splits.test, origins), edits
