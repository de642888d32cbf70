"""ImageClassifier: the scikit-learn-shaped estimator behind every command."""

from __future__ import annotations

import difflib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_model, save_model

from . import __version__
from .config import RunConfig
from .data.decode import UnreadableImage, decode
from .data.loader import TensorBatches, readable
from .data.sources import ImageRef, ImageSet, load_source
from .distributed import World
from .engine import Phase, Trainer
from .errors import TransferlabError
from .feature_classifiers import fit_logistic
from .features import Extracted, FeatureStore, default_cache_dir, extract_features, extractor_key
from .inference import predict_pixels
from .models.backbones import create_backbone, feature_dim
from .models.heads import build_head, parse_head
from .models.network import Network
from .models.preprocess import Preprocess
from .models.weights import WeightsInfo
from .models.tapped import bilinear_network
from .runs import atomic_dir, read_run_file
from .strategies import resolve
from .training import build_network, fit_network, head_only_settings, resolve_device

log = logging.getLogger("transferlab")
MODEL_FORMAT = 1
OPTIONS = tuple(RunConfig().model_options())


class ImageClassifier:
    """A pretrained backbone plus a head, fitted to labelled images.

    Keyword arguments are the run options (the same names as the command line and config.yaml,
    e.g. backbone, head, unfreeze, lr). They are stored as given (scikit-learn's convention);
    `fit` learns `classes_`, `network_`, `preprocess_`, `weights_`, `config_` (every option as
    resolved by the strategy), `history_` and `fit_info_`.
    """

    def __init__(self, strategy: str = "features", backbone: str | None = None, progress: bool = True,
                 **options):
        defaults = RunConfig()
        for key in options:
            if key not in OPTIONS:
                close = difflib.get_close_matches(key, OPTIONS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise TransferlabError(f"ImageClassifier: unknown option '{key}'{hint}")
        self.strategy = strategy
        self.backbone = backbone
        self.progress = progress
        for key in OPTIONS:
            if key not in ("strategy", "backbone"):
                setattr(self, key, options.get(key, getattr(defaults, key)))

    def options(self) -> dict:
        return {k: getattr(self, k) for k in OPTIONS}

    # -- fitting -----------------------------------------------------------------------------

    def fit(self, train, val=None, *, run_dir: str | os.PathLike | None = None,
            resume: dict | None = None, reserve_images: int = 0,
            started: float | None = None) -> "ImageClassifier":
        """Fit on `train` (an ImageSet, or a folder/CSV/'digits'); `val` guides choices only.

        Without `val`, choices are made on the training data alone (cross-validation for
        logistic regression, a held-back slice of train for a trained head or network).
        `run_dir` receives a checkpoint after every epoch; `resume` is a checkpoint to continue.
        `reserve_images`: how many images will be scored after fitting, so a --budget leaves time;
        `started`: when the budget's clock started (default: now).
        """
        started = started or time.perf_counter()
        cfg = resolve(RunConfig.from_dict(self.options(), origin="ImageClassifier"))
        train = self._as_imageset(train, "train")
        val = self._as_imageset(val, "val", train.classes) if val is not None else None
        self.classes_ = list(train.classes)
        self.config_ = cfg
        if cfg.strategy == "features":
            self._fit_features(cfg, train, val)
        else:
            self._fit_network(cfg, train, val, run_dir, resume, reserve_images, started)
        self.network_.eval()
        return self

    def _fit_network(self, cfg: RunConfig, train: ImageSet, val: ImageSet | None, run_dir, resume,
                     reserve_images: int, started: float) -> None:
        network, pre, self.weights_ = build_network(cfg, len(self.classes_))
        train, failed = readable(train, pre, cfg.batch_size)
        skipped = [str(f) for f in failed]
        if val is None:
            train, val = _hold_back(train, cfg.seed)
        else:
            val, failed = readable(val, pre, cfg.batch_size)
            skipped += [str(f) for f in failed]
        self.skipped_ = skipped
        result, self.preprocess_, path = fit_network(network, cfg, pre, train, val, run_dir and Path(run_dir),
                                                     resume, self.progress, reserve_images, started)
        self.network_ = network
        self.history_ = result.history
        fit_seconds = time.perf_counter() - started
        self.fit_info_ = {"path": path, "best_epoch": result.best_epoch, f"best_{cfg.monitor}": result.best_value,
                          "phases": result.phases, "images_trained": result.images_trained,
                          "fit_seconds": round(fit_seconds, 2), "train_seconds": round(result.seconds_training, 2),
                          "train_images_per_second": round(result.images_trained / max(fit_seconds, 1e-9), 2)}
        if len(result.replicas) > 1:
            # Data-parallel: the ranks' final weights, which DDP must have kept identical.
            self.fit_info_.update(ranks=len(result.replicas), rank_weight_digests=result.replicas,
                                  ranks_identical=len(set(result.replicas)) == 1)

    def _fit_features(self, cfg: RunConfig, train: ImageSet, val: ImageSet | None) -> None:
        backbone, self.preprocess_, self.weights_ = create_backbone(cfg.backbone, cfg.weights,
                                                                    cfg.image_size, cfg.seed)
        torch.manual_seed(cfg.seed)
        head = build_head(cfg.head, feature_dim(backbone), len(self.classes_), cfg.dropout)
        self.network_ = Network(backbone, head, self.preprocess_.mean, self.preprocess_.std).eval()
        ex_train = self._features(train.images, "train features")
        y_train = train.labels[ex_train.ok]
        extracted = [ex_train]
        x_val = y_val = None
        if val is not None:
            ex_val = self._features(val.images, "val features")
            x_val, y_val = ex_val.features, val.labels[ex_val.ok]
            extracted.append(ex_val)
        self.skipped_ = [str(f) for ex in extracted for f in ex.failures]
        self.feature_counts_ = {"computed": sum(ex.computed for ex in extracted),
                                "cached": sum(ex.cached for ex in extracted)}
        self.history_ = []
        if parse_head(cfg.head)[0] == "linear":
            self.fit_info_ = fit_logistic(head, ex_train.features, y_train, x_val, y_val,
                                          len(self.classes_), cfg.seed)
            return
        x_train = ex_train.features
        if x_val is None:
            x_train, y_train, x_val, y_val = _hold_back_arrays(x_train, y_train, cfg.seed)
        # One process's work even under torchrun (the features strategy runs on rank 0 alone).
        trainer = Trainer(head, head_only_settings(cfg), progress=self.progress, world=World())
        phase = Phase("head", cfg.epochs, [([n for n, _ in head.named_parameters()], cfg.lr)])
        result = trainer.fit([phase], TensorBatches(torch.from_numpy(x_train), torch.from_numpy(y_train),
                                                    cfg.batch_size, shuffle=True),
                             TensorBatches(torch.from_numpy(x_val), torch.from_numpy(y_val), 256))
        head.eval()
        self.history_ = result.history
        self.fit_info_ = {"classifier": "mlp head", "best_epoch": result.best_epoch}

    # -- prediction --------------------------------------------------------------------------

    def predict_proba(self, images) -> np.ndarray:
        """Class probabilities, one row per image; unreadable images are an error naming them."""
        self._check_fitted()
        refs = self._as_imageset(images, "images", allow_unlabelled=True).images
        proba, ok, failures = self.predict_proba_readable(refs)
        if failures:
            raise TransferlabError(f"cannot read {len(failures)} image(s): {failures[0]}"
                                   + (f" and {len(failures) - 1} more" if len(failures) > 1 else ""))
        return proba

    def predict(self, images) -> np.ndarray:
        """The most probable class name for each image."""
        proba = self.predict_proba(images)
        return np.asarray(self.classes_)[proba.argmax(1)]

    def score(self, images, y=None) -> float:
        """Accuracy on the readable images; `y` as class names or indices (optional for ImageSets)."""
        self._check_fitted()
        data = self._as_imageset(images, "images", self.classes_, allow_unlabelled=y is not None)
        labels = data.labels if y is None else self._label_indices(y)
        proba, ok, _ = self.predict_proba_readable(data.images)
        return float((proba.argmax(1) == labels[ok]).mean())

    def predict_proba_readable(self, images: list[ImageRef]) -> tuple[np.ndarray, np.ndarray, list]:
        """(probabilities of the readable images, mask of readable images, the failures)."""
        self._check_fitted()
        if self.strategy == "features" and self.feature_cache:
            # The backbone is the untouched pretrained one: its cached features are valid.
            ex = self._features(images, "features")
            with torch.inference_mode():
                logits = self.network_.head(torch.from_numpy(ex.features))
            return torch.softmax(logits, 1).numpy(), ex.ok, ex.failures
        device = resolve_device(getattr(self, "device", "cpu"))
        proba, ok, failures = predict_pixels(self.network_, images, self.preprocess_, self.batch_size,
                                             device, self.progress)
        self.network_.to("cpu")
        return proba, ok, failures

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
        directory.mkdir(parents=True, exist_ok=True)
        # Write beside, then rename: a crash never leaves a half-written model file.
        save_model(self.network_, str(directory / ".model.safetensors.tmp"))
        os.replace(directory / ".model.safetensors.tmp", directory / "model.safetensors")
        tmp = directory / ".model.json.tmp"
        tmp.write_text(json.dumps(self._model_spec(), indent=2) + "\n")
        os.replace(tmp, directory / "model.json")

    def _model_spec(self) -> dict:
        cfg = self.config_
        return {
            "format": MODEL_FORMAT, "transferlab_version": __version__,
            "backbone": cfg.backbone, "strategy": cfg.strategy, "head": cfg.head, "dropout": cfg.dropout,
            "num_features": (self.network_.head.dim if cfg.strategy == "bilinear"
                             else feature_dim(self.network_.backbone)), "image_size": self.preprocess_.input_size,
            "classes": self.classes_, "preprocess": self.preprocess_.to_dict(),
            "weights": vars(self.weights_), "params": cfg.model_options(),
        }

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ImageClassifier":
        """Rebuild a saved classifier; needs no network and no pretrained weights file."""
        import timm

        from .models.scratch import SCRATCH_MODELS, create_scratch

        directory = Path(directory)
        if (directory / "config.yaml").is_file() and not (directory / "model.json").is_file():
            raise TransferlabError(f"run '{directory}' has not finished (no model.json): continue it with "
                                   f"`transferlab train --resume {directory}`")
        spec = read_run_file(directory, "model.json")
        if spec.get("format") != MODEL_FORMAT:
            raise TransferlabError(f"'{directory}/model.json' has format {spec.get('format')}, this "
                                   f"transferlab reads format {MODEL_FORMAT}: upgrade transferlab")
        clf = cls(**spec["params"])
        clf.config_ = RunConfig.from_dict(spec["params"], origin=str(directory / "model.json"))
        if spec["backbone"] in SCRATCH_MODELS:
            backbone = create_scratch(spec["backbone"], spec["image_size"])
        else:
            backbone = timm.create_model(spec["backbone"], pretrained=False)
            backbone.reset_classifier(0)
        clf.classes_ = list(spec["classes"])
        clf.preprocess_ = Preprocess.from_dict(spec["preprocess"])
        clf.weights_ = WeightsInfo(**spec["weights"])
        mean, std = clf.preprocess_.mean, clf.preprocess_.std
        if clf.config_.strategy == "bilinear":
            net2 = None
            if clf.config_.backbone2:
                net2 = timm.create_model(clf.config_.backbone2, pretrained=False)
                net2.reset_classifier(0)
            # The second backbone's renormalisation is a saved buffer: any value is overwritten.
            clf.network_ = bilinear_network(clf.config_, backbone, net2, (mean, std, mean, std), mean, std,
                                            len(clf.classes_))
        else:
            head = build_head(spec["head"], spec["num_features"], len(clf.classes_), spec["dropout"])
            clf.network_ = Network(backbone, head, mean, std)
        load_model(clf.network_, str(directory / "model.safetensors"), strict=True)
        clf.network_.eval()
        clf.fit_info_, clf.skipped_, clf.history_ = {}, [], []
        return clf

    # -- helpers -----------------------------------------------------------------------------

    def _features(self, images: list[ImageRef], desc: str) -> Extracted:
        key = extractor_key(self.config_.backbone, self.weights_.identity, self.preprocess_)
        cache = None
        if self.feature_cache:
            cache = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
        if getattr(self, "_store_key", None) != (key, cache):
            self._store, self._store_key = FeatureStore.for_extractor(key, cache), (key, cache)
        return extract_features(self.network_, images, self.preprocess_, self._store,
                                self.batch_size, progress=self.progress, desc=desc)

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise TransferlabError("this ImageClassifier is not fitted yet: call fit() or load() first")

    def _label_indices(self, y) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes_)}
        y = list(y)
        if all(isinstance(v, (int, np.integer)) for v in y):
            return np.asarray(y, dtype=np.int64)
        unknown = sorted({str(v) for v in y} - set(index))
        if unknown:
            raise TransferlabError(f"labels {unknown[:5]} are not classes of this model ({self.classes_})")
        return np.array([index[str(v)] for v in y], dtype=np.int64)

    def _as_imageset(self, data, what: str, classes: list[str] | None = None,
                     allow_unlabelled: bool = False) -> ImageSet:
        """Accept an ImageSet, a folder/CSV/'digits', or a list of paths, PIL images or arrays."""
        if isinstance(data, ImageSet):
            images = data
        elif isinstance(data, (str, os.PathLike)):
            images = load_source(data).images
        elif allow_unlabelled and isinstance(data, (list, tuple, np.ndarray)):
            return ImageSet([_ref(x, i) for i, x in enumerate(data)], np.zeros(len(data)),
                            list(self.classes_) if hasattr(self, "classes_") else ["?"])
        else:
            raise TransferlabError(f"{what}: expected an ImageSet, a folder, a .csv or 'digits', "
                                   f"got {type(data).__name__}")
        if classes is not None:
            images = align_classes(images, classes, what)
        return images


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


