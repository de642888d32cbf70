"""`evaluate`: a saved run scored on other labelled data with the same class names."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..classifier import ImageClassifier, align_classes
from ..data.sources import load_source
from ..errors import TransferlabError
from ..inference.metrics import compute_metrics, format_metrics
from ..runtime.frozen import resolve_runtime

log = logging.getLogger("transferlab")


def evaluate(run: str | Path, data: str | Path, split: str | None = None, progress: bool = True,
             tta: bool = False, runtime: str | None = None) -> dict:
    """Score a saved run on other labelled data; the data's class names must be the run's.
    `tta`: each image's probabilities averaged over its test-time views. `runtime`: where the
    network runs (auto, torch, onnx; default the run's own option).

    Data without splits is scored whole. Data with split folders is scored on its held-out part
    (test/, or val/ when there is no test/), or on `split` when given.
    """
    if runtime is not None:
        resolve_runtime(runtime, "cpu")  # an unknown name is refused before the run loads
    clf = ImageClassifier.load(run)
    clf.progress = progress
    if runtime is not None:
        clf.config_ = replace(clf.config_, runtime=runtime)
    source = load_source(data, min_classes=1)  # new images of one class can be scored too
    images = source.images
    given = source.given_splits
    if split is None and given:
        split = "test" if "test" in given else ("val" if "val" in given else "train")
    if split is not None:
        if split not in given:
            raise TransferlabError(f"--split {split}: '{data}' has no {split} split "
                                   f"(it has {', '.join(sorted(given)) or 'none'})")
        images = images.subset(np.flatnonzero(np.array(source.splits, dtype=object) == split))
    images = align_classes(images, clf.class_names(), f"data '{data}'", some=True)
    proba, ok, failures = clf.predict_proba_readable(images.images, tta)
    if not ok.any():
        raise TransferlabError(f"none of the images in '{data}' could be read: {failures[0]}")
    metrics = compute_metrics(images.labels[ok], proba, clf.class_names())
    metrics["skipped"] = [str(f) for f in failures]
    metrics["data"], metrics["split"], metrics["tta"] = str(data), split or "all", tta
    if failures:
        log.warning(f"skipped {len(failures)} unreadable image(s): {failures[0]}"
                    + (f" and {len(failures) - 1} more" if len(failures) > 1 else ""))
    log.info(format_metrics(metrics, f"{Path(data).name} ({split or 'all'}{', tta' if tta else ''})"))
    return metrics
