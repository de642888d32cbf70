"""The one training loop every strategy uses.

A strategy is data: a list of phases, each naming the parameters that train (with their learning
rates), its epochs and which BatchNorm layers update their statistics. Every phase builds its
optimizer and schedule afresh. Everything around the loop (early stopping with best-weights
restore, checkpoints and resume, the time budget, progress, logging, TensorBoard) is a callback
(callbacks.py). Each epoch's randomness (order, augmentation, dropout) is seeded from
(seed, phase, epoch) alone, so a resumed run reaches the very weights an uninterrupted one does.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from .callbacks import Callback, EarlyStopping, EpochLog, ProgressBar
from .distributed import World, current, parallel
from .optim import build_optimizer, build_schedule


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
    amp_dtype: str = "auto"                       # auto: bf16 on a GPU that has it, else fp16; or bf16, fp16
    channels_last: bool = True
    accumulate: int = 1                           # batches per optimizer step
    clip_grad: float = 0.0                        # max gradient norm (0 = off)


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


class Trainer:
    """Runs phases over batch sources; `forward` is what a batch goes through (the network, or
    the part of it after a cached prefix). Callbacks see this object as the training state."""

    def __init__(self, network: nn.Module, settings: TrainSettings, *, callbacks: Sequence[Callback] = (),
                 progress: bool = True, mix: Callable | None = None, fingerprint: str = "",
                 forward: Callable[[torch.Tensor], torch.Tensor] | None = None, world: World | None = None):
        self.network = network
        self.world = world or current()  # several ranks: DDP, sharded batches, summed metrics
        self.forward = forward or network
        self.s = settings
        self.mix = mix
        self.fingerprint = fingerprint    # of the data: a checkpoint of other data cannot resume
        self.device = torch.device(settings.device)
        self.early_stopping = EarlyStopping(settings.monitor, settings.patience, settings.min_delta)
        defaults = [self.early_stopping, EpochLog()] + ([ProgressBar()] if progress else [])
        self.callbacks = sorted([*defaults, *callbacks], key=lambda cb: cb.order)
        weight = torch.tensor(settings.class_weights, dtype=torch.float32) if settings.class_weights else None
        self.loss_fn = nn.CrossEntropyLoss(weight=weight.to(self.device) if weight is not None else None,
                                           label_smoothing=settings.label_smoothing)

    # -- the loop ------------------------------------------------------------------------------

    def fit(self, phases: list[Phase], train: BatchSource, val: BatchSource | None) -> FitResult:
        self.phases, self.train_data, self.val_data = phases, train, val
        self.history: list[dict] = []
        self.position = (0, 0)  # (phase, epoch) to start from; a resumed checkpoint moves it
        self.seconds_training, self.images_trained = 0.0, 0
        self.stop_fit = False  # a callback ends training altogether (the LR finder's sweep is done)
        self.network.to(self.device)
        if self.s.channels_last:
            self.network.to(memory_format=torch.channels_last)
        self._call("on_fit_begin")
        try:
            for pi in range(self.position[0], len(phases)):
                self._run_phase(pi)
        finally:
            self._call("on_fit_end")
        es = self.early_stopping
        return FitResult(self.history, es.best_epoch or (self.history[-1]["epoch"] if self.history else 0),
                         es.best_value, self.seconds_training, self.images_trained, [p.name for p in phases],
                         self.world.digests(self.network))

    def _run_phase(self, pi: int) -> None:
        self.phase_index, self.phase = pi, self.phases[pi]
        self.first_epoch = self.position[1] if pi == self.position[0] else 0
        self.stop_phase = False
        if self.stop_fit:
            return
        params = apply_phase(self.network, self.phase)
        self.optimizer = build_optimizer([([(n, p) for n, p in params if n in set(names)], lr)
                                          for names, lr in self.phase.groups],
                                         self.s.optimizer, self.s.weight_decay, self.s.momentum, self.s.nesterov)
        self.schedule = build_schedule(self.optimizer, self.s.schedule, self.steps_per_epoch, self.phase.epochs,
                                       self.phase.warmup_epochs, self.s.milestones, self.s.gamma)
        # float16 gradients underflow without loss scaling; bf16 (and float32) need none
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.step = parallel(self.world, self.network, self.forward, self.device)
        self._call("on_phase_begin")
        for self.epoch in range(self.first_epoch, self.phase.epochs):
            if self.stop_fit:
                break
            self._call("on_epoch_begin")
            if self.stop_phase:
                break
            row = self._run_epoch()
            self.history.append(row)
            self._call("on_epoch_end", row)
            if self.stop_phase:
                break
        self._call("on_phase_end")

    def _run_epoch(self) -> dict:
        torch.manual_seed(epoch_seed(self.s.seed, self.phase_index, self.epoch, self.world.rank))
        started = time.perf_counter()
        row = self._train_epoch()
        self.world.broadcast_buffers(self.network)
        self.seconds_training += time.perf_counter() - started
        self.images_trained += row.pop("images")
        if self.val_data is not None:
            with self.evaluation_weights():
                row["val_loss"], row["val_accuracy"] = self.evaluate(self.val_data)
        row["seconds"] = round(time.perf_counter() - started, 3)
        row["epoch"] = len(self.history) + 1
        return row

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_data) / self.s.accumulate)

    def _train_epoch(self) -> dict:
        total = correct = 0
        loss_sum = 0.0
        batches = self.train_data.batches(epoch_seed(self.s.seed, self.phase_index, self.epoch))
        for group in _groups(batches, self.s.accumulate):
            # Each batch's loss is weighted by its share of the group's images, so N accumulated
            # batches take the step one batch of all their images would.
            images = sum(len(y) for _, y in group)
            self.optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for x, y in group:
                x, y = self._to_device(x), y.to(self.device, non_blocking=True)
                target = y
                if self.mix is not None:
                    x, target = self.mix(x.float(), y)
                with self._autocast():
                    logits = self.step(x)
                    loss = self.loss_fn(logits.float(), target)
                self.scaler.scale(loss * (len(y) / images)).backward()
                batch_loss = float(loss.detach())
                step_loss += batch_loss * len(y) / images
                loss_sum += batch_loss * len(y)
                truth = target.argmax(1) if target.ndim == 2 else target
                correct += int((logits.detach().argmax(1) == truth).sum())
                total += len(y)
                self._call("on_batch_end", {"loss": loss_sum / total, "accuracy": correct / total, "images": total})
            lr = max(g["lr"] for g in self.optimizer.param_groups)
            self._optimizer_step()
            self.schedule.step()
            self._call("on_step_end", {"loss": step_loss, "lr": lr})
            if self.stop_phase or self.stop_fit:
                break
        loss_sum, correct, total = self.world.sum(loss_sum, correct, total)
        return {"phase": self.phase.name, "train_loss": loss_sum / max(total, 1),
                "train_accuracy": correct / max(total, 1), "lr": self.optimizer.param_groups[0]["lr"],
                "images": int(total)}

    def _optimizer_step(self) -> None:
        if self.s.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.s.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def evaluation_state(self) -> dict:
        """The weights evaluation, the best-epoch choice and the saved model use: the network's
        own, or those a callback keeps instead (the EMA's average of them)."""
        for callback in self.callbacks:
            state = callback.evaluation_weights(self)
            if state is not None:
                return state
        return self.network.state_dict()

    @contextmanager
    def evaluation_weights(self):
        """The network holds its evaluation state inside the block, its own weights after it."""
        state = next((s for cb in self.callbacks if (s := cb.evaluation_weights(self)) is not None), None)
        if state is None:
            yield
            return
        own = {k: v.clone() for k, v in self.network.state_dict().items()}
        self.network.load_state_dict(state)
        try:
            yield
        finally:
            self.network.load_state_dict(own)

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

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.s.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """Mixed precision: on a GPU by default (bf16 where it has it, else fp16); on a CPU only
        when a dtype is asked for explicitly."""
        if not self.s.amp or (self.device.type != "cuda" and self.s.amp_dtype == "auto"):
            return None
        if self.s.amp_dtype == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[self.s.amp_dtype]

    def _autocast(self):
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()


def _groups(batches: Iterator, size: int) -> Iterator[list]:
    """Consecutive batches in lists of `size` (the last may be shorter)."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
