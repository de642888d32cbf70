"""The audit's label check on the data: the default backbone's features of train and val (both
views, through the feature cache), confident learning (labels.py), and label_issues.csv, the
file a user edits and gives back to `train --exclude` or `--relabel`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..common.atomic import write_text
from .labels import LabelIssues, check_features
from .report import short

# Two views of each image, their probabilities averaged: the centre crop (timm's view, the
# `features` default) cuts the ends off wide objects, the squashed whole image distorts the rest.
# With 10% of train moved to another class (seeds 0-2), top-N precision: cars43 0.82-0.85 for both
# against 0.69-0.74 for the crop alone; hymenoptera 0.75-0.83 either way.
VIEWS = ("crop", "squash")
CSV_COLUMNS = ("path", "given", "suggested", "self_confidence", "action")
ACTIONS = ("exclude", "relabel", "keep")  # what `train --exclude` / `--relabel` read in the action column


def label_check(check, crop, backbone: str | None, cache_dir, feature_cache: bool, batch_size: int,
                progress: bool, seed: int) -> LabelIssues | None:
    """Confident learning over the train and val images of `check` (duplicates.SplitCheck); the
    test images are never checked: they are the score, not something to fit. `crop`: the
    near-duplicate search's features of every item (None: computed here)."""
    from .near import backbone_features

    rows = np.array([i for i, it in enumerate(check.items) if it.split != "test"], dtype=np.int64)
    refs = [check.items[i].ref for i in rows]
    views, readable, names = [], np.ones(len(rows), bool), None
    for resize in VIEWS:
        if resize == "crop" and crop is not None:
            feats = crop
            full = np.zeros((len(check.items), feats.vectors.shape[1]), np.float32)
            full[feats.ok] = feats.vectors
            vectors, ok = full[rows], feats.ok[rows]
        else:
            feats = backbone_features(refs, backbone, cache_dir=cache_dir, feature_cache=feature_cache,
                                      batch_size=batch_size, progress=progress, resize=resize)
            vectors = np.zeros((len(rows), feats.vectors.shape[1]), np.float32)
            vectors[feats.ok] = feats.vectors
            ok = feats.ok
        views.append(vectors)
        readable &= ok
        names = feats.backbone
    labels = np.array([check.items[i].label for i in rows], dtype=np.int64)[readable]
    paths = [refs[k].name for k in np.flatnonzero(readable)]
    issues = check_features([v[readable] for v in views], labels, check.classes, paths, seed)
    if issues is None:
        return None
    # Indices into the items the audit lists (train first, then val), not into the readable rows.
    kept = rows[readable]
    for issue in issues.issues:
        issue.index = int(kept[issue.index])
    issues.features = {"backbone": names, "views": list(VIEWS), "splits": sorted({check.items[i].split for i in rows})}
    return issues


def issues_csv(issues: LabelIssues, root: str) -> str:
    """label_issues.csv's text: one row per flagged image, most suspect first; `action` says what
    `train --exclude` (exclude) or `train --relabel` (relabel, to the `suggested` column) does with
    it, `keep` neither. Every row starts as exclude; paths are relative to the data's root."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for issue in issues.issues:
        writer.writerow([short(issue.path, root), issue.given, issue.suggested, f"{issue.self_confidence:.4f}",
                         "exclude"])
    return out.getvalue()


def write_issues_csv(path: Path, issues: LabelIssues, root: str) -> Path:
    return write_text(path, issues_csv(issues, root))
