"""Callbacks: what the engine does around its loop, each a small object with hooks at the fit,
phase, epoch and batch boundaries (Keras's names). Early stopping, checkpoints, the time budget,
progress bars and the epoch log are callbacks; so are TensorBoard (report/tensorboard.py) and
anything a user passes to `fit(callbacks=...)`.

Every hook receives the Trainer, whose attributes are the state of training: `network`,
`phases`, `phase_index`, `phase`, `first_epoch` (where this phase starts: 0, or later when
resumed), `epoch`, `history` (one dict per finished epoch), `optimizer`, `schedule`, `world`,
`stop_phase` (set it to end the phase; the next one still runs) and `stop_fit` (set it to end
training). The training tools (ema.py, lr_find.py, resizing.py) are callbacks too.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import torch

from ..common.atomic import replacing
from ..common.progress import progress_bar
from ..common.run_files import write_history
from ..errors import TransferlabError

log = logging.getLogger("transferlab")
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 2


class Callback:
    order = 0  # lower runs first, ties in the order given; Checkpoint runs last to record the rest

    def on_fit_begin(self, trainer) -> None: ...
    def on_phase_begin(self, trainer) -> None: ...
    def on_epoch_begin(self, trainer) -> None: ...
    def on_batch_end(self, trainer, logs: dict) -> None: ...   # running loss, accuracy, images
    def on_step_end(self, trainer, logs: dict) -> None: ...    # after each optimizer step: its loss, lr
    def on_epoch_end(self, trainer, row: dict) -> None: ...    # the epoch's history row
    def on_phase_end(self, trainer) -> None: ...
    def on_fit_end(self, trainer) -> None: ...                 # also when training failed

    def state_dict(self) -> dict:
        """What a resumed run needs to continue this callback as if never interrupted."""
        return {}

    def load_state_dict(self, state: dict) -> None: ...

    def evaluation_weights(self, trainer) -> dict | None:
        """A state dict to evaluate, choose the best epoch and save with instead of the network's
        own weights (an average of them), or None."""
        return None


class EarlyStopping(Callback):
    """Ends a phase after `patience` epochs without an improvement of `monitor` by `min_delta`,
    and restores the best weights at the end of every phase. The best is kept across phases: a
    later phase must beat the earlier ones to replace their weights."""

    def __init__(self, monitor: str = "val_loss", patience: int = 10, min_delta: float = 1e-4):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.sign = -1.0 if monitor == "val_accuracy" else 1.0
        self.best, self.best_epoch, self.best_weights, self.waited = math.inf, 0, None, 0

    @property
    def best_value(self) -> float:
        return self.sign * self.best if self.best_weights is not None else math.nan

    def on_phase_begin(self, trainer) -> None:
        if trainer.first_epoch == 0:
            self.waited = 0

    def on_epoch_end(self, trainer, row: dict) -> None:
        if self.monitor not in row:
            return  # no validation data: nothing to compare
        value = self.sign * row[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.waited = value, row["epoch"], 0
            self.best_weights = copy.deepcopy(trainer.evaluation_state())
            return
        self.waited += 1
        if self.waited >= self.patience:
            trainer.stop_phase = True
            log.info(f"{trainer.phase.name}: no {self.monitor} improvement for {self.waited} epochs, "
                     f"stopping; best epoch {self.best_epoch}")

    def on_phase_end(self, trainer) -> None:
        if self.best_weights is not None:
            trainer.network.load_state_dict(self.best_weights)

    def state_dict(self) -> dict:
        return {"best": self.best, "epoch": self.best_epoch, "weights": self.best_weights, "waited": self.waited}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["epoch"]
        self.best_weights, self.waited = state["weights"], state["waited"]


class Budget(Callback):
    """Ends epochs early enough that the run finishes within `minutes` of `started` (plus at most
    one epoch), leaving time to score `reserve_images` afterwards. The remaining time is shared
    among the remaining phases in proportion to their epochs; an epoch starts only when one more
    of the last epoch's length still fits. Several ranks follow rank 0's decision."""

    def __init__(self, minutes: float, started: float | None = None, reserve_images: int = 0):
        self.minutes, self.reserve_images = minutes, reserve_images
        self.started = time.perf_counter() if started is None else started
        self.deadline = self.phase_deadline = math.inf
        self.last_epoch = self._epoch_started = None

    def on_fit_begin(self, trainer) -> None:
        reserve = self.reserve_images * seconds_per_image(trainer.network, trainer.device)
        self.deadline = self.started + self.minutes * 60 - reserve

    def on_phase_begin(self, trainer) -> None:
        remaining = [p.epochs for p in trainer.phases[trainer.phase_index:]]
        now = time.perf_counter()
        self.phase_deadline = now + max(self.deadline - now, 0.0) * remaining[0] / max(sum(remaining), 1)

    def on_epoch_begin(self, trainer) -> None:
        late = self.last_epoch is not None and time.perf_counter() + self.last_epoch > self.phase_deadline
        if trainer.world.agree(late):
            log.info(f"{trainer.phase.name}: the time budget allows no more epochs")
            trainer.stop_phase = True
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.last_epoch = time.perf_counter() - self._epoch_started


class EpochLimits(Callback):
    """Ends each named phase after the epochs given for it: a replayed fit stops where the fit it
    replays stopped (by its budget or early stopping), so no clock decides."""

    def __init__(self, limits: dict[str, int]):
        self.limits, self.done = dict(limits), 0

    def on_phase_begin(self, trainer) -> None:
        self.done = 0

    def on_epoch_begin(self, trainer) -> None:
        if self.done >= self.limits.get(trainer.phase.name, math.inf):
            trainer.stop_phase = True

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.done += 1


def epochs_per_phase(history: list[dict]) -> dict[str, int]:
    """How many epochs each phase of a fit ran, from its history rows."""
    counts: dict[str, int] = {}
    for row in history:
        counts[row["phase"]] = counts.get(row["phase"], 0) + 1
    return counts


def seconds_per_image(network: torch.nn.Module, device) -> float:
    """Inference time per image through the whole network (0 when its input size is unknown)."""
    size = getattr(network, "input_size", None)
    if not size:
        return 0.0
    was_training = network.training
    network.eval()
    x = torch.randint(0, 256, (16, 3, size, size), dtype=torch.uint8).to(device)
    with torch.inference_mode():
        network(x)  # the first call pays one-off costs
        start = time.perf_counter()
        network(x)
    network.train(was_training)
    return (time.perf_counter() - start) / len(x)


class Checkpoint(Callback):
    """After every epoch, `directory/checkpoint.pt` (weights, optimizer, schedule, history, the
    other callbacks' state; written whole, then renamed) and history.csv. A checkpoint already
    there is read now (so a damaged one fails before any slow work) and training resumes from it,
    ending with the weights an uninterrupted run reaches. `save=False` reads without writing
    (the ranks other than 0 of a data-parallel run)."""

    order = 100

    def __init__(self, directory: str | Path, save: bool = True):
        self.directory, self.save = Path(directory), save
        self.resume = load_checkpoint(self.directory)

    @property
    def epochs_done(self) -> int:
        return len(self.resume["history"]) if self.resume else 0

    def on_fit_begin(self, trainer) -> None:
        if self.resume is None:
            return
        if self.resume["fingerprint"] != trainer.fingerprint:
            raise TransferlabError("the data changed since this run started (its images or labels "
                                   "differ): start a new run instead of resuming")
        trainer.network.load_state_dict(self.resume["model"])
        trainer.history = list(self.resume["history"])
        trainer.position = tuple(self.resume["position"])
        for key, callback in callback_keys(trainer.callbacks):
            if key in self.resume["callbacks"]:
                callback.load_state_dict(self.resume["callbacks"][key])

    def on_phase_begin(self, trainer) -> None:
        if self.resume is not None and trainer.first_epoch > 0:
            trainer.optimizer.load_state_dict(self.resume["optimizer"])
            trainer.schedule.load_state_dict(self.resume["schedule"])
        self.resume = None  # consumed: later phases start afresh

    def on_epoch_end(self, trainer, row: dict) -> None:
        if not self.save:
            return
        states = {key: cb.state_dict() for key, cb in callback_keys(trainer.callbacks)}
        with replacing(self.directory / CHECKPOINT) as tmp:
            torch.save({"format": CHECKPOINT_FORMAT, "position": [trainer.phase_index, trainer.epoch + 1],
                        "history": trainer.history, "model": trainer.network.state_dict(),
                        "optimizer": trainer.optimizer.state_dict(), "schedule": trainer.schedule.state_dict(),
                        "callbacks": {k: s for k, s in states.items() if s}, "fingerprint": trainer.fingerprint},
                       tmp)
        write_history(self.directory / "history.csv", trainer.history)


def callback_keys(callbacks: list[Callback]) -> list[tuple[str, Callback]]:
    """A stable key per callback (its class name, numbered when repeated) for checkpoints."""
    seen: dict[str, int] = {}
    keys = []
    for cb in callbacks:
        name = type(cb).__name__
        seen[name] = seen.get(name, 0) + 1
        keys.append((name if seen[name] == 1 else f"{name}#{seen[name]}", cb))
    return keys


def load_checkpoint(directory: Path) -> dict | None:
    path = Path(directory) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code runs
    except Exception as err:
        raise TransferlabError(f"cannot read checkpoint '{path}' ({type(err).__name__}): "
                               "delete it to start the run again") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise TransferlabError(f"checkpoint '{path}' has format {found}, this transferlab reads "
                               f"{CHECKPOINT_FORMAT}: delete it to start the run again")
    return state


class ProgressBar(Callback):
    """A bar per epoch with the running loss and accuracy."""

    def on_epoch_begin(self, trainer) -> None:
        self.bar = progress_bar(total=len(trainer.train_data), unit="batch",
                                desc=f"{trainer.phase.name} {trainer.epoch + 1}/{trainer.phase.epochs}")

    def on_batch_end(self, trainer, logs: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{logs['loss']:.3f}", acc=f"{logs['accuracy']:.3f}")

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.bar.close()


class EpochLog(Callback):
    """One line per epoch; '*' marks a new best."""

    order = 10  # after EarlyStopping has judged the epoch

    def on_epoch_end(self, trainer, row: dict) -> None:
        text = (f"epoch {row['epoch']:3d} {row['phase']:<9s} loss {row['train_loss']:.4f} "
                f"acc {row['train_accuracy']:.4f}")
        if "val_loss" in row:
            text += f" | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
        best = trainer.early_stopping.best_epoch == row["epoch"]
        log.info(text + f" | {row['seconds']:.1f} s" + (" *" if best else ""))
