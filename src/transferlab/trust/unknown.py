"""Images of no known class: each image's distance (one minus the cosine) to its nearest training
image in the feature space of the packaged ImageNet backbone, against a threshold that keeps a
stated share of known images (chosen on held-out distances, never on test).

Measured on hymenoptera and cars43 with foreign images of the other sets and of cifar10-small
(Lite0 features): the nearest neighbour's distance separated them with AUROC 0.99 to 1.00, where
the class-conditional Gaussian (Mahalanobis) rejected 22% of cars as ants or bees and the
classifier's own confidence (maximum probability, energy) ranked cars and CIFAR images as *more*
familiar than the test images (AUROC 0.07 to 0.89). The embedder is the packaged Lite0 whatever
the run's backbone: every run has its weights offline, its ImageNet features are general (a
fine-tuned backbone's collapse towards its classes), and a features run's are already cached.

The detector takes the run's own input pixels and resizes them to its size inside the module, so
`predict`, `serve` and the exported graph (an extra output) compute the same distance."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn

from ..common.atomic import replacing, write_json
from ..data.types import ImageRef
from ..errors import TransferlabError
from ..features.extract import device_decoding, extractor_key, frozen_features
from ..models.factory import ModelSpec, build_model
from ..models.network import Network
from ..models.preprocess import Preprocess

EMBEDDER = "tf_efficientnet_lite0"
KEEP = 0.95           # the default share of known images kept
UNKNOWN = "unknown"   # what predict and serve answer for an image beyond the threshold
BANK_LIMIT = 10_000   # training images kept as neighbours (a stratified draw beyond it): 25 MB in float16
HELD_OUT_LIMIT = 5_000  # images whose held-out distance is read (a quantile needs no more; each costs a bank's products)
FORMAT = 1
JSON_FILE, BANK_FILE = "unknown.json", "unknown.safetensors"
# The trade-off the report shows: known images kept at each of these shares of held-out distances.
KEEP_GRID = (0.80, 0.85, 0.90, 0.95, 0.97, 0.99, 1.0)


class Resized(nn.Module):
    """A backbone fed the run's pixels resized to its own size (antialiased, the run's filter)."""

    def __init__(self, backbone: nn.Module, size: int, interpolation: str):
        super().__init__()
        self.backbone, self.size = backbone, int(size)
        self.mode = "bicubic" if interpolation == "bicubic" else "bilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode=self.mode, antialias=True, align_corners=False)
        return self.backbone(x)


class NearestDistance(nn.Module):
    """Pixels -> (distance to the nearest training image, whether it is beyond the threshold)."""

    def __init__(self, embedder: Network, bank: torch.Tensor, threshold: float):
        super().__init__()
        self.embedder = embedder
        self.register_buffer("bank", bank.float(), persistent=False)
        self.threshold = float(threshold)

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        return 1.0 - (F.normalize(features.float(), dim=1) @ self.bank.T).max(1).values

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.distance(self.embedder.features(pixels))
        return d, d > self.threshold


@dataclass
class UnknownDetector:
    """The fitted detector: the neighbours, the threshold and how it was chosen."""
    bank: np.ndarray          # (images, features) unit rows, float16
    threshold: float
    keep: float
    preprocess: Preprocess    # the run's input: what the detector is fed
    held_out: dict            # quantiles of the held-out distances (what the threshold was read from)
    images: int               # training images it was fitted on (the bank may hold fewer)
    embedder: str = EMBEDDER

    # -- scoring ------------------------------------------------------------------------------

    def module(self) -> NearestDistance:
        return NearestDistance(embedder_network(self.preprocess)[0],
                               torch.from_numpy(self.bank.astype(np.float32)), self.threshold).eval()

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Distances of embedder features (rows) to their nearest training image."""
        if not len(features):
            return np.zeros(0)
        e = _unit(features)
        bank = self.bank.astype(np.float32)
        return np.concatenate([1.0 - (e[i:i + 4096] @ bank.T).max(1) for i in range(0, len(e), 4096)])

    def score(self, images: list[ImageRef], settings: "Embedding") -> tuple[np.ndarray, np.ndarray, list]:
        """(distances of the readable images, mask of readable images, failures)."""
        ex = embed(images, self.preprocess, settings)
        return self.distances(ex.features), ex.ok, ex.failures

    def threshold_for(self, keep: float) -> float:
        return float(np.quantile(np.asarray(self.held_out["distances"]), keep, method="higher"))

    def to_dict(self) -> dict:
        return {"format": FORMAT, "embedder": self.embedder, "threshold": self.threshold, "keep": self.keep,
                "preprocess": self.preprocess.to_dict(), "images": self.images, "bank_size": int(len(self.bank)),
                "score": "1 - cosine similarity to the nearest training image (embedder features)",
                "threshold_from": "each training image's distance to its nearest other training image "
                                  "(held out from the neighbours it is compared with)",
                "held_out": {k: v for k, v in self.held_out.items() if k != "distances"}}

    # -- files --------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """The neighbours first, the description last (each whole or not at all)."""
        with replacing(directory / BANK_FILE) as tmp:
            save_file({"bank": torch.from_numpy(self.bank),
                       "held_out": torch.tensor(self.held_out["distances"], dtype=torch.float32)}, str(tmp))
        write_json(directory / JSON_FILE, self.to_dict())


