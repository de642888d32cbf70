"""TF-"same" padding worked out once per input size. The `tf_` variants of timm pad every strided
convolution on every forward (`Conv2dSame`: compute the padding from the input's size, copy the
input into a larger tensor, convolve). The padding depends only on the input's height and width,
so it is worked out the first time a size is seen and kept: a symmetric one becomes the
convolution's own padding, and the usual asymmetric one (nothing before, one row after: a
stride-2 3x3 on an even size) becomes a symmetric padding of one with a zero row and column put
before the kernel, which samples exactly the same pixels. No copy of the activations is made,
and the outputs are the same to the bit; the weights keep their names and shapes. Building the
network runs nothing (a fully cached `features` run never runs the backbone)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF's (before, after) padding of one dimension."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class StaticSameConv2d(nn.Conv2d):
    """A TF-"same" convolution whose padding is worked out once for each input size it sees."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                         conv.groups, conv.bias is not None, device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        self.layouts: dict[tuple[int, int], tuple] = {}

    def layout(self, hw: tuple[int, int]) -> tuple:
        """(grow, symmetric, dynamic_pads); grow is None where no static padding samples the same pixels."""
        found = self.layouts.get(hw)
        if found is None:
            pads = [_pads(n, k, s, d) for n, k, s, d in zip(hw, self.kernel_size, self.stride, self.dilation)]
            grow = tuple(int(after == before + 1) for before, after in pads)  # a zero row / column before
            static = all(after - before in (0, 1) for before, after in pads) and (
                not any(grow) or all(d == 1 for d in self.dilation))
            found = (grow if static else None, tuple(after for _, after in pads),
                     (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
            self.layouts[hw] = found
        return found

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grow, symmetric, dynamic = self.layout((int(x.shape[-2]), int(x.shape[-1])))
        if grow is None:
            return F.conv2d(F.pad(x, dynamic), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        weight = self.weight
        if any(grow):  # follows the weight as it trains: made from it on every call (tiny)
            weight = F.pad(weight, (grow[1], 0, grow[0], 0))
        return F.conv2d(x, weight, self.bias, self.stride, symmetric, self.dilation, self.groups)


def fix_same_padding(model: nn.Module) -> int:
    """Replace every timm `Conv2dSame` in `model` by a StaticSameConv2d; returns how many."""
    try:
        from timm.layers import Conv2dSame
    except ImportError:
        return 0
    targets = [name for name, m in model.named_modules() if type(m) is Conv2dSame]
    for name in targets:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, StaticSameConv2d(getattr(owner, child)))
    return len(targets)


def freeze_same_padding(network: nn.Module, example: torch.Tensor) -> int:
    """For a network that will only see inputs shaped like `example` and never train again (an
    export): each StaticSameConv2d becomes a plain Conv2d holding its grown kernel, so the exported
    graph pads neither activations nor weights. One forward of `example` finds the size each
    convolution sees. Returns how many were frozen."""
    targets = {name: m for name, m in network.named_modules() if isinstance(m, StaticSameConv2d)}
    if not targets:
        return 0
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(module, inputs) -> None:  # returns nothing: the inputs go on unchanged
            sizes.setdefault(name, (int(inputs[0].shape[-2]), int(inputs[0].shape[-1])))
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in targets.items()]
    try:
        with torch.no_grad():
            network(example)
    finally:
        for hook in hooks:
            hook.remove()
    frozen = 0
    for name, module in targets.items():
        if name not in sizes:
            continue
        grow, symmetric, _ = module.layout(sizes[name])
        if grow is None:
            continue
        conv = nn.Conv2d(module.in_channels, module.out_channels,
                         tuple(k + g for k, g in zip(module.kernel_size, grow)), module.stride, symmetric,
                         module.dilation, module.groups, module.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(F.pad(module.weight, (grow[1], 0, grow[0], 0)))
            if module.bias is not None:
                conv.bias.copy_(module.bias)
        parent, _, child = name.rpartition(".")
        setattr(network.get_submodule(parent) if parent else network, child, conv.to(module.weight.device))
        frozen += 1
    return frozen
