"""The trainable network: input normalisation, a timm backbone that pools features, and a head."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Normalize(nn.Module):
    """Maps uint8-range pixels (0..255) to the backbone's normalised input.

    Living inside the network means an exported or reloaded model cannot be fed pixels
    normalised another way: the commonest cause of good validation and bad predictions.
    """

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("scale", torch.empty(1, 3, 1, 1))
        self.register_buffer("shift", torch.empty(1, 3, 1, 1))
        self.set_stats(mean, std)

    def set_stats(self, mean, std) -> None:
        mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale.copy_(1.0 / (255.0 * std))
        self.shift.copy_(-mean / std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x.to(self.scale.dtype), self.scale)


class Network(nn.Module):
    """`input_size` (the side of the square input) is known to networks the factory built; it is
    not part of the saved weights."""

    def __init__(self, backbone: nn.Module, head: nn.Module, mean, std, input_size: int | None = None):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.head = head
        self.input_size = input_size

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(pixels))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))


def to_batch(pixels: list[np.ndarray]) -> torch.Tensor:
    """Stack (H, W, 3) uint8 images into an NCHW uint8 tensor in channels_last memory order.

    The NHWC array viewed as NCHW already has channels_last strides, so this costs one copy.
    """
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