def align_classes(images: ImageSet, classes: list[str], what: str) -> ImageSet:
    """Relabel `images` to `classes`' order; refuse class names the model does not know or lacks."""
    if list(images.classes) == list(classes):
        return images
    missing, extra = sorted(set(classes) - set(images.classes)), sorted(set(images.classes) - set(classes))
    if missing or extra:
        parts = ([f"missing {', '.join(map(repr, missing))}"] if missing else []) + (
            [f"unknown {', '.join(map(repr, extra))}"] if extra else [])
        raise TransferlabError(
            f"{what}: class names do not match the model's ({'; '.join(parts)}); the model knows "
            f"{', '.join(classes)}: give data with exactly those class folders or labels")
    index = {c: i for i, c in enumerate(classes)}
    remap = np.array([index[c] for c in images.classes])
    return ImageSet(images.images, remap[images.labels], list(classes), images.name)


def _held_mask(y: np.ndarray, seed: int, fraction: float = 0.15) -> np.ndarray:
    """Per class, mark `fraction` (at least one, never the last) to hold back for early stopping."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        if len(members) > 1:
            held[rng.choice(members, max(1, int(round(fraction * len(members)))), replace=False)] = True
    return held


def _hold_back(images: ImageSet, seed: int) -> tuple[ImageSet, ImageSet]:
    held = _held_mask(images.labels, seed)
    return images.subset(np.flatnonzero(~held)), images.subset(np.flatnonzero(held))


def _hold_back_arrays(x: np.ndarray, y: np.ndarray, seed: int):
    held = _held_mask(y, seed)
    return x[~held], y[~held], x[held], y[held]
