"""Classifier heads on pooled features: linear, or an MLP given as `mlp:1024,512`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import TransferlabError

if TYPE_CHECKING:
    from torch import nn

HEAD_HELP = "'linear' or 'mlp:H1,H2,...' (hidden sizes), e.g. mlp:512"


def parse_head(spec: str) -> tuple[str, list[int]]:
    """'linear' -> ('linear', []); 'mlp:1024,512' -> ('mlp', [1024, 512]); 'mlp' -> ('mlp', [512])."""
    kind, _, sizes = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "linear" and not sizes:
        return "linear", []
    if kind == "mlp":
        try:
            hidden = [int(s) for s in sizes.split(",") if s.strip()] if sizes else [512]
        except ValueError:
            hidden = []
        if hidden and all(h > 0 for h in hidden):
            return "mlp", hidden
    raise TransferlabError(f"--head '{spec}' is not understood: use {HEAD_HELP}")


def build_head(spec: str, in_features: int, num_classes: int, dropout: float = 0.0) -> "nn.Module":
    from torch import nn  # here, not at the top: option parsing must not wait for torch

    kind, hidden = parse_head(spec)
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    if not hidden and dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
