"""Small CNNs trained from random weights: the baseline a pretrained backbone has to beat.

Each is an `nn.Sequential` of named blocks ending in `flatten`, so it plugs into the network
in place of a timm backbone: it takes normalised NCHW input and returns (N, num_features).
It also carries the few timm attributes the rest of transferlab reads: `num_features`,
`pretrained_cfg` (preprocessing) and `group_matcher` (per-block parameter groups). Both are
registered backbones (registry.py): their names work wherever a timm name does.
"""

from __future__ import annotations

import functools
import operator
from collections import OrderedDict

import torch
from torch import nn

from ..errors import TransferlabError
from .registry import REGISTERED, register_backbone

SCRATCH_MODELS = ("basenet", "basenet-plus")

# Total downsampling of each model: the input side must be a multiple of it.
_STRIDE = {"basenet": 4, "basenet-plus": 8}


class ScratchNet(nn.Sequential):
    """A plain chain of named blocks with timm-style metadata."""

    def __init__(self, blocks: "OrderedDict[str, nn.Module]", num_features: int, input_size: int):
        super().__init__(blocks)
        self.num_features = int(num_features)
        self.pretrained_cfg = dict(input_size=(3, input_size, input_size), crop_pct=1.0,
                                   interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3,
                                   classifier=None)
        _init_weights(self)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's format: block1 is the stem, every later block its own group."""
        return {"stem": r"^block1", "blocks": r"^block(\d+)"}


def _init_weights(model: nn.Module) -> None:
    """Kaiming for conv (fan_out) and linear (fan_in) weights, zero biases, BN as identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            continue
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _basenet(size: int) -> ScratchNet:
    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(OrderedDict(
            conv=nn.Conv2d(c_in, c_out, kernel_size=5, padding=2),
            act=nn.ReLU(inplace=True),
            pool=nn.MaxPool2d(2)))

    blocks = OrderedDict(block1=block(3, 32), block2=block(32, 64), flatten=nn.Flatten(1))
    return ScratchNet(blocks, 64 * (size // 4) ** 2, size)


def _basenet_plus(size: int) -> ScratchNet:
    def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

    def block(c_in: int, c_out: int, drop: float) -> nn.Sequential:
        c1, b1, r1 = conv_bn_relu(c_in, c_out)
        c2, b2, r2 = conv_bn_relu(c_out, c_out)
        return nn.Sequential(OrderedDict(
            conv1=c1, bn1=b1, act1=r1, conv2=c2, bn2=b2, act2=r2,
            pool=nn.AvgPool2d(2), drop=nn.Dropout(drop)))

    blocks = OrderedDict(block1=block(3, 32, 0.2), block2=block(32, 64, 0.3),
                         block3=block(64, 128, 0.4), flatten=nn.Flatten(1))
    return ScratchNet(blocks, 128 * (size // 8) ** 2, size)


def _check_name(name: str) -> str:
    key = name.strip().lower()
    if key not in SCRATCH_MODELS:
        raise TransferlabError(
            f"unknown scratch model '{name}': choose one of {', '.join(SCRATCH_MODELS)}")
    return key


def create_scratch(name: str, input_size: int = 32) -> torch.nn.Module:
    """A randomly initialised scratch CNN for square inputs of side `input_size`.

    Weights are drawn from torch's global RNG: seed it first for a repeatable network.
    """
    key = _check_name(name)
    stride = _STRIDE[key]
    try:
        size = operator.index(input_size)
    except TypeError:
        size = None
    if size is None or size < 8 or size % stride:
        raise TransferlabError(
            f"--image-size {input_size} does not fit {key}: use a multiple of {stride} "
            f"that is at least 8, e.g. 32")
    return _BUILDERS[key](size)


def default_head(name: str) -> str:
    """The head spec that completes the model's classic dense layers."""
    return REGISTERED[_check_name(name)].default_head


_BUILDERS = {"basenet": _basenet, "basenet-plus": _basenet_plus}
register_backbone("basenet", input_size=32, default_head="mlp:512")(functools.partial(create_scratch, "basenet"))
register_backbone("basenet-plus", input_size=32, default_head="mlp-bn:512,256")(
    functools.partial(create_scratch, "basenet-plus"))
