"""ImageClassifier: the scikit-learn estimator behind every command."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from PIL import Image
from sklearn.base import BaseEstimator, ClassifierMixin

from .common.atomic import atomic_dir, write_json
from .common.paths import cache_root
from .config import FitOptions, RunConfig
from .data.cache import readable
from .data.decode import UnreadableImage, decode
from .data.sources import check_classes, load_source
from .data.split import stratified_cut
from .data.types import ImageRef, ImageSet
from .errors import TransferlabError
from .features.extract import Extracted
from .features.network_features import network_features
from .features.logistic import fit_logistic, out_of_fold
from .inference.probabilities import predict_pixels
from .models import saved
from .models.factory import ModelSpec, build_model
from .models.heads import parse_head
from .training.callbacks import Budget, Callback
from .trust.calibration import apply, fit_calibration
from .trust.unknown import UNKNOWN, Embedding, fit_detector, load_detector
from .training.features_head import fit_head
from .training.fit import check_sizes, fit_network, resolve_device
from .training.lr_find import SUGGESTION, LRFindResult, LRSweep, suggest
from .strategy_registry import strategy
from .training.strategies import RECIPES, meta_estimator, phases, resolve

log = logging.getLogger("transferlab")

HELD_BACK = 0.15  # of each class, for early stopping when fit gets no validation data


@dataclass(kw_only=True, eq=False, repr=False)
class ImageClassifier(ClassifierMixin, BaseEstimator, FitOptions):
    """A pretrained backbone plus a head, fitted to labelled images.

    The parameters are the options of `transferlab train` (config.py's FitOptions, the same
    names as on the command line and in config.yaml), plus `progress`. They are stored as given;
    `fit` resolves them with the strategy's recipe and learns `classes_`, `network_`,
    `preprocess_`, `weights_`, `spec_`, `config_` (every option as resolved), `history_`,
    `skipped_` and `fit_info_`.
    """

    progress: bool = True

    # -- fitting -----------------------------------------------------------------------------

    def fit(self, X, y=None, *, val=None, callbacks: Sequence[Callback] | None = None,
            calibration: dict | None = None) -> "ImageClassifier":
        """Fit on `X`: an ImageSet, a folder, a .csv or 'digits', or a list of image paths (PIL
        images, arrays) with their labels `y`. `val` (the same kinds; labels from the set itself)
        guides choices only; without it, logistic regression is tuned by cross-validation and a
        trained head or network holds back part of each class for early stopping.

        `callbacks` see every phase, epoch and batch of training (training/callbacks.py); a
        Budget among them replaces the one the `budget` parameter would make.

        After the fit, the network's logits are scaled to calibrated probabilities, fitted on
        images it did not train on (`val`, the held-back images, or out-of-fold over X);
        `calibration` (what `calibrate` returned for another fit of the same recipe, on images
        this one trains on) is used instead of fitting one.
        """
        meta = meta_estimator(self.strategy)
        if meta is not None:  # auto: a search over classifiers, held as `search_`; its model predicts
            search = meta(**self._fit_options(), progress=self.progress).fit(X, y, val=val, callbacks=callbacks)
            self._learned({"search_": search})
            return self
        # Fitted on a fresh copy, whose learned state becomes this one's only once the fit has
        # succeeded: a fit that raises leaves this classifier as it was.
        work = ImageClassifier(**self._fit_options(), progress=self.progress)
        work.__dict__["_stores"] = self.__dict__.setdefault("_stores", {})
        work._fit(X, y, val, callbacks, calibration=calibration)
        self._learned({k: v for k, v in vars(work).items() if k.endswith("_")})
        return self

    def _learned(self, state: dict) -> None:
        """Replace the learned state (every attribute ending in `_`) with `state`."""
        for name in [k for k in vars(self) if k.endswith("_") and not k.endswith("__")]:
            del self.__dict__[name]
        self.__dict__.update(state)

    def _fit(self, X, y, val, callbacks, cfg: RunConfig | None = None, start: "ImageClassifier | None" = None,
             calibration: dict | None = None) -> None:
        """The fit, on this (fresh) object. `cfg`: the options already resolved and checked;
        `start`: a fitted classifier whose network (copied) training starts from. An LRSweep among
        the callbacks makes it the learning-rate sweep: the first phase that trains, swept, no
        validation (training/lr_find.py)."""
        started = time.perf_counter()
        cfg = cfg or resolve(RunConfig.from_dict(self._fit_options(), origin="ImageClassifier"))
        train, self.classes_ = training_set(X, y)
        if val is not None:
            val = align_classes(labelled_set(val, None, "val")[0], train.classes, "val")
        callbacks = list(callbacks or [])
        if cfg.budget is not None and not any(isinstance(c, Budget) for c in callbacks):
            callbacks.append(Budget(cfg.budget, started))
        self.config_ = cfg
        if start is not None:
            self.spec_, self.preprocess_, self.weights_ = start.spec_, start.preprocess_, start.weights_
            self.network_ = copy.deepcopy(start.network_)
        else:
            self.spec_ = ModelSpec.from_options(cfg.to_dict(), len(train.classes))
            built = build_model(self.spec_)
            self.network_, self.preprocess_, self.weights_ = built.network, built.preprocess, built.weights
        found = None
        if cfg.lr == "find":
            found = self._sweep(cfg, train, LRSweep())
            cfg = self.config_ = replace(cfg, lr=found.suggestion)
            log.info(f"lr find: {found.suggestion:.3g} (the sweep's {SUGGESTION})")
        if start is not None:  # trained further: the scaling fitted to its old logits no longer holds
            self.spec_ = replace(self.spec_, calibration=None)
            self.network_.calibrate.set(None)
        if strategy(cfg.strategy).cached_features:
            held_out = self._fit_features(cfg, train, val, callbacks, out_of_fold_ok=calibration is None)
        else:
            held_out = self._fit_network(cfg, train, val, callbacks, started)
        if found is not None:
            self.fit_info_["lr_find"] = found.to_dict()
        self.network_.eval()
        if _sweep_in(callbacks) is not None:
            return
        if cfg.keep_known:
            seen = train if val is None else ImageSet(train.images + val.images,
                                                      np.concatenate([train.labels, val.labels]), train.classes)
            self.unknown_ = fit_detector(seen.images, seen.labels, self.preprocess_, self.embedding(),
                                         cfg.keep_known, cfg.seed)
        if calibration is not None:
            self.set_calibration(calibration)
        elif held_out is not None:
            self.calibrate(*held_out, seed=cfg.seed)
        if held_out is not None and val is not None and held_out[2] == "val" and len(held_out[1]) == len(val):
            # The val images' calibrated probabilities, so that scoring them costs no second pass.
            self.val_proba_ = apply(held_out[0], self.spec_.calibration)

    def calibrate(self, log_proba: np.ndarray, labels: np.ndarray, fitted_on: str = "val", seed: int = 0) -> dict:
        """Fit the scaling of this model's logits (a temperature, and class biases where they help)
        to images it did not train on: `log_proba`, its uncalibrated log-probabilities (or
        logits) of them, and their `labels`. The network applies it from then on, and so does
        everything that loads the saved model. Returns what was fitted (also in fit_info_)."""
        self._check_fitted()
        fitted = fit_calibration(log_proba, labels, seed, fitted_on)
        self.set_calibration(fitted)
        return fitted

    def set_calibration(self, calibration: dict | None) -> None:
        """Use `calibration` (what `calibrate` fitted, perhaps for another fit of this model's
        recipe) from now on; None removes it."""
        self.spec_ = replace(self.spec_, calibration=calibration)
        self.network_.calibrate.set(calibration)
        self.fit_info_["calibration"] = calibration

    def lr_find(self, X, y=None, *, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200
                ) -> LRFindResult:
        """Sweep the learning rate exponentially from `start_lr` to `end_lr` over `steps` steps of
        the first phase that would train (on `X`, as `fit` takes it), on a copy of the network:
        the fitted one when there is one, else a fresh one. Nothing is kept. Returns the rates, the
        smoothed losses and the suggested rates (`.suggestion` is what `lr='find'` uses;
        `.plot(path)` draws them)."""
        if not (0 < start_lr < end_lr) or steps < 10:
            raise TransferlabError(f"lr_find: give 0 < start_lr < end_lr and at least 10 steps "
                                   f"(got {start_lr}, {end_lr}, {steps})")
        cfg = resolve(RunConfig.from_dict({**self._fit_options(), "lr": "find"}, origin="ImageClassifier"))
        train, _ = training_set(X, y)
        return self._sweep(cfg, train, LRSweep(start_lr, end_lr, steps))

    def _sweep(self, cfg: RunConfig, train: ImageSet, sweep: LRSweep) -> LRFindResult:
        """The sweep: a fit of a copy with the LRSweep callback, from this classifier's network
        when it has one (else a fresh one); the copy is dropped."""
        probe = ImageClassifier(**self._fit_options(), progress=self.progress)
        # The sweep sets the rates itself; no budget ends it.
        swept = replace(cfg, lr=RECIPES[cfg.strategy]["lr"], budget=None)
        probe._fit(train, None, None, [sweep], swept, start=self if hasattr(self, "network_") else None)
        try:
            suggestions = suggest(sweep.rates, sweep.losses)
        except ValueError as err:
            raise TransferlabError(f"lr find: {err} (the loss diverged at once): give a lower start rate "
                                   "or more training images") from None
        return LRFindResult(sweep.rates, sweep.losses, sweep.raw, sweep.phase, suggestions)

    def _fit_options(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(FitOptions)}

    def _fit_network(self, cfg: RunConfig, train: ImageSet, val: ImageSet | None, callbacks: list,
                     started: float) -> tuple | None:
        """Train the network; returns (log-probabilities, labels, what they are) of the images
        held out from its training (the val images), for its calibration."""
        sweep = _sweep_in(callbacks)
        if sweep is not None:
            callbacks = []
        phases(cfg, self.network_)  # --unfreeze beyond the backbone's stages fails before decoding
        check_sizes(cfg, self.preprocess_)
        decoding = time.perf_counter()
        train, failed = readable(train, self.preprocess_, cfg.batch_size)
        skipped = [str(f) for f in failed]
        if val is None and sweep is None:  # a sweep validates nothing
            train, val = hold_back(train, cfg.seed)
        elif val is not None:
            val, failed = readable(val, self.preprocess_, cfg.batch_size)
            skipped += [str(f) for f in failed]
        decode_seconds = time.perf_counter() - decoding
        self.skipped_ = skipped
        result, self.preprocess_, plan = fit_network(self.network_, cfg, self.preprocess_, train, val,
                                                     self.progress, callbacks, sweep)
        self.history_ = result.history
        fit_seconds = time.perf_counter() - started
        self.fit_info_ = {"path": plan.describe(), "best_epoch": result.best_epoch,
                          f"best_{cfg.monitor}": result.best_value, "phases": result.phases,
                          "images_trained": result.images_trained, "fit_seconds": round(fit_seconds, 2),
                          "decode_seconds": round(decode_seconds, 2), "cache_seconds": round(plan.build_seconds, 2),
                          "train_seconds": round(result.seconds_training, 2),
                          "train_images_per_second": round(result.images_trained / max(fit_seconds, 1e-9), 2)}
        if len(result.replicas) > 1:
            # Data-parallel: the ranks' final weights, which DDP must have kept identical.
            self.fit_info_.update(ranks=len(result.replicas), rank_weight_digests=result.replicas,
                                  ranks_identical=len(set(result.replicas)) == 1)
        if val is None or sweep is not None:
            return None
        self.network_.eval()
        proba, ok, _ = self.predict_proba_readable(val.images)
        return (np.log(np.clip(proba, 1e-45, None)), val.labels[ok], "val") if ok.any() else None

    def _fit_features(self, cfg: RunConfig, train: ImageSet, val: ImageSet | None, callbacks: list,
                      out_of_fold_ok: bool = True) -> tuple | None:
        """Fit the head on cached features; returns the held-out log-probabilities (val's, or
        out-of-fold over train) and labels for its calibration."""
        sweep = _sweep_in(callbacks)
        if sweep is not None:
            callbacks = []
        extracted = [self._features(train.images, "train features")]
        x_train, y_train = extracted[0].features, train.labels[extracted[0].ok]
        x_val = y_val = None
        if val is not None:
            extracted.append(self._features(val.images, "val features"))
            x_val, y_val = extracted[1].features, val.labels[extracted[1].ok]
        self.skipped_ = [str(f) for ex in extracted for f in ex.failures]
        self.feature_counts_ = {"computed": sum(ex.computed for ex in extracted),
                                "cached": sum(ex.cached for ex in extracted)}
        self.history_ = []
        head = self.network_.head
        # The backbone's own seconds, and what they would have been in PyTorch: auto costs the
        # candidates that run there from them.
        frozen = {"frozen_seconds": round(sum(ex.forward_seconds for ex in extracted), 3),
                  "frozen_torch_seconds": round(sum(ex.torch_seconds for ex in extracted), 3)}
        if parse_head(cfg.head)[0] == "linear":
            fitting = time.perf_counter()
            self.fit_info_ = fit_logistic(head, x_train, y_train, x_val, y_val, len(train.classes), cfg.seed,
                                         cfg.logistic_c)
            self.fit_info_.update(classifier_seconds=round(time.perf_counter() - fitting, 3), **frozen)
            if x_val is not None:
                # Val alone: out-of-fold models, fitted on four fifths of train, are less sure than
                # the model fitted on all of it, and adding theirs made the digits demo's test ECE
                # 0.10 against 0.04 with val's alone (cifar10-small 0.043 against 0.032).
                return self._head_log_proba(x_val), y_val, "val"
            if not out_of_fold_ok:
                return None
            # No val: each training image's probabilities from the folds without it, at the chosen C.
            oof = out_of_fold(x_train, y_train, len(train.classes), self.fit_info_["C"], cfg.seed)
            return None if oof is None else (np.log(np.clip(oof, 1e-300, None)), y_train, "out-of-fold over train")
        if x_val is None and sweep is None:
            held = hold_back_mask(y_train, cfg.seed)
            x_train, y_train, x_val, y_val = x_train[~held], y_train[~held], x_train[held], y_train[held]
        self.history_, best_epoch = fit_head(head, cfg, x_train, y_train, x_val, y_val, self.progress, callbacks, sweep)
        self.fit_info_ = {"classifier": "mlp head", "best_epoch": best_epoch, **frozen}
        return None if x_val is None else (self._head_log_proba(x_val), y_val, "val")

    def _head_log_proba(self, features: np.ndarray) -> np.ndarray:
        self.network_.head.eval()
        with torch.inference_mode():
            return torch.log_softmax(self.network_.head(torch.from_numpy(features)).float(), 1).numpy()

    # -- prediction --------------------------------------------------------------------------

    def predict_proba(self, X, tta: bool = False) -> np.ndarray:
        """Class probabilities, one row per image; unreadable images are an error naming them.
        `tta`: the mean over each image's test-time views (centre and corner crops, mirrored)."""
        self._check_fitted()
        proba, ok, failures = self.predict_proba_readable(unlabelled_set(X, self.class_names()).images, tta)
        if failures:
            raise TransferlabError(f"cannot read {len(failures)} image(s): {failures[0]}"
                                   + (f" and {len(failures) - 1} more" if len(failures) > 1 else ""))
        return proba

    def predict(self, X, tta: bool = False, reject: bool = False) -> np.ndarray:
        """The most probable class for each image (as `classes_` holds them); with `reject`,
        "unknown" for an image beyond the unknown-image threshold (`unknown_score`)."""
        self._check_fitted()
        predicted = np.asarray(self.classes_)[self.predict_proba(X, tta).argmax(1)]
        if not reject:
            return predicted
        beyond = self.unknown_score(X) > self._detector().threshold
        return np.where(beyond, UNKNOWN, predicted.astype(object))

    def unknown_score(self, X) -> np.ndarray:
        """Each image's distance to its nearest training image (1 - cosine, in the packaged
        backbone's feature space): above `unknown_.threshold`, it is of no class the model knows."""
        self._check_fitted()
        images = unlabelled_set(X, self.class_names()).images
        distances, ok, failures = self._detector().score(images, self.embedding())
        if failures:
            raise TransferlabError(f"cannot read {len(failures)} image(s): {failures[0]}")
        return distances

    def _detector(self):
        detector = getattr(self, "unknown_", None)
        if detector is None:
            raise TransferlabError("this model has no unknown-image detector (fitted with keep_known=0, or saved "
                                   "by a transferlab before 0.9): fit it again to reject unknown images")
        return detector

    def embedding(self) -> Embedding:
        """Where the unknown-image detector's backbone runs and caches its features: this model's
        own settings."""
        cfg = self.config_
        return Embedding(resolve_device(cfg.device), cache_root(cfg.cache_dir) if cfg.feature_cache else None,
                         cfg.runtime, cfg.batch_size, self.progress, self.__dict__.setdefault("_stores", {}))

    def score(self, X, y=None, sample_weight=None) -> float:
        """Accuracy on the readable images; `y` as class names or indices (optional for an
        ImageSet, a folder or a .csv, whose labels are used)."""
        self._check_fitted()
        if y is None:
            data = align_classes(labelled_set(X, None, "X")[0], self.class_names(), "X")
            labels = data.labels
        else:
            data, labels = unlabelled_set(X, self.class_names()), self._label_indices(y)
        proba, ok, _ = self.predict_proba_readable(data.images)
        weights = None if sample_weight is None else np.asarray(sample_weight)[ok]
        return float(np.average(proba.argmax(1) == labels[ok], weights=weights))

    def predict_proba_readable(self, images: list[ImageRef], tta: bool = False
                               ) -> tuple[np.ndarray, np.ndarray, list]:
        """(probabilities of the readable images, mask of readable images, the failures)."""
        self._check_fitted()
        cfg = self.config_
        # No readable image (none given, or none could be read): no rows, one column per class.
        nothing = np.zeros((0, len(self.classes_)), np.float32)
        if not len(images):
            return nothing, np.zeros(0, bool), []
        if strategy(cfg.strategy).cached_features and cfg.feature_cache and not tta:
            # The backbone is the untouched pretrained one: its cached features are valid.
            ex = self._features(images, "features")
            if not ex.ok.any():
                return nothing, ex.ok, ex.failures
            with torch.inference_mode():
                logits = self.network_.classify(torch.from_numpy(ex.features))
            return torch.softmax(logits, 1).numpy(), ex.ok, ex.failures
        proba, ok, failures = predict_pixels(self.network_, images, self.preprocess_, cfg.batch_size,
                                             resolve_device(cfg.device), self.progress, tta, cfg.runtime,
                                             cache_root(cfg.cache_dir) if cfg.feature_cache else None)
        self.network_.to("cpu")
        return (proba if ok.any() else nothing), ok, failures

    # -- persistence -------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write model.safetensors and model.json (how to rebuild it) into `directory`."""
        self._check_fitted()
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()):
            if not overwrite:
                raise TransferlabError(f"'{directory}' exists and is not empty: choose another folder "
                                       "or pass overwrite=True")
            self.write_model_files(directory)
            return directory
        with atomic_dir(directory) as tmp:
            self.write_model_files(tmp)
        return directory

    def write_model_files(self, directory: Path) -> None:
        saved.save(directory, saved.SavedModel(self.network_, self.spec_, self.preprocess_, self.weights_,
                                               list(self.classes_), self.config_.model_options()))
        if getattr(self, "unknown_", None) is not None:
            self.unknown_.save(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ImageClassifier":
        """Rebuild a saved classifier; needs no network and no pretrained weights file."""
        model = saved.load(directory)
        # Options of other versions that this one does not know are left out.
        clf = cls.assemble(model.params, model.network, model.spec, model.preprocess, model.weights,
                           list(model.classes), origin=f"{directory}/model.json")
        clf.unknown_ = load_detector(directory)
        return clf

    @classmethod
    def assemble(cls, params: dict, network: nn.Module, spec: ModelSpec, preprocess, weights, classes: list,
                 fit_info: dict | None = None, skipped: list | None = None, origin: str = "ImageClassifier"
                 ) -> "ImageClassifier":
        """A fitted classifier from its parts (a saved run's, or an ensemble of fitted ones)."""
        params = {f.name: params[f.name] for f in fields(FitOptions) if f.name in params}
        clf = cls(**params)
        clf.config_ = RunConfig.from_dict(params, origin=origin, check_files=False)
        clf.network_, clf.spec_, clf.preprocess_ = network, spec, preprocess
        clf.weights_, clf.classes_ = weights, list(classes)
        clf.fit_info_, clf.skipped_, clf.history_ = dict(fit_info or {}), list(skipped or []), []
        return clf

    def __getattr__(self, name: str):
        # Fitted by a meta strategy (auto): the learned state is its model's.
        if name.endswith("_") and not name.startswith("__") and "search_" in self.__dict__:
            return getattr(self.__dict__["search_"], name)
        raise AttributeError(name)

    # -- helpers -----------------------------------------------------------------------------

    def _features(self, images: list[ImageRef], desc: str) -> Extracted:
        """The backbone's pooled features, cached (an ensemble's members each on its own)."""
        cfg = self.config_
        return network_features(self.network_, cfg.backbone, self.weights_, self.preprocess_, images, desc,
                                resolve_device(cfg.device), cache_root(cfg.cache_dir) if cfg.feature_cache else None,
                                cfg.runtime, cfg.feature_views, cfg.batch_size, self.progress,
                                self.__dict__.setdefault("_stores", {}))

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "network_")

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise TransferlabError("this ImageClassifier is not fitted yet: call fit() or load() first")

    def class_names(self) -> list[str]:
        return [str(c) for c in self.classes_]

    def _label_indices(self, y) -> np.ndarray:
        """Labels as positions in classes_: given as its values, as their names, or as positions."""
        y = np.asarray(y).tolist()
        for index in ({c: i for i, c in enumerate(self.classes_)}, {str(c): i for i, c in enumerate(self.classes_)}):
            if all(v in index for v in y):
                return np.array([index[v] for v in y], dtype=np.int64)
        if all(isinstance(v, int) and 0 <= v < len(self.classes_) for v in y):
            return np.asarray(y, dtype=np.int64)
        unknown = sorted({str(v) for v in y} - set(self.class_names()))
        raise TransferlabError(f"labels {unknown[:5]} are not classes of this model ({self.class_names()})")


