"""What a channel responds to: an input image grown by gradient ascent to excite it
(feature visualisation as in Olah et al. 2017, with the simple regularisers that keep the
picture readable instead of high-frequency noise)."""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TransferlabError
from .activations import Target, open_target, preserved_modes, run_to_layer

_GRAY, _NOISE = 128.0, 8.0
_SCALES = (0.5, 0.71, 1.0)  # coarse-to-fine: structure first, detail last
_LR, _DECAY, _BLUR_EVERY = 6.0, 0.004, 4


def _channel_list(channels: list[int] | int, count: int, name: str) -> list[int]:
    chosen = list(range(min(channels, count))) if isinstance(channels, int) else [int(c) for c in channels]
    bad = [c for c in chosen if not 0 <= c < count]
    if bad or not chosen:
        raise TransferlabError(f"channels {bad or chosen} out of range: layer '{name}' has channels 0..{count - 1}")
    return chosen


def _channel_means(target: Target, pixels: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Mean activation of channel chosen[k] on image k."""
    maps = run_to_layer(target, pixels)
    if maps.ndim != 4:
        raise TransferlabError(f"layer '{target.name}' gives {tuple(maps.shape)} outputs, not feature maps")
    return maps[torch.arange(len(chosen)), chosen].float().mean(dim=(1, 2))


def _gaussian_blur(x: torch.Tensor, sigma: float = 0.6) -> torch.Tensor:
    taps = torch.tensor([-1.0, 0.0, 1.0])
    k1 = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    k1 = k1 / k1.sum()
    kernel = (k1[:, None] * k1[None, :]).expand(3, 1, 3, 3).contiguous()
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, groups=3)


def _ascend(target: Target, image: torch.Tensor, chosen: torch.Tensor, steps: int,
            gen: torch.Generator) -> torch.Tensor:
    """`steps` of regularised gradient ascent on (K, 3, s, s) pixels in 0..255."""
    image = image.clone().requires_grad_(True)
    # Adam's per-pixel step size does not depend on the gradient's scale, which varies by layer.
    opt = torch.optim.Adam([image], lr=_LR, maximize=True)
    shift = max(1, image.shape[-1] // 16)
    for step in range(steps):
        dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=gen))
        # Jitter: a pattern that only works at one exact pixel offset is not what the channel detects.
        objective = _channel_means(target, torch.roll(image, (dy, dx), (2, 3)), chosen).sum()
        (image.grad,) = torch.autograd.grad(objective, image)
        opt.step()
        with torch.no_grad():
            # L2 decay toward gray and periodic blur suppress the high frequencies ascent loves.
            image.sub_(_GRAY).mul_(1.0 - _DECAY).add_(_GRAY)
            if step % _BLUR_EVERY == _BLUR_EVERY - 1:
                image.copy_(_gaussian_blur(image))
            image.clamp_(0.0, 255.0)
    return image.detach()


def _schedule(size: int, steps: int) -> list[tuple[int, int]]:
    """(side, steps) per scale; the steps are shared out evenly."""
    sides = [max(8, round(size * f)) for f in _SCALES]
    share = [steps // len(sides)] * len(sides)
    share[-1] += steps - sum(share)
    return [(s, n) for s, n in zip(sides, share) if n > 0] or [(size, 0)]


def grow_filter_images(backbone_or_network: nn.Module, layer: str, channels: list[int] | int = 16,
                       size: int = 96, steps: int = 60, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (K, size, size, 3) uint8, mean activation on the starting noise (K,), mean
    activation on the final image (K,)) for the chosen channels of `layer`."""
    target = open_target(backbone_or_network, layer)
    gen = torch.Generator().manual_seed(seed)
    with preserved_modes(backbone_or_network):
        with torch.no_grad():
            probe = run_to_layer(target, torch.full((1, 3, size, size), _GRAY))
        chosen = torch.tensor(_channel_list(channels, probe.shape[1], target.name))
        noise = (_GRAY + _NOISE * torch.randn(len(chosen), 3, size, size, generator=gen)).clamp(0, 255)
        with torch.no_grad():
            baseline = _channel_means(target, noise, chosen)
        image = noise
        for side, count in _schedule(size, steps):
            image = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False)
            image = _ascend(target, image, chosen, count, gen)
        image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
        pixels = image.clamp(0, 255).round()
        with torch.no_grad():
            final = _channel_means(target, pixels, chosen)
    images = pixels.permute(0, 2, 3, 1).to(torch.uint8).numpy()
    return images, baseline.numpy().astype(np.float64), final.numpy().astype(np.float64)


def filter_images(backbone_or_network: nn.Module, layer: str, channels: list[int] | int = 16,
                  size: int = 96, steps: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images (K, size, size, 3) uint8, gains (K,)) for the chosen channels of `layer`.

    `channels` is a list of channel indices or a count of leading channels. A gain is the
    channel's mean activation on its final image divided by that on the starting noise;
    the starting activation can be near zero or negative for layers without a ReLU, which
    makes the ratio meaningless there: compare gains only where it is clearly positive, or
    use `grow_filter_images` for both levels."""
    images, start, final = grow_filter_images(backbone_or_network, layer, channels, size, steps, seed)
    return images, final / start
