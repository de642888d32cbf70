"""Bilinear CNN heads (Lin et al. 2015) for fine-grained classes: the outer product of two feature
maps averaged over positions, signed square root, L2 normalisation, then a classifier; optionally
a 1x1 convolution that reduces channels first, or Tensor Sketch compact pooling (Gao et al. 2016).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads import build_head

# Keeps the signed square root's slope finite at 0 (1 / (2 sqrt(eps)) = 500), where the many
# exact zeros of ReLU features sit; small against the pooled values it shifts.
SQRT_EPS = 1e-6


def signed_sqrt_l2(z: torch.Tensor) -> torch.Tensor:
    return F.normalize(torch.sign(z) * torch.sqrt(z.abs() + SQRT_EPS), dim=1)


def match_sizes(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger map down to the smaller one's height and width."""
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    if a.shape[2:] != size:
        a = F.adaptive_avg_pool2d(a, size)
    if b.shape[2:] != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def bilinear_pool(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, C1, H, W), (B, C2, H, W) -> (B, C1*C2): sum over positions of a_p b_p^T, divided by H*W."""
    n = a.shape[2] * a.shape[3]
    return torch.bmm(a.flatten(2), b.flatten(2).transpose(1, 2)).flatten(1) / n


class TensorSketch(nn.Module):
    """Compact bilinear pooling: each position's outer product is sketched to `dim` values as the
    circular convolution of two count sketches (computed with FFTs), then averaged over positions.
    Its inner products estimate those of the full bilinear vectors without bias."""

    def __init__(self, c1: int, c2: int, dim: int, seed: int = 0):
        super().__init__()
        self.dim = dim
        gen = torch.Generator().manual_seed(seed)
        for i, c in enumerate((c1, c2)):
            self.register_buffer(f"hash{i}", torch.randint(dim, (c,), generator=gen))
            self.register_buffer(f"sign{i}", torch.randint(2, (c,), generator=gen).float() * 2 - 1)

    def _count_sketch(self, x: torch.Tensor, i: int) -> torch.Tensor:
        h, s = getattr(self, f"hash{i}"), getattr(self, f"sign{i}")
        project = torch.zeros(len(h), self.dim, device=x.device, dtype=x.dtype)
        project[torch.arange(len(h), device=x.device), h] = s.to(x.dtype)
        return x.flatten(2).transpose(1, 2) @ project  # (B, HW, dim)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa = torch.fft.rfft(self._count_sketch(a, 0), dim=-1)
        fb = torch.fft.rfft(self._count_sketch(b, 1), dim=-1)
        return torch.fft.irfft(fa * fb, n=self.dim, dim=-1).mean(1)


class BilinearHead(nn.Module):
    """Takes the tapped maps (one: symmetric B-CNN; two: asymmetric) and returns class scores.

    Each branch may get its own dropout (as in the Keras recipe that passes one layer's output
    through two Dropout(0.5) layers); the outer product, square root and normalisation run in
    float32 whatever the autocast setting, where bf16 or fp16 would lose the small values.
    """

    def __init__(self, channels: list[int], num_classes: int, head: str = "linear", dropout: float = 0.0,
                 branch_dropout: tuple[float, float] = (0.0, 0.0), reduce: int | None = None,
                 sketch: int | None = None, seed: int = 0):
        super().__init__()
        self.symmetric = len(channels) == 1
        self.reduce = nn.ModuleList([_reduce(c, reduce) for c in channels]) if reduce else None
        c = [reduce] * len(channels) if reduce else list(channels)
        c1, c2 = c[0], c[-1]
        self.branch_dropout = nn.ModuleList([nn.Dropout(p) if p > 0 else nn.Identity() for p in branch_dropout])
        self.sketch = TensorSketch(c1, c2, sketch, seed) if sketch else None
        self.dim = sketch or c1 * c2
        self.classifier = build_head(head, self.dim, num_classes, dropout)

    def pooled(self, maps: tuple[torch.Tensor, ...] | torch.Tensor) -> torch.Tensor:
        """The unit-length bilinear vector of each image."""
        maps = (maps,) if isinstance(maps, torch.Tensor) else tuple(maps)
        if self.reduce is not None:
            maps = tuple(r(m) for r, m in zip(self.reduce, maps))
        a, b = maps[0], maps[-1]
        a, b = self.branch_dropout[0](a), self.branch_dropout[1](b)
        with torch.autocast(device_type=a.device.type, enabled=False):
            a, b = match_sizes(a.float(), b.float())
            z = self.sketch(a, b) if self.sketch is not None else bilinear_pool(a, b)
            return signed_sqrt_l2(z)

    def forward(self, maps) -> torch.Tensor:
        return self.classifier(self.pooled(maps))


def _reduce(channels: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))


class BilinearFeatures(nn.Module):
    """A frozen backbone cut at one tapped layer, giving each image's symmetric bilinear vector:
    the upper triangle of the mean outer product of the tapped map (the lower one repeats it),
    signed square root, L2 normalisation. As a backbone of the `features` strategy it is computed
    once per image and cached; a linear classifier on it gets most of a fine-tuned bilinear CNN's
    gain on fine-grained classes for the cost of one frozen pass."""

    def __init__(self, tapped: nn.Module, channels: int, layer: str):
        super().__init__()
        self.tapped = tapped
        self.channels = channels
        rows, cols = torch.triu_indices(channels, channels)
        # Flat positions in the C*C product: an index_select, which exports to ONNX as a Gather.
        self.register_buffer("upper", rows * channels + cols, persistent=False)
        self.num_features = len(self.upper)
        self.pooling = f"bilinear:{layer}"  # what its cached features depend on besides the weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (m,) = self.tapped(x)
        with torch.autocast(device_type=m.device.type, enabled=False):
            z = bilinear_pool(m.float(), m.float()).index_select(1, self.upper)
            return signed_sqrt_l2(z)
