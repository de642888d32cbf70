"""What a layer computes for an image, and the plumbing the other explainers share: naming a
layer, running a model only as far as that layer, leaving the model as it was found."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..errors import TransferlabError
from ..models.network import Network, Normalize
from ..models.taps import resolve_layer

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class _Reached(Exception):
    """Raised from a forward hook to skip the layers above the one being inspected."""


@dataclass
class Target:
    """A model opened for inspection: the timm backbone, how pixels reach it and the layer."""

    backbone: nn.Module
    normalize: nn.Module
    name: str
    module: nn.Module


def explained_network(model: nn.Module) -> nn.Module:
    """The network whose layers are explained: the model itself, or, for a weighted ensemble of
    networks, its member with the largest weight (its first among equals)."""
    backbone = model.backbone if isinstance(model, Network) else None
    if type(backbone).__name__ == "MemberNetworks":
        weights = model.head.log_weights.flatten().tolist()
        return explained_network(backbone.networks[weights.index(max(weights))])
    return model


def timm_backbone(model: nn.Module) -> nn.Module:
    """The timm model inside a Network (the bilinear strategy wraps it in a Tapped as `.net`; a
    feature ensemble's layers are those of its first member; a weighted ensemble's, those of its
    heaviest member)."""
    model = explained_network(model)
    backbone = model.backbone if isinstance(model, Network) else model
    if type(backbone).__name__ == "FeatureEnsemble":
        return backbone.members[0]
    return getattr(backbone, "net", backbone) if type(backbone).__name__ == "Tapped" else backbone


def _normalizer(model: nn.Module, backbone: nn.Module) -> nn.Module:
    model = explained_network(model)
    if isinstance(model, Network):
        return model.normalize
    # A bare backbone: the statistics its weights were trained with, ImageNet's when unknown.
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean") or _IMAGENET[0], cfg.get("std") or _IMAGENET[1]
    return Normalize(mean, std)


def open_target(model: nn.Module, layer: str) -> Target:
    """Resolve `layer` (module name, stage-k or Keras name) on the model's timm backbone."""
    backbone = timm_backbone(model)
    name = resolve_layer(backbone, layer)
    return Target(backbone, _normalizer(model, backbone), name, backbone.get_submodule(name))


@contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Eval mode inside (batch norm must not learn from explanations), each module's own mode after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _first_tensor(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TransferlabError(f"layer output of type {type(output).__name__} is not a feature map: pick another layer")


def run_to_layer(target: Target, pixels: torch.Tensor) -> torch.Tensor:
    """The layer's output for (N, 3, H, W) pixels in 0..255; nothing above the layer runs."""
    captured: list[torch.Tensor] = []

    def stop(module, inputs, output):
        captured.append(_first_tensor(output))
        raise _Reached

    handle = target.module.register_forward_hook(stop)
    try:
        target.backbone(target.normalize(pixels))
    except _Reached:
        pass
    finally:
        handle.remove()
    if not captured:
        raise TransferlabError(f"layer '{target.name}' is not used by the backbone's forward: pick another layer")
    return captured[0]


def as_input(pixels: np.ndarray) -> torch.Tensor:
    """(S, S, 3) uint8 pixels -> (1, 3, S, S) float tensor, still in 0..255."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise TransferlabError(f"expected (H, W, 3) pixels, got shape {pixels.shape}")
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()


def activation_maps(network: nn.Module, pixels: np.ndarray, layer: str) -> np.ndarray:
    """(C, h, w) float32 maps of one image at `layer` (a Network, or a bare timm backbone)."""
    target = open_target(network, layer)
    with preserved_modes(network), torch.no_grad():
        maps = run_to_layer(target, as_input(pixels))
    if maps.ndim != 4:
        raise TransferlabError(f"layer '{target.name}' gives {tuple(maps.shape)} outputs, not feature maps: "
                               "pick a convolutional layer")
    return maps[0].float().numpy()