# ---------------------------------------------------------------------------- image sets

def labelled_set(data, y, what: str) -> tuple[ImageSet, list]:
    """(the labelled images, the class values in label order) from an ImageSet, a folder, a .csv
    or 'digits' (labels from the data), or a list of images with labels `y`."""
    if isinstance(data, (ImageSet, str, os.PathLike)):
        if y is not None:
            hint = " (validation data goes in val=...)" if isinstance(y, (ImageSet, str, os.PathLike)) else ""
            raise TransferlabError(f"{what}: an image set, folder or .csv brings its own labels: pass no y{hint}")
        images = data if isinstance(data, ImageSet) else load_source(data).images
        return images, list(images.classes)
    if isinstance(data, (list, tuple, np.ndarray)):
        if y is None:
            raise TransferlabError(f"{what}: a list of images needs their labels: fit(images, labels)")
        values = np.asarray(y).tolist()
        if len(values) != len(data):
            raise TransferlabError(f"{what}: {len(data)} images but {len(values)} labels")
        try:
            classes = sorted(set(values))
        except TypeError:
            raise TransferlabError(f"{what}: labels mix types ({sorted({type(v).__name__ for v in values})}): "
                                   "give all labels as names or all as numbers") from None
        index = {c: i for i, c in enumerate(classes)}
        refs = [_ref(x, i) for i, x in enumerate(data)]
        return ImageSet(refs, [index[v] for v in values], [str(c) for c in classes]), classes
    raise TransferlabError(f"{what}: expected an ImageSet, a folder, a .csv, 'digits' or a list of images, "
                           f"got {type(data).__name__}")


