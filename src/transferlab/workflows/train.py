"""`train` and `demo`: load and split the data, fit an ImageClassifier with the run's callbacks
(checkpoints, budget, TensorBoard), score every split and write the run directory; with `--folds K`,
K-fold cross-validation on train first (`cross_validate`)."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.base import clone

from ..audit.duplicates import pre_training_check
from ..classifier import ImageClassifier
from ..common.atomic import atomic_dir, check_writable, write_json, write_yaml
from ..common.run_files import default_run_name, unique_dir, write_history
from ..common.run_lock import RunLock
from ..config import RunConfig
from ..data.decode import UnreadableImage, decode
from ..data.edits import Edits, apply_edits
from ..data.sources import ImageSet, Source, load_source
from ..data.split import Splits, split_source, stratified_folds
from ..errors import Interrupted, TransferlabError
from ..inference.metrics import compute_metrics, format_metrics, prediction_record
from ..report.curves import plot_curves
from ..report.html import GalleryItem, write_run_report
from ..report.tensorboard import TensorBoard
from ..selection import saved_candidates
from ..selection.auto import AutoClassifier  # noqa: F401 - registers auto's estimator
from ..training import distributed
from ..training.callbacks import CHECKPOINT, Budget, Callback, Checkpoint
from ..training.fit import resolve_device
from .trust_scores import calibration_scores, trust_lines, unknown_scores
from ..strategy_registry import strategy
from ..training.strategies import meta_estimator, resolve

log = logging.getLogger("transferlab")

PLAN = "plan.json"  # an auto run's plan: what `train --replay` fits again


@dataclass
class Run:
    path: Path | None           # None on the ranks other than 0 of a data-parallel run
    metrics: dict
    classifier: ImageClassifier | None

    @property
    def score(self) -> float:
        return self.metrics[self.metrics["score_split"]]["accuracy"]


def train(data: str | None = None, config: RunConfig | None = None, progress: bool = True,
          resume: str | Path | None = None, callbacks: Sequence[Callback] = (), started: float | None = None,
          replay: str | Path | None = None, **options) -> Run:
    """Train one run and write its directory; `options` are RunConfig keys (same names as the CLI).

    `resume` continues an interrupted run from its last complete epoch (an auto run from its
    finished candidates), with its own config. `callbacks` join the run's own
    (training/callbacks.py) and see every epoch. `started` (time.perf_counter()) is when the
    budget and the reported seconds start counting: the command's start; by default, now.

    `replay` (a finished auto run) fits that run's plan again on its data, with its options, into
    a new run: the same candidates, epochs and decisions, no budget deciding anything.
    """
    started = time.perf_counter() if started is None else started
    plan = None
    if replay is not None:
        config, plan = _replayed(replay, data, config, options)
    else:
        config = _run_config(data, config, resume, options)
    # Under torchrun: join the process group; every rank trains, rank 0 alone writes.
    world = distributed.init(resolve_device(config.device))
    kind = strategy(config.strategy)
    if world.size > 1 and kind.cached_features and not world.main:
        return Run(None, {}, None)  # nothing trains by gradient: rank 0 does it alone
    with contextlib.ExitStack() as held:
        if resume is not None and world.main:
            held.enter_context(RunLock(resume))  # before its checkpoint is read: one writer at a time
        elif world.main:
            check_writable(config.out, create=False, option="--out")  # before the data loads
        checkpoint = Checkpoint(resume, save=world.main) if resume is not None else None  # read now: fails early
        if checkpoint is not None and not kind.searches:  # auto says which candidates it keeps
            done = checkpoint.epochs_done
            log.info(f"resuming {resume} " + (f"after epoch {done}" if done else "from the start (no epoch had finished)"))
        source, splits, audit_info, edits = _splits(config)
        folds = _folds(config, splits)  # refused now, before anything slow, when a class is too small
        path = Path(resume) if resume is not None else _new_run_dir(config, source.images.name, world.main)
        if resume is None and path is not None:
            held.enter_context(RunLock(path))
        if checkpoint is None and path is not None and not kind.cached_features:
            # A features run refits its head from cached features in seconds: checkpoints would
            # cost more than they save. An auto run keeps its finished candidates in the run
            # directory the checkpoint names (selection/saved_candidates.py).
            checkpoint = Checkpoint(path)
        meta = meta_estimator(config.strategy)
        clf = (meta or ImageClassifier)(**config.model_options(), progress=progress)
        try:
            found = None
            if config.lr == "find":  # the swept rate is the run's: in config.yaml before training starts
                config, found = find_lr(config, splits, path, progress, world.size)
                clf.set_params(lr=config.lr)
            cv = cross_validate(clf, splits.train, folds) if folds else None
            # --budget bounds the final fit as it would without --folds: the folds' time is not its.
            fit_started = started + (cv["seconds"] if cv else 0.0)
            run_callbacks = [*_run_callbacks(config, path, checkpoint, splits, fit_started), *callbacks]
            if plan is not None:
                clf.fit(splits.train, val=splits.val, callbacks=run_callbacks, plan=plan)
            else:
                clf.fit(splits.train, val=splits.val, callbacks=run_callbacks)
            if found is not None:
                clf.fit_info_["lr_find"] = found
            if not world.main:
                return Run(None, {}, clf)
            checked = _label_check(clf, splits, config)
            metrics = _write_results(path, clf, config, splits, audit_info, started, cv, edits, checked)
        except BaseException as err:
            if world.main:
                _after_failure(path, resume is not None, err)
            raise
    _report(metrics, splits, path)
    return Run(path, metrics, clf)


def find_lr(config: RunConfig, splits: Splits, path: Path | None, progress: bool, ranks: int = 1
            ) -> tuple[RunConfig, dict]:
    """`--lr find`: the sweep on the training split; the run's config.yaml then records the rate
    it suggests (so a resumed run trains with it, without sweeping again), and the run keeps the
    plot as lr_find.png."""
    if ranks > 1:
        raise TransferlabError("--lr find under several processes would sweep each rank's shard apart: run "
                               "`transferlab lr-find` first and pass its rate with --lr")
    result = ImageClassifier(**config.model_options(), progress=progress).lr_find(splits.train)
    config = replace(config, lr=result.suggestion)
    if path is not None:
        write_yaml(path / "config.yaml", config.to_dict())
        result.plot(path / "lr_find.png")
    log.info(f"lr find: training with --lr {result.suggestion:.3g} (" + ", ".join(
        f"{k} {v:.3g}" for k, v in result.suggestions.items()) + ")")
    return config, result.to_dict()


def _run_callbacks(config: RunConfig, path: Path | None, checkpoint: Checkpoint | None, splits: Splits,
                   started: float) -> list[Callback]:
    """What the run directory asks of training: checkpoints, TensorBoard, the budget."""
    callbacks: list[Callback] = [checkpoint] if checkpoint is not None else []
    if config.tensorboard and path is not None:
        callbacks.append(TensorBoard(path))
    if config.budget is not None:
        unscored = ("train", "val") if meta_estimator(config.strategy) else ("train",)  # score_splits'
        scored = sum(len(part) for name, part in splits.items() if name not in unscored)
        callbacks.append(Budget(config.budget, started, reserve_images=scored))
    return callbacks


def _replayed(run, data, config, options: dict) -> tuple[RunConfig, dict]:
    """The config and the plan of a finished auto run, for a new run that refits that plan."""
    path = Path(run)
    if data is not None or config is not None or set(options) - {"out", "name"}:
        raise TransferlabError("--replay refits a run's plan with its own config.yaml: give no other options "
                               "than --out and --name")
    plan_file = path / PLAN
    if not plan_file.is_file():
        raise TransferlabError(f"'{path}' has no {PLAN}: --replay takes a finished run of --strategy auto")
    try:
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
        if plan.get("format") != 1 or not plan["candidates"]:
            raise ValueError("not a plan this version reads")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TransferlabError(f"'{plan_file}' is damaged ({type(err).__name__}): replay another run") from None
    values = {**RunConfig.from_yaml(path / "config.yaml").to_dict(), "name": None, **options}
    return resolve(RunConfig.from_dict(values)), plan


def _run_config(data, config: RunConfig | None, resume, options: dict) -> RunConfig:
    if resume is None:
        values = (config or RunConfig()).to_dict()
        values.update(options)
        if data is not None:
            values["data"] = str(data)
        return resolve(RunConfig.from_dict(values).refuse_unused())
    path = Path(resume)
    if options or data is not None:
        raise TransferlabError("--resume continues a run with its own config.yaml: give no other options")
    if (path / "metrics.json").is_file():
        raise TransferlabError(f"run '{path}' has already finished: start a new run instead")
    if not (path / "config.yaml").is_file():
        raise TransferlabError(f"'{path}' is not a transferlab run (no config.yaml): pass the folder "
                               "of an interrupted run")
    return resolve(RunConfig.from_yaml(path / "config.yaml"))


def _splits(config: RunConfig) -> tuple:
    source = load_source(config.data, cifar_labels=config.cifar_labels, classes=config.class_list())
    if source.ignored:
        log.warning(f"ignored {len(source.ignored)} file(s) without an image extension, "
                    f"e.g. {source.ignored[0]}")
    if source.loose:
        log.warning(f"ignored {len(source.loose)} image(s) lying beside the class folders, e.g. "
                    f"{source.loose[0]}: move each into the folder of its class")
    splits, edits = edited_splits(config, source)
    _report_edits(edits, config.data)
    splits, audit_info = pre_training_check(splits, config.data, config.dedupe)  # leakage, --dedupe
    log.info(f"{config.data}: {len(source.images.classes)} classes; {splits.summary()}")
    return source, splits, audit_info, edits


def edited_splits(config: RunConfig, source: Source) -> tuple[Splits, Edits]:
    """run_splits, then --exclude and --relabel applied to train and val (data/edits.py): cut
    first, so every image the files do not name stays where it would be without them."""
    return apply_edits(run_splits(config, source), source.root, config.exclude, config.relabel)


def _report_edits(edits: Edits, data: str) -> None:
    for option, paths in edits.not_in_data.items():
        log.warning(f"{option} '{edits.files[option.lstrip('-')]}': {len(paths)} listed path(s) are not images "
                    f"of {data}, e.g. '{paths[0]}': ignored")
    if edits.files:
        kept = f" ({edits.in_test} listed image(s) of test left as they are)" if edits.in_test else ""
        log.info(f"label edits: {edits.excluded} image(s) left out of train and val, {edits.relabelled} "
                 f"relabelled; test is never changed{kept}")


def run_splits(config: RunConfig, source: Source) -> Splits:
    """The splits a run of `config` makes of `source`; refused when they leave nothing to score
    the run on (no test and no val), before anything is written or decoded."""
    # auto holds back its own validation images from train to choose, then refits a features
    # winner on all of train: carving val here as well would keep those images from the winner.
    searches = strategy(config.strategy).searches
    val_fraction = 0.0 if searches else config.val_fraction
    splits = split_source(source, val_fraction, config.test_fraction, config.seed)
    if splits.test is None and splits.val is None:
        fix = "give --test-fraction 0.15, or data with its own test/ (or val/) split (folders, or a CSV split column)"
        if searches:
            raise TransferlabError(f"--test-fraction {config.test_fraction:g} leaves nothing to score the run on: "
                                   f"'{source.root}' has no test or val split and auto holds its validation "
                                   f"images back from train itself (--val-fraction does not apply); {fix}")
        raise TransferlabError(f"--test-fraction {config.test_fraction:g} and --val-fraction "
                               f"{config.val_fraction:g} leave nothing to score the run on: '{source.root}' has "
                               f"no test or val split; {fix}")
    return splits


def check_data(config: RunConfig, source: Source) -> None:
    """What a run of `config` would refuse about `source` once started (its splits, --folds),
    checked up front: `compare` checks every config before its first run."""
    _folds(config, edited_splits(config, source)[0])


def _new_run_dir(config: RunConfig, data_name: str, main: bool) -> Path | None:
    """The run's folder, born with its config.yaml (written inside it before it gets its name), so
    a run folder always says what it is, whenever the process is killed."""
    if not main:
        return None
    path = unique_dir(Path(config.out), config.name or default_run_name(data_name, config.strategy))
    with atomic_dir(path) as tmp:
        write_yaml(tmp / "config.yaml", config.to_dict())
    return path


def _after_failure(path: Path, resumed: bool, err: BaseException) -> None:
    if not resumed and not (path / CHECKPOINT).exists() and not saved_candidates.has_progress(path):
        shutil.rmtree(path, ignore_errors=True)  # nothing worth resuming: leave no trace
        return
    hint = f"continue it with `transferlab train --resume {path}`"
    if isinstance(err, KeyboardInterrupt):
        raise Interrupted(f"interrupted: {hint}") from None
    if not isinstance(err, TransferlabError):  # a user's mistake says itself what to do instead
        log.warning(f"run interrupted; {hint}")


def _label_check(clf: ImageClassifier, splits: Splits, config: RunConfig) -> dict | None:
    """workflows/label_check.py's warning; a finished fit is never lost to it: a failure is one line."""
    from .label_check import label_warning

    try:
        return label_warning(clf, splits, config)
    except Exception as err:  # noqa: BLE001 - the check is advice; the run it follows is done
        log.info(f"label check skipped: {type(err).__name__}: {err}")
        return None


