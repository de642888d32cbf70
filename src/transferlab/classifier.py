"""ImageClassifier: the scikit-learn-shaped estimator behind every command."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_model, save_model

from . import __version__
from .config import RunConfig
from .data.decode import UnreadableImage, decode
from .data.sources import ImageRef, ImageSet, load_source
from .engine import Phase
from .errors import TransferlabError
from .feature_classifiers import fit_logistic, fit_mlp
from .features import Extracted, FeatureStore, default_cache_dir, extract_features, extractor_key
from .models.backbones import create_backbone, feature_dim
from .models.heads import build_head, parse_head
from .models.network import Network
from .models.preprocess import Preprocess
from .models.weights import WeightsInfo
from .runs import atomic_dir, read_run_file

log = logging.getLogger("transferlab")
MODEL_FORMAT = 1
_DEFAULTS = RunConfig()


class ImageClassifier:
    """A pretrained backbone plus a head, fitted to labelled images.

    Arguments are stored untouched (scikit-learn's convention); `fit` learns `classes_`,
    `network_`, `preprocess_`, `weights_` and `fit_info_`.
    """

    def __init__(self, backbone: str = _DEFAULTS.backbone, strategy: str = _DEFAULTS.strategy,
                 weights: str = _DEFAULTS.weights, head: str = _DEFAULTS.head,
                 dropout: float = _DEFAULTS.dropout, epochs: int = _DEFAULTS.epochs,
                 patience: int = _DEFAULTS.patience, lr: float = _DEFAULTS.lr,
                 weight_decay: float = _DEFAULTS.weight_decay, batch_size: int = _DEFAULTS.batch_size,
                 image_size: int | None = _DEFAULTS.image_size, seed: int = _DEFAULTS.seed,
                 feature_cache: bool = _DEFAULTS.feature_cache, cache_dir: str | None = _DEFAULTS.cache_dir,
                 progress: bool = True):
        self.backbone = backbone
        self.strategy = strategy
        self.weights = weights
        self.head = head
        self.dropout = dropout
        self.epochs = epochs
        self.patience = patience
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.image_size = image_size
        self.seed = seed
        self.feature_cache = feature_cache
        self.cache_dir = cache_dir
        self.progress = progress

    # -- fitting -----------------------------------------------------------------------------

    def fit(self, train, val=None) -> "ImageClassifier":
        """Fit on `train` (an ImageSet, or a folder/CSV/'digits'); `val` guides choices only.

        Without `val`, choices are made on the training data alone (cross-validation for
        logistic regression, a held-back slice of train for an MLP head).
        """
        RunConfig(**{k: getattr(self, k) for k in RunConfig().model_options()}).validate()
        train = self._as_imageset(train, "train")
        val = self._as_imageset(val, "val", train.classes) if val is not None else None
        torch.manual_seed(self.seed)
        backbone, self.preprocess_, self.weights_ = create_backbone(
            self.backbone, self.weights, self.image_size, self.seed)
        self.classes_ = list(train.classes)
        head = build_head(self.head, feature_dim(backbone), len(self.classes_), self.dropout)
        self.network_ = Network(backbone, head, self.preprocess_.mean, self.preprocess_.std).eval()
        ex_train = self._features(train.images, "train features")
        y_train = train.labels[ex_train.ok]
        x_val = y_val = None
        extracted = [ex_train]
        if val is not None:
            ex_val = self._features(val.images, "val features")
            x_val, y_val = ex_val.features, val.labels[ex_val.ok]
            extracted.append(ex_val)
        self.skipped_ = [str(f) for ex in extracted for f in ex.failures]
        self.feature_counts_ = {"computed": sum(ex.computed for ex in extracted),
                                "cached": sum(ex.cached for ex in extracted)}
        kind, _ = parse_head(self.head)
        if kind == "linear":
            self.fit_info_ = fit_logistic(head, ex_train.features, y_train, x_val, y_val,
                                          len(self.classes_), self.seed)
        else:
            if x_val is None:
                x_train_, y_train_, x_val, y_val = _hold_back(ex_train.features, y_train, self.seed)
            else:
                x_train_, y_train_ = ex_train.features, y_train
            phase = Phase("head", self.epochs, self.lr, self.weight_decay, self.patience)
            self.fit_info_ = fit_mlp(head, x_train_, y_train_, x_val, y_val, phase,
                                     self.batch_size, self.seed, self.progress)
        self.network_.eval()
        return self

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
        if self.strategy == "features":
            ex = self._features(images, "features")
            with torch.inference_mode():
                logits = self.network_.head(torch.from_numpy(ex.features))
            return torch.softmax(logits, 1).numpy(), ex.ok, ex.failures
        raise NotImplementedError(self.strategy)

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
        (directory / "model.json").write_text(json.dumps(self._model_spec(), indent=2) + "\n")

    def _model_spec(self) -> dict:
        return {
            "format": MODEL_FORMAT, "transferlab_version": __version__,
            "backbone": self.backbone, "strategy": self.strategy, "head": self.head,
            "dropout": self.dropout, "num_features": feature_dim(self.network_.backbone),
            "classes": self.classes_, "preprocess": self.preprocess_.to_dict(),
            "weights": vars(self.weights_),
            "params": {k: getattr(self, k) for k in RunConfig().model_options()},
        }

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ImageClassifier":
        """Rebuild a saved classifier; needs no network and no pretrained weights file."""
        import timm

        directory = Path(directory)
        spec = read_run_file(directory, "model.json")
        if spec.get("format") != MODEL_FORMAT:
            raise TransferlabError(f"'{directory}/model.json' has format {spec.get('format')}, this "
                                   f"transferlab reads format {MODEL_FORMAT}: upgrade transferlab")
        clf = cls(**{**spec["params"], "progress": True})
        backbone = timm.create_model(spec["backbone"], pretrained=False)
        backbone.reset_classifier(0)
        clf.classes_ = list(spec["classes"])
        clf.preprocess_ = Preprocess.from_dict(spec["preprocess"])
        clf.weights_ = WeightsInfo(**spec["weights"])
        head = build_head(spec["head"], spec["num_features"], len(clf.classes_), spec["dropout"])
        clf.network_ = Network(backbone, head, clf.preprocess_.mean, clf.preprocess_.std)
        load_model(clf.network_, str(directory / "model.safetensors"), strict=True)
        clf.network_.eval()
        clf.fit_info_, clf.skipped_ = {}, []
        return clf

    # -- helpers -----------------------------------------------------------------------------

    def _features(self, images: list[ImageRef], desc: str) -> Extracted:
        key = extractor_key(self.backbone, self.weights_.identity, self.preprocess_)
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
            images = ImageSet([_ref(x, i) for i, x in enumerate(data)], np.zeros(len(data)),
                              list(self.classes_) if hasattr(self, "classes_") else ["?"])
            return images
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


def _hold_back(x: np.ndarray, y: np.ndarray, seed: int, fraction: float = 0.15):
    """Split features into (train, early-stopping) slices per class, when no val split was given."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        if len(members) > 1:
            held[rng.choice(members, max(1, int(round(fraction * len(members)))), replace=False)] = True
    return x[~held], y[~held], x[held], y[held]