def training_set(data, y) -> tuple[ImageSet, list]:
    """labelled_set for fitting: refused, as `train` refuses such data, when fewer than 2 classes
    have images (a list labelled with one name, an ImageSet of one class)."""
    images, classes = labelled_set(data, y, "X")
    present = [images.classes[i] for i in np.unique(images.labels)]
    if isinstance(data, (list, tuple, np.ndarray)):
        check_classes(present, "the labels given to fit (y)", how="images of each with their labels in y")
    else:
        check_classes(present, f"the images given to fit ('{images.name}')")
    return images, classes


def unlabelled_set(data, names: list[str]) -> ImageSet:
    """Images to predict: an ImageSet, a folder or .csv (its labels ignored), or a list of images."""
    if isinstance(data, (list, tuple, np.ndarray)):
        return ImageSet([_ref(x, i) for i, x in enumerate(data)], np.zeros(len(data)), names)
    return labelled_set(data, None, "images")[0]


def _ref(x, i: int) -> ImageRef:
    if isinstance(x, (str, os.PathLike)):
        return ImageRef.from_file(x)
    if isinstance(x, Image.Image):
        try:
            x = decode(x)
        except UnreadableImage as err:
            raise TransferlabError(f"image {i}: {err.reason}") from None
    if isinstance(x, np.ndarray):
        return ImageRef.from_array(x, f"image[{i}]")
    raise TransferlabError(f"image {i}: expected a path, a PIL image or a numpy array, got {type(x).__name__}")


