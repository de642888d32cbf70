"""The networks transferlab defines itself, registered by name beside timm's model names, so
that a name resolves in one place whichever kind it is (see backbones.py).

Registered backbones behave like timm's: created for an input size, they return pooled features
and carry `num_features`, `pretrained_cfg` and `group_matcher`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from torch import nn

DEFAULT_BACKBONE = "tf_efficientnet_lite0"  # the packaged offline weights; works without a network
WEIGHT_SOURCES = ("auto", "hub", "none", "packaged")  # or the path of a weights file (weights.py)


@dataclass(frozen=True)
class RegisteredBackbone:
    name: str
    create: Callable[[int], "nn.Module"]  # input size -> the backbone, randomly initialised
    input_size: int                       # used when no --image-size is given
    default_head: str                     # the head that completes it (its classic dense layers)
    pretrained: bool = False              # whether weights exist; False: it trains from scratch


REGISTERED: dict[str, RegisteredBackbone] = {}


def register_backbone(name: str, *, input_size: int, default_head: str, pretrained: bool = False):
    """Decorator: register `create(input_size) -> nn.Module` under `name`."""
    def add(create: Callable[[int], "nn.Module"]):
        REGISTERED[name] = RegisteredBackbone(name, create, input_size, default_head, pretrained)
        return create
    return add
