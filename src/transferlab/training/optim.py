"""Optimizers and learning-rate schedules, built afresh for every phase and stepped every batch."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OPTIMIZERS, SCHEDULES
from ..errors import TransferlabError



def build_optimizer(groups: list[tuple[list[tuple[str, nn.Parameter]], float]], name: str,
                    weight_decay: float, momentum: float = 0.9, nesterov: bool = False
                    ) -> torch.optim.Optimizer:
    """One parameter group per (parameters, lr); biases and norm weights get no weight decay."""
    param_groups = []
    for params, lr in groups:
        decay = [p for n, p in params if p.ndim > 1]
        no_decay = [p for n, p in params if p.ndim <= 1]
        for ps, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if ps:
                param_groups.append({"params": ps, "lr": lr, "weight_decay": wd})
    if name == "sgd":
        return torch.optim.SGD(param_groups, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adam":
        return torch.optim.Adam(param_groups)
    if name == "adamw":
        return torch.optim.AdamW(param_groups)
    if name == "rmsprop":
        return torch.optim.RMSprop(param_groups, momentum=momentum, alpha=0.9, eps=1e-3)
    raise TransferlabError(f"--optimizer '{name}' is not known: choose one of {', '.join(OPTIMIZERS)}")


def build_schedule(optimizer: torch.optim.Optimizer, name: str, steps_per_epoch: int, epochs: int,
                   warmup_epochs: float = 0.0, milestones: tuple[int, ...] = (), gamma: float = 0.1
                   ) -> torch.optim.lr_scheduler.LRScheduler:
    """A schedule stepped after every batch; epochs and milestones are counted within the phase."""
    total = max(1, steps_per_epoch * epochs)
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total)
    if name not in SCHEDULES:
        raise TransferlabError(f"--schedule '{name}' is not known: choose one of {', '.join(SCHEDULES)}")
    bounds = [m * steps_per_epoch for m in sorted(milestones)]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if name == "step":
            return gamma ** sum(step >= b for b in bounds)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
