"""The run configuration: one flat dataclass whose keys are the CLI options and the API arguments."""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from .errors import TransferlabError
from .models.heads import parse_head

STRATEGIES = ("features",)
DEFAULT_BACKBONE = "tf_efficientnet_lite0"  # the packaged offline weights; works without a network


@dataclass
class RunConfig:
    data: str = "digits"
    strategy: str = "features"
    backbone: str = DEFAULT_BACKBONE
    weights: str = "auto"              # auto | hub | none | packaged | path to a checkpoint
    head: str = "linear"               # linear | mlp:H1,H2,...
    dropout: float = 0.5               # before the last layer of an MLP head
    epochs: int = 100                  # most epochs a trained head runs (early stopping ends it)
    patience: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    image_size: int | None = None      # None: the backbone's own
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    out: str = "runs"
    name: str | None = None
    feature_cache: bool = True
    cache_dir: str | None = None       # None: $TRANSFERLAB_CACHE or ~/.cache/transferlab

    def validate(self) -> "RunConfig":
        if self.strategy not in STRATEGIES:
            raise TransferlabError(
                f"--strategy '{self.strategy}' is not known: choose one of {', '.join(STRATEGIES)}")
        parse_head(self.head)
        for key in ("epochs", "patience", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise TransferlabError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        if self.image_size is not None and not 16 <= int(self.image_size) <= 2048:
            raise TransferlabError(f"--image-size {self.image_size} is outside 16..2048 pixels")
        if not 0 <= self.dropout < 1:
            raise TransferlabError(f"--dropout {self.dropout} is outside [0, 1)")
        if self.lr <= 0:
            raise TransferlabError(f"--lr must be positive, got {self.lr}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, origin: str = "config") -> "RunConfig":
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise TransferlabError(
                    f"{origin}: unknown key '{key}'{hint}; known keys: {', '.join(sorted(known))}")
        # Paths given as pathlib objects are stored as text, so config.yaml stays plain YAML.
        values = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in values.items()}
        return cls(**values).validate()

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise TransferlabError(f"config file '{path}' does not exist") from None
        except yaml.YAMLError as err:
            raise TransferlabError(f"config file '{path}' is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise TransferlabError(f"config file '{path}' must hold a mapping of key: value")
        return cls.from_dict(values, origin=str(path))

    def model_options(self) -> dict:
        """The arguments of ImageClassifier this configuration sets."""
        skip = {"data", "val_fraction", "test_fraction", "out", "name"}
        return {k: v for k, v in asdict(self).items() if k not in skip}
