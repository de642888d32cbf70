"""Progressive resizing (`--sizes 160,224`): the first shares of each phase's epochs train on
smaller images, the last share at the network's input size (fastai's course recipe: early
epochs are cheaper and the network learns coarse shapes first). Validation always runs at the
full size, so early stopping judges the model that will be saved.

The training data is one batch source per size (pixels, or the prefix cache built once per
size); a callback picks the size at the start of every epoch, from the epoch's place in its
phase alone, so a resumed run trains each epoch at the size an uninterrupted one does.
"""

from __future__ import annotations

import logging
from typing import Iterator

import torch

from .callbacks import Callback

log = logging.getLogger("transferlab")


class SizedBatches:
    """The batch source of the current size among several (each the same images, the same
    number of batches)."""

    def __init__(self, sources: dict[int, object]):
        self.sources = sources
        self.size = max(sources)

    def __len__(self) -> int:
        return len(self.sources[self.size])

    def batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.sources[self.size].batches(seed)


def size_for_epoch(sizes: tuple[int, ...], epoch: int, epochs: int) -> int:
    """Epoch `epoch` (0-based) of a phase of `epochs`: equal shares per size, in order, counted
    from the end, so the last epoch is always at the full size (and a short phase drops the
    smallest sizes first)."""
    k = len(sizes)
    return sizes[max(0, k - 1 - (max(epochs, 1) - 1 - epoch) * k // max(epochs, 1))]


class ProgressiveResizing(Callback):
    order = -20  # before the progress bar sizes its epoch

    def __init__(self, sizes: tuple[int, ...]):
        self.sizes = tuple(sizes)

    def on_epoch_begin(self, trainer) -> None:
        data = trainer.train_data
        size = size_for_epoch(self.sizes, trainer.epoch, trainer.phase.epochs)
        if size != data.size:
            log.info(f"{trainer.phase.name}: training at {size} px from epoch {trainer.epoch + 1}")
        data.size = size

    def on_fit_end(self, trainer) -> None:
        trainer.train_data.size = max(self.sizes)
