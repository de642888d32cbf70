"""A fitted network on disk: model.safetensors (the weights, never a pickle) and model.json (the
ModelSpec that built it, classes, preprocessing, weights' origin, the run options). Loading
rebuilds the network with the factory from that very spec, so it cannot drift from training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from .. import __version__
from ..common.atomic import make_dir, replacing, write_json
from ..common.run_files import read_run_file
from ..errors import TransferlabError
from .factory import ModelSpec, build_model
from .network import Network
from .preprocess import Preprocess
from .weights import WeightsInfo

MODEL_FORMAT = 1
MODEL_FILE, SPEC_FILE = "model.safetensors", "model.json"


@dataclass
class SavedModel:
    network: Network
    spec: ModelSpec
    preprocess: Preprocess
    weights: WeightsInfo
    classes: list
    params: dict  # the run options it was fitted with


def save(directory: Path, model: SavedModel) -> None:
    """Write both files (each whole or not at all); the weights first, the description last."""
    make_dir(directory)
    with replacing(directory / MODEL_FILE) as tmp:
        save_model(model.network, str(tmp))
    spec = model.spec
    head = model.network.head
    write_json(directory / SPEC_FILE, {
        "format": MODEL_FORMAT, "transferlab_version": __version__,
        # The keys before "spec" are what transferlab 0.1.0 read back; they are still written so
        # that it can load runs written now.
        "backbone": spec.backbone, "strategy": spec.strategy, "head": spec.head, "dropout": spec.dropout,
        "num_features": getattr(head, "dim", None) or _in_features(head),
        "image_size": model.preprocess.input_size, "classes": list(model.classes),
        "preprocess": model.preprocess.to_dict(), "weights": vars(model.weights), "params": model.params,
        "spec": spec.to_dict(),
    })


def _in_features(head) -> int | None:
    from torch import nn

    linear = next((m for m in head.modules() if isinstance(m, nn.Linear)), None)
    return linear.in_features if linear is not None else None


def load(directory: str | Path) -> SavedModel:
    """Rebuild a saved network; needs no internet and no pretrained weights file."""
    directory = Path(directory)
    if directory.is_dir() and (directory / "config.yaml").is_file() and not (directory / SPEC_FILE).is_file():
        raise TransferlabError(f"run '{directory}' has not finished (no {SPEC_FILE}): continue it with "
                               f"`transferlab train --resume {directory}`")
    description = read_run_file(directory, SPEC_FILE)
    if description.get("format") != MODEL_FORMAT:
        raise TransferlabError(f"'{directory}/{SPEC_FILE}' has format {description.get('format')}, this "
                               f"transferlab reads format {MODEL_FORMAT}: upgrade transferlab")
    try:
        classes = list(description["classes"])
        if "spec" in description:
            spec = ModelSpec.from_dict({**description["spec"], "num_classes": len(classes)})
        else:  # written by transferlab 0.1.0: the spec is in the run options
            spec = ModelSpec.from_options({**description["params"], "image_size": description["image_size"]},
                                          len(classes))
        preprocess = Preprocess.from_dict(description["preprocess"])
        weights = WeightsInfo(**description["weights"])
    except (KeyError, TypeError, ValueError) as err:
        raise TransferlabError(f"'{directory / SPEC_FILE}' is damaged ({type(err).__name__}: {err}): restore it "
                               "from a copy of the run, or train again") from None
    network = build_model(spec, load_weights=False).network
    _load_weights(network, directory / MODEL_FILE)
    return SavedModel(network.eval(), spec, preprocess, weights, classes, dict(description["params"]))


def _load_weights(network: Network, path: Path) -> None:
    if not path.is_file():
        raise TransferlabError(f"'{path}' is missing: restore it from a copy of the run, or train again")
    try:
        load_model(network, str(path), strict=True)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TransferlabError(f"'{path}' is damaged ({_clip(reason)}): restore it from a copy of the run, "
                               "or train again") from None


def _clip(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."
