"""Grad-CAM (Selvaraju et al. 2017): where in the image a layer saw the evidence for a class."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TransferlabError
from .activations import Target, _first_tensor, as_input, open_target, preserved_modes


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


def gradcam(network: nn.Module, pixels: np.ndarray, layer: str | None = None,
            target: int | None = None) -> tuple[np.ndarray, int]:
    """(heatmap (S, S) float32 in [0, 1], explained class) for one (S, S, 3) uint8 image.

    `layer` defaults to the backbone's last stage; lower stages give finer but less class-specific
    maps. `target` defaults to the predicted class."""
    where = open_target(network, layer or "stage-1")
    x = as_input(pixels)
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
        (gradient,) = torch.autograd.grad(logits[0, cls], activation)
    heatmap = _cam(activation.detach().float(), gradient.float(), tuple(x.shape[-2:]))
    return heatmap.astype(np.float32), cls
