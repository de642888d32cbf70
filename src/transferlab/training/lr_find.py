"""The learning-rate finder (`transferlab lr-find`, `--lr find`): an exponential sweep of the rate
over a few hundred steps of the first phase that trains, on a copy of the network, recording
the smoothed loss at each rate (Smith's range test, as fastai's lr_find runs it), and the rates
it suggests: where the loss falls fastest ("steepest"), a point well inside its longest descent
("valley", the one `--lr find` uses), and a tenth of the rate of the lowest loss ("minimum").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .callbacks import Callback
from .engine import Phase

SUGGESTION = "valley"  # what --lr find trains with


class LRSweep(Callback):
    """Replaces the phase's schedule by an exponential rise of every group's rate, keeping their
    ratios (the head's rate goes from `start` to `end`), and ends training after `steps` steps or
    once the smoothed loss exceeds `diverge` times its minimum."""

    order = -10

    def __init__(self, start: float = 1e-7, end: float = 10.0, steps: int = 200, smoothing: float = 0.98,
                 diverge: float = 4.0):
        self.start, self.end, self.steps, self.smoothing, self.diverge = start, end, steps, smoothing, diverge
        self.rates: list[float] = []
        self.losses: list[float] = []      # smoothed, bias-corrected
        self.raw: list[float] = []
        self.phase = ""
        self._mean = 0.0

    def on_phase_begin(self, trainer) -> None:
        self.phase = trainer.phase.name
        top = max(g.get("initial_lr", g["lr"]) for g in trainer.optimizer.param_groups)
        ratio = self.end / self.start
        for g in trainer.optimizer.param_groups:
            g["initial_lr"] = g.get("initial_lr", g["lr"])
        trainer.schedule = torch.optim.lr_scheduler.LambdaLR(
            trainer.optimizer, lambda step: self.start * ratio ** (min(step, self.steps - 1) / (self.steps - 1)) / top)

    def on_step_end(self, trainer, logs: dict) -> None:
        loss = logs["loss"]
        self.raw.append(loss)
        self.rates.append(logs["lr"])
        self._mean = self.smoothing * self._mean + (1 - self.smoothing) * loss
        smoothed = self._mean / (1 - self.smoothing ** len(self.raw))
        self.losses.append(smoothed)
        if (len(self.raw) >= self.steps or not math.isfinite(smoothed)
                or (len(self.raw) > 10 and smoothed > self.diverge * min(self.losses))):
            trainer.stop_fit = True


def sweep_phase(first: Phase, steps_per_epoch: int, steps: int) -> Phase:
    """The first phase that trains, long enough for the sweep, with no warm-up."""
    return Phase(first.name, max(1, math.ceil(steps / max(steps_per_epoch, 1))), first.groups,
                 first.bn_update, 0.0)


@dataclass
class LRFindResult:
    rates: list[float]
    losses: list[float]                               # smoothed
    raw_losses: list[float]
    phase: str = ""
    suggestions: dict[str, float] = field(default_factory=dict)

    @property
    def suggestion(self) -> float:
        return self.suggestions[SUGGESTION]

    def to_dict(self) -> dict:
        return {"phase": self.phase, "suggestions": self.suggestions, "used": SUGGESTION, "steps": len(self.rates),
                "swept": [self.rates[0], self.rates[-1]] if self.rates else []}

    def plot(self, target: str | Path) -> Path:
        """Smoothed loss against rate (log scale), each suggestion marked; written whole."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from ..common.atomic import replacing

        fig = Figure(figsize=(7, 4.2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        rates, losses = np.asarray(self.rates), np.asarray(self.losses)
        keep = np.isfinite(losses)
        ax.plot(rates[keep], losses[keep], color="#2a7ab9", label="loss (smoothed)")
        for (name, rate), colour in zip(self.suggestions.items(), ("#d62728", "#2ca02c", "#9467bd")):
            y = float(np.interp(np.log(rate), np.log(rates[keep]), losses[keep]))
            ax.plot([rate], [y], "o", color=colour, label=f"{name}: {rate:.2e}" + (" (used)" if name == SUGGESTION else ""))
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (head)")
        ax.set_ylabel("training loss")
        finite = losses[keep]
        if len(finite):  # the divergence at the end would flatten the interesting part
            ax.set_ylim(finite.min() - 0.05 * abs(finite.min()), min(finite.max(), 2.5 * finite[0]) * 1.02)
        ax.set_title(f"learning-rate sweep (phase {self.phase})" if self.phase else "learning-rate sweep")
        ax.legend()
        fig.tight_layout()
        target = Path(target)
        with replacing(target) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        return target


def suggest(rates: list[float], losses: list[float]) -> dict[str, float]:
    """Suggested rates from a sweep's smoothed losses; each is one of the swept rates. The last
    points (where the loss runs away) are left out of steepest and valley."""
    rates_a, losses_a = np.asarray(rates, float), np.asarray(losses, float)
    finite = np.isfinite(losses_a)
    rates_a, losses_a = rates_a[finite], losses_a[finite]
    if len(rates_a) < 5:
        raise ValueError(f"the sweep has only {len(rates_a)} usable steps")
    lowest = int(np.argmin(losses_a))
    # the curve up to a little past its lowest point: beyond it the loss only diverges
    end = min(len(losses_a), lowest + max(2, len(losses_a) // 20) + 1)
    logs = np.log(rates_a[:end])
    slope = np.gradient(losses_a[:end], logs)
    steepest = int(np.argmin(slope[: max(lowest, 1) + 1]))
    # valley: the longest stretch over which the loss keeps falling, and a point two thirds
    # of the way down it (the rate is still rising safely, well before the minimum)
    best_start, best_len, start = 0, 0, 0
    for i in range(1, end):
        if losses_a[i] >= losses_a[i - 1]:
            start = i
        if i - start > best_len:
            best_start, best_len = start, i - start
    valley = best_start + round(2 * best_len / 3)
    minimum_rate = max(rates_a[lowest] / 10, rates_a[0])
    return {"steepest": float(rates_a[steepest]), "valley": float(rates_a[valley]),
            "minimum": float(rates_a[int(np.argmin(np.abs(np.log(rates_a) - np.log(minimum_rate))))])}
