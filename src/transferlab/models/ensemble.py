"""Ensembles as one network, so that predict, export, serve and explain run them like any other:
pooled features of several backbones side by side, and of an image and its mirror averaged (the
`features` strategy's `--backbone a,b`, `--feature-views 2`); and the weighted mean of whole
networks' probabilities (auto's ensemble of its candidates)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FeatureEnsemble(nn.Module):
    """Runs each member on the same pixels (normalised for the first member; the others are
    renormalised to their own weights' mean and std) and concatenates their pooled features.
    With `mirror`, each member's features are the mean of the image's and its mirror image's."""

    def __init__(self, members: Sequence[nn.Module], names: Sequence[str], stats: Sequence[tuple],
                 mirror: bool = False):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.names = list(names)
        self.mirror = mirror
        (mean0, std0), self.renorm = stats[0], []
        for k, (mean, std) in enumerate(stats):
            same = tuple(mean) == tuple(mean0) and tuple(std) == tuple(std0)
            self.renorm.append(not same)
            # x_member = (x * std0 + mean0 - mean) / std, folded into one scale and shift.
            scale = torch.tensor(std0, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)
            shift = (torch.tensor(mean0, dtype=torch.float32) - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(
                std, dtype=torch.float32)
            self.register_buffer(f"scale{k}", scale.view(1, -1, 1, 1), persistent=False)
            self.register_buffer(f"shift{k}", shift.view(1, -1, 1, 1), persistent=False)
        self.dims = [int(getattr(m, "head_hidden_size", None) or m.num_features) for m in members]
        self.num_features = sum(self.dims)

    def member_features(self, k: int, x: torch.Tensor) -> torch.Tensor:
        if self.renorm[k]:
            x = torch.addcmul(getattr(self, f"shift{k}"), x, getattr(self, f"scale{k}"))
        member = self.members[k]
        if not self.mirror:
            return member(x)
        # The mirror first: Grad-CAM keeps the last activation a hooked layer gives, the upright one.
        return (member(x.flip(-1)) + member(x)) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.member_features(k, x) for k in range(len(self.members))], 1)

    def part(self, k: int) -> nn.Module:
        """Member k alone, as a backbone of the same input (its features are cached on their own)."""
        return _Part(self, k)


class _Part(nn.Module):
    def __init__(self, ensemble: FeatureEnsemble, k: int):
        super().__init__()
        self.ensemble, self.k = ensemble, k
        self.num_features = ensemble.dims[k]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ensemble.member_features(self.k, x)


class MemberNetworks(nn.Module):
    """Whole fitted networks on the same image, each at its own input size: the pixels arrive at
    the largest member's size and are resized (antialiased) for the others. Returns each member's
    log-probabilities, (images, members, classes)."""

    def __init__(self, networks: Sequence[nn.Module], sizes: Sequence[int], input_size: int,
                 interpolation: str = "bilinear"):
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.sizes, self.input_size = [int(s) for s in sizes], int(input_size)
        # The decoder's own filter (timm's EfficientNet weights were trained on bicubic resizes).
        self.mode = "bicubic" if interpolation == "bicubic" else "bilinear"

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.float()
        outputs = []
        for network, size in zip(self.networks, self.sizes):
            x = pixels if size == pixels.shape[-1] else F.interpolate(
                pixels, size=(size, size), mode=self.mode, antialias=True, align_corners=False)
            outputs.append(torch.log_softmax(network(x).float(), 1))
        return torch.stack(outputs, 1)


class WeightedProbabilities(nn.Module):
    """The members' probabilities averaged with fixed weights, returned as log-probabilities so
    that the softmax every caller applies gives the average back exactly."""

    def __init__(self, weights: Sequence[float], num_classes: int):
        super().__init__()
        total = float(sum(weights))
        self.register_buffer("log_weights", torch.tensor([w / total for w in weights]).log().view(1, -1, 1))
        self.num_classes = int(num_classes)

    def forward(self, member_log_probabilities: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(member_log_probabilities + self.log_weights, 1)