def _write_results(path: Path, clf: ImageClassifier, config: RunConfig, splits: Splits, audit_info: dict,
                   started: float, cv: dict | None = None, edits: Edits | None = None,
                   label_check: dict | None = None) -> dict:
    metrics, held_out = score_splits(clf, splits, config.tta)
    metrics.update(trust_metrics(clf, held_out, splits.score_split))
    metrics["audit"] = audit_info
    if edits is not None and edits.files:
        metrics["label_edits"] = edits.to_dict()
    if label_check is not None:
        metrics["label_check"] = label_check
    if cv is not None:
        metrics["folds"] = cv
    clf.write_model_files(path)
    if hasattr(clf, "plan_"):
        write_json(path / PLAN, clf.plan_)
    write_history(path / "history.csv", clf.history_)
    if clf.history_:
        plot_curves(clf.history_, path / "curves.png")
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    write_run_report(path, config.to_dict(), metrics, clf.history_, worst_mistakes(*held_out, clf.class_names()))
    write_json(path / "metrics.json", metrics)  # last: its presence marks a finished run
    (path / CHECKPOINT).unlink(missing_ok=True)
    saved_candidates.discard(path)
    return metrics


def trust_metrics(clf: ImageClassifier, held_out: tuple, split: str) -> dict:
    """Calibration error before and after the run's calibration, and the unknown-image detector's
    trade-off, on the score split (whose probabilities `held_out` holds)."""
    images, labels, proba = held_out
    if not len(labels):
        return {}
    found = {"calibration": calibration_scores(clf.spec_.calibration, labels, proba, split)}
    detector = getattr(clf, "unknown_", None)
    if detector is not None:
        distances, ok, _ = detector.score(images, clf.embedding())
        found["unknown"] = unknown_scores(detector, distances, labels[ok], proba[ok], split)
    return found


