"""The one training loop every strategy uses.

A strategy is data: a list of phases, each naming the parameters that train (with their learning
rates), its epochs and which BatchNorm layers update their statistics. Every phase builds its
optimizer and schedule afresh. The loop stops early on a validation metric, restores the best
weights, writes an atomic checkpoint after every epoch and resumes from it to the very weights an
uninterrupted run reaches: each epoch's randomness (order, augmentation, dropout) is seeded from
(seed, phase, epoch) alone, so nothing else has to be carried across the interruption.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .distributed import World, current, parallel
from .errors import TransferlabError
from .optim import build_optimizer, build_schedule

log = logging.getLogger("transferlab")
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


@dataclass
class Phase:
    name: str
    epochs: int
    groups: list[tuple[list[str], float]]        # (parameter names, learning rate) that train
    bn_update: tuple[str, ...] = ()               # BatchNorm modules whose statistics update
    warmup_epochs: float = 0.0


@dataclass
class TrainSettings:
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    label_smoothing: float = 0.0
    class_weights: list[float] | None = None
    monitor: str = "val_loss"                     # or val_accuracy
    patience: int = 10
    min_delta: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    amp: bool = False                             # bf16 autocast (GPU)
    channels_last: bool = True


class BatchSource(Protocol):
    def __len__(self) -> int: ...                 # batches per epoch
    def batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_value: float
    seconds_training: float = 0.0
    images_trained: int = 0
    phases: list[str] = field(default_factory=list)
    replicas: list[str] = field(default_factory=list)  # weight digest of each rank at the end


def epoch_seed(seed: int, phase: int, epoch: int, rank: int = 0) -> int:
    """Rank 0's seed is a single process's, so a one-process run is unchanged; other ranks get
    their own augmentation and dropout draws instead of repeating rank 0's on other images."""
    entropy = [seed, phase, epoch] + ([rank] if rank else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def apply_phase(network: nn.Module, phase: Phase) -> list[tuple[str, nn.Parameter]]:
    """Set requires_grad and train/eval modes for a phase; return the trainable parameters.

    A module trains when it holds a trainable parameter; a module without parameters (dropout,
    activation) follows its parent. BatchNorm layers update statistics only when listed in
    `bn_update`: a frozen BatchNorm in train mode would change the features under a frozen network.
    """
    trainable = {n for names, _ in phase.groups for n in names}
    unknown = trainable - {n for n, _ in network.named_parameters()}
    if unknown:
        raise ValueError(f"phase {phase.name}: unknown parameters {sorted(unknown)[:3]}")
    params = []
    for name, p in network.named_parameters():
        p.requires_grad_(name in trainable)
        if name in trainable:
            params.append((name, p))
    bn_update = set(phase.bn_update)
    modes: dict[str, bool] = {}
    for name, module in network.named_modules():
        mine = [f"{name}.{n}" if name else n for n, _ in module.named_parameters()]
        mode = any(n in trainable for n in mine) if mine else modes.get(name.rpartition(".")[0], False)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            mode = name in bn_update
        module.training = modes[name] = mode
    return params


def save_checkpoint(directory: Path, state: dict) -> None:
    """torch.save to a temporary file, then rename: a kill mid-write leaves the last checkpoint."""
    tmp = directory / f".{CHECKPOINT}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, directory / CHECKPOINT)


def load_checkpoint(directory: Path) -> dict | None:
    path = Path(directory) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code runs
    except Exception as err:
        raise TransferlabError(f"cannot read checkpoint '{path}' ({type(err).__name__}): "
                               "delete it to start the run again") from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise TransferlabError(f"checkpoint '{path}' has format {state.get('format')}, expected "
                               f"{CHECKPOINT_FORMAT}: delete it to start the run again")
    return state


class Trainer:
    def __init__(self, network: nn.Module, settings: TrainSettings, checkpoint_dir: Path | None = None,
                 progress: bool = True, mix: Callable | None = None, fingerprint: str = "",
                 on_epoch: Callable[[dict], None] | None = None,
                 forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 deadline: float | None = None, world: World | None = None):
        self.network = network
        self.world = world or current()  # several ranks: DDP, sharded batches, summed metrics
        self.forward = forward or network       # what a batch goes through (a cached prefix skips the front)
        self.deadline = deadline                # time.perf_counter() by which training must end
        self.s = settings
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.progress = progress
        self.mix = mix
        self.fingerprint = fingerprint
        self.on_epoch = on_epoch
        self.device = torch.device(settings.device)
        weight = torch.tensor(settings.class_weights, dtype=torch.float32) if settings.class_weights else None
        self.loss_fn = nn.CrossEntropyLoss(weight=weight.to(self.device) if weight is not None else None,
                                           label_smoothing=settings.label_smoothing)

    # -- the loop ------------------------------------------------------------------------------

    def fit(self, phases: list[Phase], train: BatchSource, val: BatchSource | None,
            resume: dict | None = None) -> FitResult:
        net = self.network.to(self.device)
        if self.s.channels_last:
            net.to(memory_format=torch.channels_last)
        history: list[dict] = list(resume["history"]) if resume else []
        best = dict(resume["best"]) if resume else {"value": math.inf, "epoch": 0, "state": None}
        start_phase, start_epoch = resume["position"] if resume else (0, 0)
        if resume:
            if resume.get("fingerprint") != self.fingerprint:
                raise TransferlabError("the data changed since this run started (its images or labels "
                                       "differ): start a new run instead of resuming")
            net.load_state_dict(resume["model"])
        sign = -1.0 if self.s.monitor == "val_accuracy" else 1.0
        trained_seconds, trained_images = 0.0, 0
        last_epoch_seconds: float | None = None
        for pi, phase in enumerate(phases):
            if pi < start_phase:
                continue
            phase_deadline = self._phase_deadline(phases, pi)
            params = apply_phase(net, phase)
            optimizer = build_optimizer(
                [([(n, p) for n, p in params if n in set(names)], lr) for names, lr in phase.groups],
                self.s.optimizer, self.s.weight_decay, self.s.momentum, self.s.nesterov)
            schedule = build_schedule(optimizer, self.s.schedule, len(train), phase.epochs,
                                      phase.warmup_epochs, self.s.milestones, self.s.gamma)
            step = parallel(self.world, net, self.forward, self.device)
            first, waited = 0, 0
            if resume and pi == start_phase:
                first, waited = start_epoch, resume["waited"]
                if first > 0:
                    optimizer.load_state_dict(resume["optimizer"])
                    schedule.load_state_dict(resume["schedule"])
            stop = False
            for e in range(first, phase.epochs):
                if phase_deadline is not None and self.world.agree(
                        last_epoch_seconds is not None and time.perf_counter() + last_epoch_seconds > phase_deadline):
                    log.info(f"{phase.name}: the time budget allows no more epochs")
                    if e == first:
                        break  # nothing ran in this phase: nothing to restore or checkpoint
                    if best["state"] is not None:
                        net.load_state_dict(best["state"])
                    self._checkpoint((pi + 1, 0), history, best, waited, optimizer, schedule)
                    break
                torch.manual_seed(epoch_seed(self.s.seed, pi, e, self.world.rank))
                started = time.perf_counter()
                row = self._train_epoch(phase, pi, e, train, optimizer, schedule, step)
                self.world.broadcast_buffers(net)
                trained_seconds += time.perf_counter() - started
                trained_images += row.pop("images")
                if val is not None:
                    row["val_loss"], row["val_accuracy"] = self.evaluate(val)
                last_epoch_seconds = time.perf_counter() - started
                row["seconds"] = round(last_epoch_seconds, 3)
                row["epoch"] = len(history) + 1
                history.append(row)
                improved = False
                if val is not None:
                    value = sign * row[self.s.monitor]
                    if value < best["value"] - self.s.min_delta:
                        best = {"value": value, "epoch": row["epoch"],
                                "state": copy.deepcopy(net.state_dict())}
                        waited, improved = 0, True
                    else:
                        waited += 1
                        stop = waited >= self.s.patience
                self._log_epoch(row, improved)
                phase_over = stop or e + 1 == phase.epochs
                if phase_over and best["state"] is not None:
                    net.load_state_dict(best["state"])
                position = (pi + 1, 0) if phase_over else (pi, e + 1)
                self._checkpoint(position, history, best, waited, optimizer, schedule)
                if self.on_epoch is not None:
                    self.on_epoch(row)
                if stop:
                    log.info(f"{phase.name}: no {self.s.monitor} improvement for {waited} epochs, "
                             f"stopping; best epoch {best['epoch']}")
                    break
        if best["state"] is not None:
            net.load_state_dict(best["state"])
        best_epoch = best["epoch"] or (history[-1]["epoch"] if history else 0)
        return FitResult(history, best_epoch, sign * best["value"] if best["state"] is not None else math.nan,
                         trained_seconds, trained_images, [p.name for p in phases], self.world.digests(net))

    def _phase_deadline(self, phases: list[Phase], pi: int) -> float | None:
        """The remaining time, shared among the remaining phases in proportion to their epochs."""
        if self.deadline is None:
            return None
        remaining = [p.epochs for p in phases[pi:]]
        now = time.perf_counter()
        return now + max(self.deadline - now, 0.0) * remaining[0] / max(sum(remaining), 1)

    def _train_epoch(self, phase: Phase, pi: int, e: int, train: BatchSource, optimizer, schedule,
                     net: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        total = correct = 0
        loss_sum = 0.0
        bar = tqdm(train.batches(epoch_seed(self.s.seed, pi, e)), total=len(train), leave=False,
                   desc=f"{phase.name} {e + 1}/{phase.epochs}", disable=not self.progress or None)
        for x, y in bar:
            x, y = self._to_device(x), y.to(self.device, non_blocking=True)
            target = y
            if self.mix is not None:
                x, target = self.mix(x.float(), y)
            with self._autocast():
                logits = net(x)
                loss = self.loss_fn(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            n = len(y)
            loss_sum += float(loss.detach()) * n
            truth = target.argmax(1) if target.ndim == 2 else target
            correct += int((logits.detach().argmax(1) == truth).sum())
            total += n
            bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
        bar.close()
        loss_sum, correct, total = self.world.sum(loss_sum, correct, total)
        return {"phase": phase.name, "train_loss": loss_sum / max(total, 1),
                "train_accuracy": correct / max(total, 1), "lr": optimizer.param_groups[0]["lr"],
                "images": int(total)}

    def evaluate(self, data: BatchSource) -> tuple[float, float]:
        """Mean loss and accuracy with the network in eval mode (modes restored afterwards); over
        all ranks' shards when several train."""
        modes = {m: m.training for m in self.network.modules()}
        self.network.eval()
        total = correct = 0
        loss_sum = 0.0
        try:
            with torch.inference_mode(), self._autocast():
                for x, y in data.batches(0):
                    x, y = self._to_device(x), y.to(self.device)
                    logits = self.forward(x).float()
                    loss_sum += float(self.loss_fn(logits, y)) * len(y)
                    correct += int((logits.argmax(1) == y).sum())
                    total += len(y)
        finally:
            for m, mode in modes.items():
                m.training = mode
        loss_sum, correct, total = self.world.sum(loss_sum, correct, total)
        return loss_sum / max(total, 1), correct / max(total, 1)

    # -- helpers -------------------------------------------------------------------------------

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.s.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self):
        if self.s.amp and self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return nullcontext()

    def _checkpoint(self, position, history, best, waited, optimizer, schedule) -> None:
        if self.checkpoint_dir is None:
            return
        save_checkpoint(self.checkpoint_dir, {
            "format": CHECKPOINT_FORMAT, "position": list(position), "history": history,
            "model": self.network.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "best": best, "waited": waited,
            "fingerprint": self.fingerprint})
        from .runs import write_history

        write_history(self.checkpoint_dir / "history.csv", history)

    def _log_epoch(self, row: dict, improved: bool) -> None:
        text = (f"epoch {row['epoch']:3d} {row['phase']:<9s} loss {row['train_loss']:.4f} "
                f"acc {row['train_accuracy']:.4f}")
        if "val_loss" in row:
            text += f" | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
        log.info(text + f" | {row['seconds']:.1f} s" + (" *" if improved else ""))