def align_classes(images: ImageSet, classes: list[str], what: str, some: bool = False) -> ImageSet:
    """Relabel `images` to `classes`' order; refuse class names the model does not know, and
    (unless `some`: scoring on new images of some classes) classes it has that the data lacks."""
    if list(images.classes) == list(classes):
        return images
    missing, extra = sorted(set(classes) - set(images.classes)), sorted(set(images.classes) - set(classes))
    if some:
        missing = []
    if missing or extra:
        parts = ([f"missing {', '.join(map(repr, missing))}"] if missing else []) + (
            [f"unknown {', '.join(map(repr, extra))}"] if extra else [])
        raise TransferlabError(
            f"{what}: class names do not match the model's ({'; '.join(parts)}); the model knows "
            f"{', '.join(classes)}: give data whose class folders or labels are {'among' if some else 'exactly'} those")
    index = {c: i for i, c in enumerate(classes)}
    remap = np.array([index[c] for c in images.classes])
    return ImageSet(images.images, remap[images.labels], list(classes), images.name)


def write_fitted(model: ImageClassifier, folder: Path) -> None:
    """A finished auto candidate: its model files and what the run reports of its fit."""
    model.write_model_files(folder)
    fitted = {"fit_info": model.fit_info_, "history": model.history_, "skipped": model.skipped_,
              "feature_counts": getattr(model, "feature_counts_", None)}
    write_json(folder / "fitted.json", fitted)


