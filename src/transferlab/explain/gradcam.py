"""Grad-CAM (Selvaraju et al. 2017): where in the image a layer saw the evidence for a class."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TransferlabError
from ..models.network import Network
from ..models.stages import stage_groups
from ..models.taps import stage_output
from .activations import (Target, _first_tensor, as_input, explained_network, open_target, preserved_modes,
                          timm_backbone)

# Grad-CAM's usual resolution: 7x7 cells, the last stage of an ImageNet network at 224 px.
_CELLS = 7


def _forward_with_activation(network: nn.Module, target: Target, x: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    captured: list[torch.Tensor] = []
    handle = target.module.register_forward_hook(lambda m, i, out: captured.append(_first_tensor(out)))
    try:
        logits = network(x)
    finally:
        handle.remove()
    if not captured:
        # e.g. a bilinear network whose backbone was cut below this layer
        raise TransferlabError(f"layer '{target.name}' does not run in this network's forward: pick a lower layer")
    return logits, captured[-1]


def _cam(activation: torch.Tensor, gradient: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[0, 0]
    peak = cam.max()
    # Dividing by the peak alone keeps "no evidence" at zero instead of stretching noise to 1.
    return (cam / peak if peak > 0 else torch.zeros_like(cam)).clamp(0, 1).numpy()


def default_layer(network: nn.Module, size: int) -> str:
    """The deepest stage whose maps are at least min(7, size/16) cells across at this input size.

    At 224 px that is the last stage (7x7 on EfficientNet and ResNet; VGG's 14x14 block5_conv3,
    because its last stage is a fully connected block). On small inputs the last stage shrinks to
    2x2 or 1x1, too coarse to localise anything, so a stage at 1/16 of the input is used instead.
    A bilinear network explains its tapped layer: nothing above it runs."""
    network = explained_network(network)
    size = getattr(network, "input_size", None) or size
    backbone = network.backbone if isinstance(network, Network) else network
    if type(backbone).__name__ == "Tapped":
        return backbone._chain[backbone.first_tap][0]
    backbone = timm_backbone(network)
    names = [stage_output(backbone, k) for k in range(1, len(stage_groups(backbone)) + 1)]
    sides: dict[str, int] = {}

    def record(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                sides.setdefault(name, min(output.shape[-2:]))
        return hook

    handles = [backbone.get_submodule(n).register_forward_hook(record(n)) for n in names]
    try:
        with preserved_modes(backbone), torch.no_grad():
            backbone(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    wanted = min(_CELLS, max(1, size // 16))
    for name in names:
        if sides.get(name, 0) >= wanted:
            return name
    return names[0]


def gradcam(network: nn.Module, pixels: np.ndarray, layer: str | None = None,
            target: int | None = None) -> tuple[np.ndarray, int]:
    """(heatmap (S, S) float32 in [0, 1], explained class) for one (S, S, 3) uint8 image.

    `layer` defaults to `default_layer` (the last stage at ImageNet sizes); lower stages give finer
    but less class-specific maps. `target` defaults to the predicted class."""
    heatmap, cls, _ = gradcam_with_probabilities(network, pixels, layer, target)
    return heatmap, cls


def gradcam_with_probabilities(network: nn.Module, pixels: np.ndarray, layer: str | None = None,
                               target: int | None = None) -> tuple[np.ndarray, int, np.ndarray]:
    """gradcam's (heatmap, class) and the class probabilities of the same forward pass."""
    x = as_input(pixels)
    where = open_target(network, layer or default_layer(network, x.shape[-1]))
    # The parameters may all be frozen: an input that needs a gradient makes every activation need one.
    x.requires_grad_(True)
    with preserved_modes(network), torch.enable_grad():
        logits, activation = _forward_with_activation(network, where, x)
        if activation.ndim != 4:
            raise TransferlabError(f"layer '{where.name}' gives {tuple(activation.shape)} outputs, not feature "
                                   "maps: pick a convolutional layer")
        cls = int(logits[0].argmax()) if target is None else int(target)
        if not 0 <= cls < logits.shape[1]:
            raise TransferlabError(f"target class {cls} is out of range: the network has {logits.shape[1]} classes")
        # Softmax ignores a shift shared by all logits, so a head may carry a class's evidence in
        # the others' logits (scikit-learn's binary classifier fixes one logit at 0). The logit's
        # margin over the mean logit sees it either way; the raw logit would show nothing there.
        score = logits[0, cls] - logits[0].mean()
        (gradient,) = torch.autograd.grad(score, activation)
    heatmap = _cam(activation.detach().float(), gradient.float(), tuple(x.shape[-2:]))
    probabilities = torch.softmax(logits[0].detach().float(), 0).numpy()
    return heatmap.astype(np.float32), cls, probabilities
