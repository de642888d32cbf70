"""A head trained by gradient on cached features (`--strategy features --head mlp:512`): the
engine's loop over tensors instead of pixels, with the run's callbacks, or the LR sweep."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..config import RunConfig
from .batches import TensorBatches
from .callbacks import Callback
from .distributed import World
from .engine import Phase, Trainer
from .fit import tool_callbacks, train_settings
from .lr_find import LRSweep, sweep_phase


def fit_head(head: nn.Module, cfg: RunConfig, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None,
             y_val: np.ndarray | None, progress: bool, callbacks: Sequence[Callback] = (),
             sweep: LRSweep | None = None) -> tuple[list[dict], int | None]:
    """Train `head` on the features; returns (the history, the best epoch). With `sweep`, the
    sweep's steps instead (no validation, none of the usual tools)."""
    # One process's work even under torchrun (the features strategy runs on rank 0 alone).
    tools = [sweep] if sweep is not None else tool_callbacks(cfg)
    trainer = Trainer(head, train_settings(cfg, channels_last=False), callbacks=[*tools, *callbacks],
                      progress=progress, world=World())
    train_batches = TensorBatches(torch.from_numpy(x_train), torch.from_numpy(y_train), cfg.batch_size, shuffle=True)
    phase = Phase("head", cfg.epochs, [([n for n, _ in head.named_parameters()], cfg.lr)])
    if sweep is not None:
        phase = sweep_phase(phase, math.ceil(len(train_batches) / cfg.accumulate), sweep.steps)
    val = TensorBatches(torch.from_numpy(x_val), torch.from_numpy(y_val), 256) if x_val is not None else None
    result = trainer.fit([phase], train_batches, val)
    head.eval()
    return result.history, result.best_epoch