def read_fitted(folder: Path) -> ImageClassifier:
    model = ImageClassifier.load(folder)
    fitted = json.loads((folder / "fitted.json").read_text(encoding="utf-8"))
    model.fit_info_, model.history_, model.skipped_ = fitted["fit_info"], fitted["history"], fitted["skipped"]
    if fitted["feature_counts"] is not None:
        model.feature_counts_ = fitted["feature_counts"]
    return model


def val_scores(model: ImageClassifier, val: ImageSet) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(accuracy, log loss, probabilities, readable mask) of a fitted model on the val images."""
    kept = getattr(model, "val_proba_", None)  # computed by its fit, for its calibration
    if kept is not None and len(kept) == len(val):
        proba, ok = kept, np.ones(len(val), bool)
    else:
        proba, ok, _ = model.predict_proba_readable(val.images)
    labels = val.labels[ok]
    if not len(labels):
        return 0.0, math.inf, proba, ok
    picked = np.clip(proba[np.arange(len(labels)), labels], 1e-15, 1.0)
    return float((proba.argmax(1) == labels).mean()), float(-np.log(picked).mean()), proba, ok


def _sweep_in(callbacks) -> LRSweep | None:
    return next((c for c in callbacks if isinstance(c, LRSweep)), None)


def hold_back_mask(labels: np.ndarray, seed: int) -> np.ndarray:
    return stratified_cut(labels, HELD_BACK, np.random.default_rng(seed))


def hold_back(images: ImageSet, seed: int) -> tuple[ImageSet, ImageSet]:
    held = hold_back_mask(images.labels, seed)
    return images.subset(np.flatnonzero(~held)), images.subset(np.flatnonzero(held))
