"""Pooled features of several backbones side by side, and of an image and its mirror averaged:
the `features` strategy's ensembles (`--backbone a,b`, `--feature-views 2`), as one backbone
module so that predict, export and explain run them like any network."""

from __future__ import annotations

from typing import Sequence

import torch
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