def _folds(config: RunConfig, splits: Splits) -> list[np.ndarray]:
    """The validation indices (into train) of each cross-validation fold; none without --folds."""
    if not config.folds:
        return []
    return stratified_folds(splits.train.labels, config.folds, config.seed, splits.train.classes)


def cross_validate(clf: ImageClassifier, train: ImageSet, folds: list[np.ndarray]) -> dict:
    """Fit a clone of `clf` per fold on train without that fold (choices made on images held back
    from that part) and score it on the fold: how much the run's recipe varies with its training images, measured
    on train alone, so the test split stays untouched.

    The folds get none of the run's callbacks: they are no resumable part of the run (a resumed
    run cross-validates again) and must not spend its budget; each fold's fit has its own
    `budget`, as the estimator gives any fit (under auto, each fold makes auto's whole choice).
    Their features come from the store the final fit reads too, so a features run computes each
    image's once.
    """
    started = time.perf_counter()
    every = np.arange(len(train))
    accuracy, log_loss, computed = [], [], []
    for k, held in enumerate(folds, 1):
        log.info(f"fold {k}/{len(folds)}: training on {len(train) - len(held)} images, validating on {len(held)}")
        # No val=: the fold scores a model that made its choices (C, early stopping) without it,
        # on images held back from its own training part, so the fold's score is unbiased.
        model = clone(clf).fit(train.subset(np.setdiff1d(every, held)))
        part = train.subset(held)
        proba, ok, _ = model.predict_proba_readable(part.images)
        scores = compute_metrics(part.labels[ok], proba, model.class_names())
        accuracy.append(scores["accuracy"])
        log_loss.append(scores["log_loss"])
        if hasattr(model, "feature_counts_"):
            computed.append(model.feature_counts_["computed"])
    mean, std = statistics.fmean(accuracy), statistics.stdev(accuracy)
    log.info(f"{len(folds)}-fold cross-validation: val accuracy {mean:.4f} ± {std:.4f}")
    cv = {"k": len(folds), "val_accuracy": accuracy, "val_log_loss": log_loss, "mean": mean, "std": std,
          "seconds": round(time.perf_counter() - started, 2)}
    if computed:
        cv["features_computed"] = computed  # per fold: 0 after the first, whose store the others read
    return cv


