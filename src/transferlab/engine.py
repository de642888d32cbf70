"""The one training loop: a phase trains given parameters for some epochs, stops early, keeps the best."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class Phase:
    """What trains and how: one optimizer and schedule, built afresh when the phase starts."""

    name: str
    epochs: int
    lr: float
    weight_decay: float = 1e-4
    patience: int = 10        # epochs without val-loss improvement before stopping
    min_delta: float = 1e-4


@dataclass
class PhaseResult:
    history: list[dict]
    best_epoch: int
    best_val_loss: float


def _val_pass(model: nn.Module, batches: Iterable, loss_fn) -> tuple[float, float]:
    model.eval()
    total = correct = 0
    loss_sum = 0.0
    with torch.inference_mode():
        for x, y in batches:
            logits = model(x)
            loss_sum += float(loss_fn(logits, y)) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
    return loss_sum / max(total, 1), correct / max(total, 1)


def run_phase(model: nn.Module, params: list[nn.Parameter], phase: Phase, train_batches: Batches,
              val_batches: Callable[[], Iterable] | None, progress: bool = True,
              epoch_offset: int = 0) -> PhaseResult:
    """Train `params` of `model`; with validation data, stop early and restore the best weights."""
    optimizer = torch.optim.AdamW(params, lr=phase.lr, weight_decay=phase.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(phase.epochs, 1))
    loss_fn = nn.CrossEntropyLoss()
    history: list[dict] = []
    best = (math.inf, 0, None)
    waited = 0
    bar = tqdm(range(phase.epochs), desc=phase.name, disable=not progress or None, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        model.train()
        total = correct = 0
        loss_sum = 0.0
        for x, y in train_batches(epoch):
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            total += len(y)
        schedule.step()
        row = {"phase": phase.name, "epoch": epoch_offset + epoch + 1,
               "train_loss": loss_sum / max(total, 1), "train_accuracy": correct / max(total, 1),
               "lr": optimizer.param_groups[0]["lr"]}
        if val_batches is not None:
            row["val_loss"], row["val_accuracy"] = _val_pass(model, val_batches(), loss_fn)
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{row.get('val_accuracy', float('nan')):.3f}")
        if val_batches is None:
            continue
        if row["val_loss"] < best[0] - phase.min_delta:
            best, waited = (row["val_loss"], row["epoch"], copy.deepcopy(model.state_dict())), 0
        else:
            waited += 1
            if waited >= phase.patience:
                break
    bar.close()
    if best[2] is not None:
        model.load_state_dict(best[2])
    best_epoch = best[1] if best[2] is not None else (history[-1]["epoch"] if history else 0)
    return PhaseResult(history, best_epoch, best[0])
