"""Backbone names in one place: timm's model names and the registered ones (registry.py), with
wildcard listing, close-match suggestions and creation with an explicit weights source."""

from __future__ import annotations

import difflib
import fnmatch

import torch
from torch import nn

from ..errors import TransferlabError
from . import scratch  # noqa: F401  (registers basenet and basenet-plus)
from .preprocess import Preprocess
from .registry import REGISTERED, RegisteredBackbone
from .same_padding import fix_same_padding
from .weights import PACKAGED, WeightsInfo, load_weights, packaged_installed


def list_backbones(pattern: str = "*", pretrained: bool = False, offline: bool = False) -> list[str]:
    """Backbone names matching a shell-style wildcard (case-insensitive), sorted.

    pretrained=True keeps names that have weights somewhere (packaged, or on the hub), and the
    registered networks made to train from scratch; offline=True keeps those that work without a
    network: packaged weights that are installed, and the networks made to train from scratch.
    """
    import timm

    names = set(timm.list_models(pretrained=False))
    if offline:
        names = {n for n in PACKAGED if packaged_installed(n)}
    elif pretrained:
        names = {n.split(".")[0] for n in timm.list_models(pretrained=True)} | set(PACKAGED)
    names |= {n for n in REGISTERED if not offline or trains_from_scratch(n)}
    pattern = pattern.lower()
    return sorted(n for n in names if fnmatch.fnmatchcase(n.lower(), pattern))


def registered(name: str | None) -> RegisteredBackbone | None:
    """The registered network of that name, or None for a timm name."""
    return REGISTERED.get(name) if name else None


def trains_from_scratch(name: str | None) -> bool:
    """A registered network without pretrained weights (it is made for --strategy scratch)."""
    entry = registered(name)
    return entry is not None and not entry.pretrained


def scratch_backbones() -> list[str]:
    return [name for name in REGISTERED if trains_from_scratch(name)]


def check_backbone(name: str) -> None:
    import timm

    if name in REGISTERED or timm.is_model(name.split(".")[0]):
        return
    close = difflib.get_close_matches(name, timm.list_models() + list(REGISTERED), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise TransferlabError(
        f"unknown backbone '{name}': {hint}list names with `transferlab backbones '*{name[:4]}*'`")


def create_backbone(name: str, weights: str = "auto", image_size: int | None = None,
                    seed: int = 0) -> tuple[nn.Module, Preprocess, WeightsInfo]:
    """A backbone returning pooled features (a timm model with its classifier removed, or a
    registered network), its preprocessing and where its weights came from."""
    import timm

    check_backbone(name)
    torch.manual_seed(seed)  # --weights none must give the same network for the same seed
    entry = registered(name)
    if trains_from_scratch(name):
        model = entry.create(image_size or entry.input_size)
        preprocess = Preprocess.from_timm_config(model.pretrained_cfg, image_size)
        return model, preprocess, WeightsInfo("none", f"none:seed{seed}", f"random initialisation (seed {seed})")
    model = timm.create_model(name, pretrained=False)
    model, info = load_weights(model, name, weights, seed)
    preprocess = Preprocess.from_timm_config(timm.data.resolve_model_data_config(model), image_size)
    model.reset_classifier(0)
    fix_same_padding(model)  # the tf_ variants' padding, worked out once per input size
    return model.eval(), preprocess, info


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled features a backbone without classifier returns."""
    # Some heads (MobileNetV3's conv_head, ConvNeXt's pre-logits MLP) widen after num_features.
    return int(getattr(model, "head_hidden_size", None) or model.num_features)