def _report(metrics: dict, splits: Splits, path: Path) -> None:
    if metrics["skipped"]:
        skipped = metrics["skipped"]
        log.warning(f"skipped {len(skipped)} unreadable image(s): " + "; ".join(skipped[:5])
                    + (f"; and {len(skipped) - 5} more (all listed in metrics.json)" if len(skipped) > 5 else ""))
    split = splits.score_split
    log.info(format_metrics(metrics[split], f"{split} ({splits.origins[split]})"))
    for line in trust_lines(metrics):
        log.info(line)
    log.info(f"run saved to {path} ({metrics['seconds']:.1f} s)")


def score_splits(clf: ImageClassifier, splits: Splits, tta: bool = False) -> tuple[dict, tuple]:
    """Metrics on val and test (with `tta`, test-time augmented), and on train where that is
    cheap (cached features), with the score split's per-image record; and the score split's
    (readable images, labels, probabilities) for the report's gallery."""
    metrics = {"score_split": splits.score_split, "strategy": clf.config_.strategy, "tta": tta, "splits": {},
               "fit": dict(clf.fit_info_)}
    skipped = list(clf.skipped_)
    names = clf.class_names()
    held_out = ([], np.zeros(0, int), np.zeros((0, len(names))))
    # An auto model chose (and may have refitted) on val: its score there would flatter it.
    chose_on_val = hasattr(clf, "plan_")
    cached = strategy(clf.config_.strategy).cached_features
    for name, part in splits.items():
        if (name == "train" and not cached) or (name == "val" and chose_on_val):
            metrics["splits"][name] = {"images": len(part), "from": splits.origins.get(name, "")}
            if name == "val" and chose_on_val:
                metrics["splits"][name]["not_scored"] = "auto chose on it (and refitted on it where it could)"
            continue
        proba, ok, failures = clf.predict_proba_readable(part.images, tta and name != "train")
        if name == "test":
            skipped += [str(f) for f in failures]
        metrics["splits"][name] = {"images": len(part), "readable": int(ok.sum()),
                                   "from": splits.origins.get(name, "")}
        metrics[name] = compute_metrics(part.labels[ok], proba, names)
        if name == splits.score_split:
            held_out = ([im for im, good in zip(part.images, ok) if good], part.labels[ok], proba)
            # per image, for compare's paired test of two configs on the same images
            metrics["predictions"] = prediction_record(name, [im.name for im in held_out[0]], *held_out[1:])
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


def demo(out: str = "runs", progress: bool = True, **options) -> Run:
    """The embedded default: the packaged offline backbone on scikit-learn's digits, with
    `features` (a minute; train's default, auto, takes up to its budget)."""
    options.setdefault("strategy", "features")
    return train("digits", out=out, name=options.pop("name", "demo-digits"), progress=progress, **options)
