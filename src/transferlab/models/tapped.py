"""Backbones cut at tapped layers: what a bilinear head reads. Nothing above the last tap runs, is
kept or is saved; the kept parameters keep their timm names under `net.` (and `net2.`)."""

from __future__ import annotations

import torch
from torch import nn

from .stages import last_stages
from .taps import prune_after, resolve_layer, tap_chain

Chain = list[tuple[str, nn.Module]]


def default_layer(backbone: nn.Module) -> str:
    """The layer a bilinear head taps when none is given: VGG's block5_conv3 as in B-CNN; the last
    block stage of EfficientNet/MobileNet-style nets (before the 1x1 head conv that widens to
    1280 channels and would square to 1.6M features); otherwise the last stage."""
    if type(backbone).__name__ == "VGG":
        return "block5_conv3"
    blocks = getattr(backbone, "blocks", None)
    if isinstance(blocks, nn.Sequential) and hasattr(backbone, "conv_head"):
        return f"blocks.{len(blocks) - 1}"
    return "stage-1"


def default_feature_layer(backbone: nn.Module) -> str:
    """The layer `features --pooling bilinear` taps when none is given: for EfficientNet/MobileNet
    style nets the block stage before the last (192 channels in Lite0: 18,528 features), which
    scored as well as the last (320 channels: 51,360 features) on cars43 and better on
    cifar10-small, with a third of the features to cache and fit; otherwise as a bilinear head."""
    blocks = getattr(backbone, "blocks", None)
    if isinstance(blocks, nn.Sequential) and hasattr(backbone, "conv_head") and len(blocks) > 1:
        return f"blocks.{len(blocks) - 2}"
    return default_layer(backbone)


class Tapped(nn.Module):
    """Returns the tapped maps, in tap order: one or two layers of `net`, then the tap of `net2`."""

    def __init__(self, net: nn.Module, taps: list[str], net2: nn.Module | None = None,
                 taps2: list[str] | None = None, renorm2: tuple[list, list, list, list] | None = None):
        super().__init__()
        self.net, self.net2 = net, net2
        self._chain, ends = tap_chain(net, taps)
        self._taps = [i for i, (n, _) in enumerate(self._chain) if n in ends]
        prune_after(net, self._chain)
        if net2 is not None:
            self._chain2, _ = tap_chain(net2, taps2, "--layer (second backbone)")
            prune_after(net2, self._chain2)
            # The pixels arrive normalised for `net`; `net2` may expect another mean and std.
            mean1, std1, mean2, std2 = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in renorm2)
            self.register_buffer("scale2", std1 / std2)
            self.register_buffer("shift2", (mean1 - mean2) / std2)

    @property
    def chain(self) -> Chain | None:
        """The cuttable chain (names relative to this module) when one backbone is tapped."""
        return None if self.net2 is not None else [(f"net.{n}", m) for n, m in self._chain]

    @property
    def first_tap(self) -> int:
        return self._taps[0]

    def run(self, h: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, ...]:
        """The taps of `net` from chain element `start` on, `h` being the input of that element."""
        maps = [h] if start - 1 in self._taps else []
        for i in range(start, len(self._chain)):
            h = self._chain[i][1](h)
            if i in self._taps:
                maps.append(h)
        return tuple(maps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.run(x)
        if self.net2 is not None:
            h = torch.addcmul(self.shift2, x, self.scale2)
            for _, module in self._chain2:
                h = module(h)
            maps += (h,)
        return maps

    def last_stages(self, count: int | str, option: str = "--unfreeze") -> list[str]:
        """Parameter names of the last `count` stages below the taps of each backbone; `option`
        names what asked for them when there are fewer."""
        names = [f"net.{n}" for n in last_stages(self.net, count, option)]
        if self.net2 is not None:
            names += [f"net2.{n}" for n in last_stages(self.net2, count, option)]
        return names

    @property
    def tap_names(self) -> list[str]:
        """The tapped layers of `net`, as module names."""
        return [self._chain[i][0] for i in self._taps]

    def out_channels(self) -> int:
        """Channels of the last tap of `net`, read from its last convolution or normalisation
        (no forward pass: building a cached features run must not run the network); a probe
        forward when it has neither."""
        found = None
        for module in self._chain[self._taps[-1]][1].modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                found = getattr(module, "out_channels", None) or module.out_features
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                found = module.num_features
        return found or self.channels(64)[len(self._taps) - 1]

    def channels(self, size: int) -> list[int]:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            maps = self(torch.zeros(1, 3, size, size))
        self.train(was_training)
        return [m.shape[1] for m in maps]


def split_layers(layer: str | None, two_backbones: bool) -> tuple[list[str | None], str | None]:
    """'A' or 'A,B' -> (taps of the first backbone, tap of the second backbone or None)."""
    names = [s.strip() for s in (layer or "").split(",") if s.strip()] or [None]
    if two_backbones:
        return names[:1], names[1] if len(names) > 1 else None
    return names, None


def tap(net: nn.Module, net2: nn.Module | None, layer: str | None, renorm2=None, default=default_layer) -> Tapped:
    first, second = split_layers(layer, net2 is not None)
    taps = [resolve_layer(net, name or default(net)) for name in first]
    taps2 = None
    if net2 is not None:
        taps2 = [resolve_layer(net2, second or default_layer(net2), "--layer (second backbone)")]
    return Tapped(net, taps, net2, taps2, renorm2)
