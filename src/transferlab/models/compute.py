"""A backbone's own compute: its native input size and the floating-point operations of one
image through it, counted on a randomly initialised copy (no weights needed), for auto's cost
model: the seconds measured on one backbone scale to any other timm backbone by these."""

from __future__ import annotations

import functools

import torch

from .backbones import check_backbone, registered


@functools.lru_cache(maxsize=64)
def native_size(backbone: str) -> int:
    """The input side the backbone's weights were trained at (timm's pretrained config)."""
    import timm

    check_backbone(backbone)
    entry = registered(backbone)
    if entry is not None:
        return int(entry.input_size)
    model = timm.create_model(backbone, pretrained=False, num_classes=0)
    return int(timm.data.resolve_model_data_config(model)["input_size"][-1])


@functools.lru_cache(maxsize=64)
def gflops(backbone: str, image_size: int | None = None) -> float:
    """Billions of floating-point operations of one image through the backbone's pooled features
    at `image_size` (its native size by default): convolutions and matrix products, as
    torch.utils.flop_counter counts them."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    size = image_size or native_size(backbone)
    entry = registered(backbone)
    # On the meta device: shapes only, no memory and no arithmetic (0.1-0.3 s a backbone).
    with torch.device("meta"):
        model = entry.create(size) if entry is not None else timm.create_model(backbone, pretrained=False,
                                                                                num_classes=0)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9