@dataclass
class Embedding:
    """Where the embedder runs and where its features are cached (a classifier's settings)."""
    device: str = "cpu"
    cache: Path | None = None
    runtime: str = "auto"
    batch_size: int = 32
    progress: bool = False
    stores: dict | None = None


def embedder_network(pre: Preprocess, device: str = "cpu") -> tuple[Network, str, Preprocess]:
    """The packaged backbone fed pixels prepared as `pre` says (the run's), at its own size; the
    key its features are cached under; its own preprocessing."""
    built = build_model(ModelSpec(backbone=EMBEDDER, num_classes=None))
    net, own = built.network, built.preprocess
    name = EMBEDDER
    if pre.input_size != own.input_size:
        net = Network(Resized(net.backbone, own.input_size, pre.interpolation), nn.Identity(), own.mean, own.std,
                      pre.input_size)
        name = f"{EMBEDDER}@{own.input_size}"
    # The run's decoding, the embedder's normalisation: a run whose input is the embedder's own
    # (Lite0's 224 crop) shares the features a features run of Lite0 cached.
    key = extractor_key(name, built.weights.identity, replace(pre, mean=own.mean, std=own.std),
                        device_decoder=device_decoding(device, pre))
    return net.eval(), key, own


def embed(images: list[ImageRef], pre: Preprocess, settings: "Embedding"):
    """The embedder's features of `images`, prepared as `pre`, through the feature cache."""
    network, key, _ = embedder_network(pre, settings.device)
    # Resizing inside the network (antialiased) is not one of the ONNX ops the frozen pass can take.
    runtime = "torch" if isinstance(network.backbone, Resized) else settings.runtime
    return frozen_features(network, images, pre, key, settings.cache, runtime, settings.device,
                           settings.stores, batch_size=settings.batch_size, progress=settings.progress,
                           desc="unknown-image features")


def fit_detector(images: list[ImageRef], labels: np.ndarray, pre: Preprocess, settings: Embedding,
                 keep: float = KEEP, seed: int = 0) -> UnknownDetector | None:
    """The detector of a model fitted on `images` (every image it trained or chose on; none of
    test). Each image's distance to its nearest *other* image is a held-out distance: the
    threshold is their `keep` quantile. None when fewer than 2 images could be read."""
    ex = embed(images, pre, settings)
    e, y = _unit(ex.features), np.asarray(labels)[ex.ok]
    if len(e) < 2:
        return None
    held = _leave_one_out(e, _draw(y, HELD_OUT_LIMIT, seed))
    keepers = _draw(y, BANK_LIMIT, seed)
    quantiles = {f"{q:g}": round(float(np.quantile(held, q, method="higher")), 6) for q in KEEP_GRID}
    return UnknownDetector(e[keepers].astype(np.float16), float(np.quantile(held, keep, method="higher")), keep,
                           pre, {"distances": held.astype(np.float32).tolist(), "quantiles": quantiles,
                                 "images": int(len(held))}, int(len(e)))


def load_detector(directory: str | Path) -> UnknownDetector | None:
    """A run's detector; None for runs made before it existed. A damaged one is an error naming
    the file (never trusted half-read)."""
    directory = Path(directory)
    described, bank_file = directory / JSON_FILE, directory / BANK_FILE
    if not described.is_file():
        return None
    try:
        d = json.loads(described.read_text(encoding="utf-8"))
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')}")
        # Read whole, not memory-mapped: a mapped file stays busy (a run folder could not be unmounted).
        tensors = load(bank_file.read_bytes())
        bank, held = tensors["bank"].numpy(), tensors["held_out"].numpy()
        if bank.ndim != 2 or len(bank) != d["bank_size"] or not np.isfinite(bank).all():
            raise ValueError("the neighbours do not match their description")
        return UnknownDetector(bank, float(d["threshold"]), float(d["keep"]), Preprocess.from_dict(d["preprocess"]),
                               {**d["held_out"], "distances": held.tolist()}, int(d["images"]), d["embedder"])
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise TransferlabError(f"'{directory}/{JSON_FILE}' or '{BANK_FILE}' is damaged ({type(err).__name__}: "
                               f"{str(err)[:80]}): restore them from a copy of the run, or train again") from None


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _leave_one_out(e: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The distance of each of `rows` to its nearest other row of `e`."""
    out = np.empty(len(rows), np.float32)
    for i in range(0, len(rows), 2048):
        part = rows[i:i + 2048]
        sims = e[part] @ e.T
        sims[np.arange(len(part)), part] = -np.inf
        out[i:i + 2048] = 1.0 - sims.max(1)
    return out


def _draw(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Every row, or a seeded draw of `limit` in proportion to the classes."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:max(1, round(limit * np.mean(labels == c)))]
              for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))
