"""The functions behind the commands: train a run, evaluate a saved run, the demo."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audit.duplicates import pre_training_check
from .classifier import ImageClassifier, align_classes
from .config import RunConfig
from .data.sources import load_source
from .data.split import split_source
from .errors import TransferlabError
from .evaluate import compute_metrics, format_metrics
from .engine import CHECKPOINT, load_checkpoint
from .data.decode import UnreadableImage, decode
from .report.curves import plot_curves
from .report.html import GalleryItem, write_run_report
from . import distributed
from .runs import default_run_name, unique_dir, write_history, write_json, write_yaml
from .strategies import resolve
from .training import resolve_device

log = logging.getLogger("transferlab")


@dataclass
class Run:
    path: Path | None           # None on the ranks other than 0 of a data-parallel run
    metrics: dict
    classifier: ImageClassifier | None

    @property
    def score(self) -> float:
        return self.metrics[self.metrics["score_split"]]["accuracy"]


def train(data: str | None = None, config: RunConfig | None = None, progress: bool = True,
          resume: str | Path | None = None, **options) -> Run:
    """Train one run and write its directory; `options` are RunConfig keys (same names as the CLI).

    `resume` continues an interrupted run from its last complete epoch, with its own config.
    """
    checkpoint = None
    if resume is not None:
        path = Path(resume)
        if options or data is not None:
            raise TransferlabError("--resume continues a run with its own config.yaml: give no other options")
        if (path / "metrics.json").is_file():
            raise TransferlabError(f"run '{path}' has already finished: start a new run instead")
        config = RunConfig.from_yaml(path / "config.yaml") if (path / "config.yaml").is_file() else None
        if config is None:
            raise TransferlabError(f"'{path}' is not a transferlab run (no config.yaml): pass the folder "
                                   "of an interrupted run")
        checkpoint = load_checkpoint(path)
        log.info(f"resuming {path} " + (f"after epoch {len(checkpoint['history'])}" if checkpoint
                                        else "from the start (no epoch had finished)"))
    else:
        values = (config or RunConfig()).to_dict()
        values.update(options)
        if data is not None:
            values["data"] = str(data)
        config = RunConfig.from_dict(values)
    config = resolve(config)
    # Under torchrun: join the process group; every rank trains, rank 0 alone writes.
    world = distributed.init(resolve_device(config.device))
    if world.size > 1 and config.strategy == "features" and not world.main:
        return Run(None, {}, None)  # nothing trains by gradient: rank 0 does it alone
    started = time.perf_counter()
    source = load_source(config.data, cifar_labels=config.cifar_labels, classes=config.class_list())
    if source.ignored:
        log.warning(f"ignored {len(source.ignored)} file(s) without an image extension, "
                    f"e.g. {source.ignored[0]}")
    splits = split_source(source, config.val_fraction, config.test_fraction, config.seed)
    splits, audit_info = pre_training_check(splits, config.data, config.dedupe)  # leakage, --dedupe
    log.info(f"{config.data}: {len(source.images.classes)} classes; {splits.summary()}")
    clf = ImageClassifier(**config.model_options(), progress=progress)
    if resume is None and world.main:
        path = unique_dir(Path(config.out), config.name or default_run_name(source.images.name, config.strategy))
        path.mkdir(parents=True)
        write_yaml(path / "config.yaml", config.to_dict())
    elif resume is None:
        path = None
    try:
        scored = sum(len(part) for name, part in splits.items() if name != "train")
        clf.fit(splits.train, splits.val, run_dir=path if world.main else None, resume=checkpoint,
                reserve_images=scored, started=started)
        if not world.main:
            return Run(None, {}, clf)
        metrics, held_out = _score_splits(clf, splits)
        metrics["audit"] = audit_info
        metrics["seconds"] = round(time.perf_counter() - started, 2)
        clf.write_model_files(path)
        write_history(path / "history.csv", clf.history_)
        if clf.history_:
            plot_curves(clf.history_, path / "curves.png")
        write_run_report(path, config.to_dict(), metrics, clf.history_, worst_mistakes(*held_out, clf.classes_))
        write_json(path / "metrics.json", metrics)  # last: its presence marks a finished run
        (path / CHECKPOINT).unlink(missing_ok=True)
    except BaseException:
        if not world.main:
            raise
        if resume is None and not (path / CHECKPOINT).exists():
            shutil.rmtree(path, ignore_errors=True)  # nothing worth resuming: leave no trace
        elif (path / CHECKPOINT).exists():
            log.warning(f"run interrupted; continue it with `transferlab train --resume {path}`")
        raise
    if metrics["skipped"]:
        skipped = metrics["skipped"]
        log.warning(f"skipped {len(skipped)} unreadable image(s): " + "; ".join(skipped[:5])
                    + (f"; and {len(skipped) - 5} more (all listed in metrics.json)" if len(skipped) > 5 else ""))
    split = splits.score_split
    log.info(format_metrics(metrics[split], f"{split} ({splits.origins[split]})"))
    log.info(f"run saved to {path} ({metrics['seconds']:.1f} s)")
    return Run(path, metrics, clf)


def _score_splits(clf: ImageClassifier, splits) -> tuple[dict, tuple]:
    """Metrics on val and test, and on train where that is cheap (cached features); and the
    score split's (readable images, labels, probabilities) for the report's gallery."""
    metrics = {"score_split": splits.score_split, "strategy": clf.config_.strategy, "splits": {},
               "fit": dict(clf.fit_info_)}
    skipped = list(clf.skipped_)
    held_out = ([], np.zeros(0, int), np.zeros((0, len(clf.classes_))))
    for name, part in splits.items():
        if name == "train" and clf.config_.strategy != "features":
            metrics["splits"][name] = {"images": len(part), "from": splits.origins.get(name, "")}
            continue
        proba, ok, failures = clf.predict_proba_readable(part.images)
        if name == "test":
            skipped += [str(f) for f in failures]
        metrics["splits"][name] = {"images": len(part), "readable": int(ok.sum()),
                                   "from": splits.origins.get(name, "")}
        metrics[name] = compute_metrics(part.labels[ok], proba, clf.classes_)
        if name == splits.score_split:
            held_out = ([im for im, good in zip(part.images, ok) if good], part.labels[ok], proba)
    if hasattr(clf, "feature_counts_"):
        metrics["features"] = clf.feature_counts_
    metrics["skipped"] = skipped
    return metrics, held_out


def worst_mistakes(images: list, labels: np.ndarray, proba: np.ndarray, classes: list[str],
                   count: int = 12) -> list[GalleryItem]:
    """The most confidently misclassified images, most confident first, as report thumbnails."""
    predicted = proba.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-proba[wrong, predicted[wrong]], kind="stable")][:count]
    items = []
    for i in wrong:
        try:
            pixels = decode(images[i].source, 160)
        except UnreadableImage:
            continue  # it was read for scoring; a file changed since is no reason to fail the run
        items.append(GalleryItem(pixels, classes[labels[i]], classes[predicted[i]],
                                 float(proba[i, predicted[i]]), images[i].name))
    return items


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


def compare(data: str, grid: str | Path, seeds: int = 3, out: str | Path = "comparisons",
            name: str | None = None, first_seed: int = 0, progress: bool = True, jobs: int = 1):
    """Every config of `grid` once per seed, `jobs` runs at a time; see transferlab.compare."""
    from .comparison import compare as run_comparison

    return run_comparison(data, grid, seeds, out, name, first_seed, progress, jobs)


def audit(data: str | None = None, threshold: float | None = None, near: bool = True,
          out: str | Path | None = None, run: str | Path | None = None, progress: bool = True,
          **options) -> dict:
    """Duplicates, leakage, label conflicts, class counts and odd images of `data` (or of `run`'s
    data and splits); writes audit.json and audit.html. See transferlab.audit.audit."""
    from .audit import DEFAULT_THRESHOLD
    from .audit import audit as run_audit

    return run_audit(data, threshold=DEFAULT_THRESHOLD if threshold is None else threshold, near=near,
                     out=out, run=run, progress=progress, **options)


def layers(backbone: str, input_size: int | None = None, unfreeze: int | str = 1):
    """Every named module of `backbone` (random weights: shapes do not depend on them) with its
    output shape for a `input_size` input (default: the backbone's own), parameters and stage."""
    import timm

    from .models.backbones import check_backbone
    from .models.scratch import SCRATCH_MODELS, create_scratch
    from .models.summary import layer_rows

    check_backbone(backbone)
    if backbone in SCRATCH_MODELS:
        model = create_scratch(backbone, input_size or 32)
    else:
        model = timm.create_model(backbone, pretrained=False, num_classes=0)
    size = input_size or timm.data.resolve_model_data_config(model)["input_size"][-1]
    if unfreeze != "all" and not str(unfreeze).isdigit():
        raise TransferlabError(f"--unfreeze {unfreeze} is not a number of stages or 'all'")
    return layer_rows(model, size, unfreeze)
