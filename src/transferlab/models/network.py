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


class Calibrate(nn.Module):
    """The head's logits scaled (logits * scale + bias: one scale, the inverse temperature, and
    a bias per class or none), fitted after training on images it did not train on.

    Inside the network, so predict, evaluate, export and serve all give the calibrated
    probabilities. Its values come from the ModelSpec (model.json), not the weights file: its
    buffers are not saved, so runs saved before calibration existed load as they were."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.ones(0), persistent=False)
        self.register_buffer("bias", torch.zeros(0), persistent=False)

    @property
    def active(self) -> bool:
        return self.scale.numel() > 0

    def set(self, values: dict | None) -> None:
        """`values`: {"scale": [...], "bias": [...]} (one scale broadcasts over the classes), or
        None for none."""
        if not values:
            self.scale, self.bias = torch.ones(0), torch.zeros(0)
            return
        self.scale = torch.tensor(values["scale"], dtype=torch.float32).view(1, -1)
        self.bias = torch.tensor(values["bias"], dtype=torch.float32).view(1, -1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return logits
        return torch.addcmul(self.bias.to(logits.dtype), logits, self.scale.to(logits.dtype))

    def extra_repr(self) -> str:
        # The repr keys cached ONNX graphs (runtime/frozen.py): other values, another graph.
        if not self.active:
            return "identity"
        return f"scale={self.scale.flatten().tolist()}, bias={self.bias.flatten().tolist()}"


class Network(nn.Module):
    """`input_size` (the side of the square input) is known to networks the factory built; it is
    not part of the saved weights."""

    def __init__(self, backbone: nn.Module, head: nn.Module, mean, std, input_size: int | None = None):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.head = head
        self.calibrate = Calibrate()
        self.input_size = input_size

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(pixels))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The calibrated logits of pooled features (the cached features of a features run)."""
        return self.calibrate(self.head(features))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(pixels))


def to_batch(pixels: list[np.ndarray]) -> torch.Tensor:
    """Stack (H, W, 3) uint8 images into an NCHW uint8 tensor in channels_last memory order.

    The NHWC array viewed as NCHW already has channels_last strides, so this costs one copy.
    """
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
