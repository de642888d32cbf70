"""The functions behind the commands: train a run, evaluate a saved run, the demo."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .classifier import ImageClassifier, align_classes
from .config import RunConfig
from .data.sources import load_source
from .data.split import split_source
from .errors import TransferlabError
from .evaluate import compute_metrics, format_metrics
from .runs import (atomic_dir, default_run_name, read_run_file, unique_dir, write_history,
                   write_json, write_yaml)

log = logging.getLogger("transferlab")


@dataclass
class Run:
    path: Path
    metrics: dict
    classifier: ImageClassifier

    @property
    def score(self) -> float:
        return self.metrics[self.metrics["score_split"]]["accuracy"]


def train(data: str | None = None, config: RunConfig | None = None, progress: bool = True,
          **options) -> Run:
    """Train one run and write its directory; `options` are RunConfig keys (same names as the CLI)."""
    values = (config or RunConfig()).to_dict()
    values.update(options)
    if data is not None:
        values["data"] = str(data)
    config = RunConfig.from_dict(values)
    started = time.perf_counter()
    source = load_source(config.data)
    if source.ignored:
        log.warning(f"ignored {len(source.ignored)} file(s) without an image extension, "
                    f"e.g. {source.ignored[0]}")
    splits = split_source(source, config.val_fraction, config.test_fraction, config.seed)
    log.info(f"{config.data}: {len(source.images.classes)} classes; {splits.summary()}")
    clf = ImageClassifier(**config.model_options(), progress=progress)
    clf.fit(splits.train, splits.val)
    log.info(f"backbone {config.backbone} with {clf.weights_.description}; features "
             f"{clf.feature_counts_['computed']} computed, {clf.feature_counts_['cached']} from cache")
    metrics = {"score_split": splits.score_split, "splits": {}, "fit": {
        k: v for k, v in clf.fit_info_.items() if k != "history"}}
    skipped = list(clf.skipped_)
    for name, part in splits.items():
        proba, ok, failures = clf.predict_proba_readable(part.images)
        if name != "train" and name != "val":
            skipped += [str(f) for f in failures]
        metrics["splits"][name] = {"images": len(part), "readable": int(ok.sum()),
                                   "from": splits.origins.get(name, "")}
        metrics[name] = compute_metrics(part.labels[ok], proba, clf.classes_)
    metrics["features"] = clf.feature_counts_
    metrics["skipped"] = skipped
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    if skipped:
        log.warning(f"skipped {len(skipped)} unreadable image(s): " + "; ".join(skipped[:5])
                    + (f"; and {len(skipped) - 5} more (all listed in metrics.json)" if len(skipped) > 5 else ""))
    out = Path(config.out)
    path = unique_dir(out, config.name or default_run_name(source.images.name, config.strategy))
    with atomic_dir(path) as tmp:
        clf.write_model_files(tmp)
        write_yaml(tmp / "config.yaml", config.to_dict())
        write_json(tmp / "metrics.json", metrics)
        write_history(tmp / "history.csv", clf.fit_info_.get("history", []))
    log.info(format_metrics(metrics[splits.score_split], f"{splits.score_split} ({splits.origins[splits.score_split]})"))
    log.info(f"run saved to {path} ({metrics['seconds']:.1f} s)")
    return Run(path, metrics, clf)


def evaluate(run: str | Path, data: str | Path, split: str | None = None, progress: bool = True) -> dict:
    """Score a saved run on other labelled data; the data's class names must be the run's.

    Data without splits is scored whole. Data with split folders is scored on its held-out part
    (test/, or val/ when there is no test/), or on `split` when given.
    """
    clf = ImageClassifier.load(run)
    clf.progress = progress
    source = load_source(data)
    images = source.images
    given = source.given_splits
    if split is None and given:
        split = "test" if "test" in given else ("val" if "val" in given else "train")
    if split is not None:
        if split not in given:
            raise TransferlabError(f"--split {split}: '{data}' has no {split} split "
                                   f"(it has {', '.join(sorted(given)) or 'none'})")
        images = images.subset(np.flatnonzero(np.array(source.splits, dtype=object) == split))
    images = align_classes(images, clf.classes_, f"data '{data}'")
    proba, ok, failures = clf.predict_proba_readable(images.images)
    if not ok.any():
        raise TransferlabError(f"none of the images in '{data}' could be read: {failures[0]}")
    metrics = compute_metrics(images.labels[ok], proba, clf.classes_)
    metrics["skipped"] = [str(f) for f in failures]
    metrics["data"], metrics["split"] = str(data), split or "all"
    if failures:
        log.warning(f"skipped {len(failures)} unreadable image(s): {failures[0]}"
                    + (f" and {len(failures) - 1} more" if len(failures) > 1 else ""))
    log.info(format_metrics(metrics, f"{Path(data).name} ({split or 'all'})"))
    return metrics


def demo(out: str = "runs", progress: bool = True, **options) -> Run:
    """The embedded default: the packaged offline backbone, `features`, on scikit-learn's digits."""
    return train("digits", out=out, name=options.pop("name", "demo-digits"), progress=progress, **options)
