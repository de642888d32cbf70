"""Classifier heads on pooled features: linear, or an MLP (`mlp:1024,512`, `mlp-bn:512,256`); and
the option strings that describe heads, parsed without importing torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import TransferlabError

if TYPE_CHECKING:
    from torch import nn

HEAD_HELP = ("'linear', 'mlp:H1,H2,...' (hidden sizes), e.g. mlp:512, "
             "or 'mlp-bn:H1,H2,...' (BatchNorm after each hidden layer), e.g. mlp-bn:512,256")

_MLP_KINDS = ("mlp", "mlp-bn")


def parse_head(spec: str) -> tuple[str, list[int]]:
    """'linear' -> ('linear', []); 'mlp:1024,512' -> ('mlp', [1024, 512]); 'mlp' -> ('mlp', [512]);
    'mlp-bn:512,256' -> ('mlp-bn', [512, 256]); 'mlp-bn' -> ('mlp-bn', [512])."""
    kind, _, sizes = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "linear" and not sizes:
        return "linear", []
    if kind in _MLP_KINDS:
        try:
            hidden = [int(s) for s in sizes.split(",") if s.strip()] if sizes else [512]
        except ValueError:
            hidden = []
        if hidden and all(h > 0 for h in hidden):
            return kind, hidden
    raise TransferlabError(f"--head '{spec}' is not understood: use {HEAD_HELP}")


def parse_branch_dropout(value) -> tuple[float, float] | None:
    """A bilinear head's branch dropout: '0.5' -> (0.5, 0.5); '0.5,0.2' -> (0.5, 0.2); None when
    it is not one or two rates in [0, 1)."""
    try:
        rates = [float(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        return None
    rates = rates * 2 if len(rates) == 1 else rates
    return (rates[0], rates[1]) if len(rates) == 2 and all(0 <= r < 1 for r in rates) else None


def build_head(spec: str, in_features: int, num_classes: int, dropout: float = 0.0) -> "nn.Module":
    from torch import nn  # here, not at the top: option parsing must not wait for torch

    kind, hidden = parse_head(spec)
    batch_norm = kind == "mlp-bn"
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        if batch_norm:
            # The BatchNorm shift makes a bias in the Linear before it redundant.
            layers += [nn.Linear(width, h, bias=False), nn.BatchNorm1d(h)]
        else:
            layers.append(nn.Linear(width, h))
        layers.append(nn.ReLU(inplace=True))
        width = h
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    if not hidden and dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
