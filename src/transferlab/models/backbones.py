"""The backbone registry: every timm model name, wildcard listing, close-match suggestions, creation."""

from __future__ import annotations

import difflib
import fnmatch

import torch
from torch import nn

from ..config import DEFAULT_BACKBONE  # noqa: F401  (re-exported: the registry's default)
from ..errors import TransferlabError
from .preprocess import Preprocess
from .weights import PACKAGED, WeightsInfo, load_weights


def list_backbones(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """timm model names matching a shell-style wildcard (case-insensitive), sorted.

    pretrained=True keeps names that have weights somewhere (packaged, or on the hub).
    """
    import timm

    names = set(timm.list_models(pretrained=False))
    if pretrained:
        names = {n.split(".")[0] for n in timm.list_models(pretrained=True)} | set(PACKAGED)
    from .scratch import SCRATCH_MODELS

    names |= set(SCRATCH_MODELS)
    pattern = pattern.lower()
    return sorted(n for n in names if fnmatch.fnmatchcase(n.lower(), pattern))


def check_backbone(name: str) -> None:
    import timm

    from .scratch import SCRATCH_MODELS

    if name in SCRATCH_MODELS or timm.is_model(name.split(".")[0]):
        return
    close = difflib.get_close_matches(name, timm.list_models() + list(SCRATCH_MODELS), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise TransferlabError(
        f"unknown backbone '{name}': {hint}list names with `transferlab backbones '*{name[:4]}*'`")


def create_backbone(name: str, weights: str = "auto", image_size: int | None = None,
                    seed: int = 0) -> tuple[nn.Module, Preprocess, WeightsInfo]:
    """A timm backbone returning pooled features (its classifier removed), its preprocessing and
    where its weights came from."""
    import timm

    from .scratch import SCRATCH_MODELS, create_scratch

    check_backbone(name)
    torch.manual_seed(seed)  # --weights none must give the same network for the same seed
    if name in SCRATCH_MODELS:
        model = create_scratch(name, image_size or 32)
        preprocess = Preprocess.from_timm_config(model.pretrained_cfg, image_size)
        return model, preprocess, WeightsInfo("none", f"none:seed{seed}", f"random initialisation (seed {seed})")
    model = timm.create_model(name, pretrained=False)
    model, info = load_weights(model, name, weights, seed)
    preprocess = Preprocess.from_timm_config(timm.data.resolve_model_data_config(model), image_size)
    model.reset_classifier(0)
    return model.eval(), preprocess, info


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled features a backbone without classifier returns."""
    # Some heads (MobileNetV3's conv_head, ConvNeXt's pre-logits MLP) widen after num_features.
    return int(getattr(model, "head_hidden_size", None) or model.num_features)
