"""Training curves: loss and accuracy per epoch, train against val, with phase boundaries marked."""

from __future__ import annotations

import math
import pathlib

from ..common.atomic import replacing
from ..errors import TransferlabError

TRAIN_COLOUR = "#1f77b4"  # blue
VAL_COLOUR = "#d62728"  # red
BOUNDARY_COLOUR = "#555555"
PANELS = (("loss", "Loss"), ("accuracy", "Accuracy"))


def _value(row: dict, key: str) -> float:
    """The row's value as a float; NaN when it is missing, None or not a number."""
    try:
        v = float(row.get(key))
    except (TypeError, ValueError):
        return math.nan
    return v


def smooth_ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average with `weight` on the previous value (TensorBoard's slider).

    Bias-corrected like TensorBoard, so the first points are not pulled towards zero; NaNs
    stay NaN and do not disturb the average.
    """
    out: list[float] = []
    last, steps = 0.0, 0
    for v in values:
        if math.isnan(v):
            out.append(math.nan)
            continue
        last = last * weight + (1.0 - weight) * v
        steps += 1
        debias = 1.0 - weight ** steps
        out.append(last / debias if debias > 0 else v)
    return out


def _phase_starts(history: list[dict]) -> list[tuple[int, str]]:
    """(epoch, new phase name) wherever the phase changes from the row before."""
    starts = []
    for prev, row in zip(history, history[1:]):
        if row.get("phase") != prev.get("phase"):
            starts.append((int(row["epoch"]), str(row.get("phase"))))
    return starts


def _figure(history: list[dict], smooth: float):
    """Build the matplotlib Figure (no file written): used by plot_curves and by the tests."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not 0.0 <= smooth < 1.0:
        raise TransferlabError(f"curve smoothing {smooth} is out of range: use 0 (none) up to 0.99")
    epochs = [int(r["epoch"]) for r in history]
    fig = Figure(figsize=(10, 4), dpi=110)
    axes = fig.subplots(1, 2)
    for ax, (metric, title) in zip(axes, PANELS):
        for split, colour in (("train", TRAIN_COLOUR), ("val", VAL_COLOUR)):
            # Only the epochs that have a value: a series recorded every few epochs (or with a
            # failed evaluation) still draws as one connected line instead of lone dots.
            points = [(e, _value(r, f"{split}_{metric}")) for e, r in zip(epochs, history)]
            points = [(e, v) for e, v in points if math.isfinite(v)]
            if not points:
                continue
            xs, values = [e for e, _ in points], [v for _, v in points]
            marker = "o" if len(xs) <= 20 else None  # a short run's points stay visible
            if smooth > 0:
                ax.plot(xs, values, color=colour, alpha=0.25, linewidth=1.0, marker=marker,
                        markersize=3)
                ax.plot(xs, smooth_ema(values, smooth), color=colour, linewidth=1.8,
                        label=split)
            else:
                ax.plot(xs, values, color=colour, linewidth=1.6, marker=marker, markersize=3,
                        label=split)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + 0.08 * (hi - lo))  # headroom so phase names clear the curves
        if history:
            # The first phase has no boundary line, but its name still tells what came first.
            ax.annotate(str(history[0].get("phase", "")), xy=(0.0, 1.0),
                        xycoords="axes fraction", xytext=(3, -3), textcoords="offset points",
                        ha="left", va="top", fontsize=8, color=BOUNDARY_COLOUR)
        for epoch, phase in _phase_starts(history):
            ax.axvline(epoch, color=BOUNDARY_COLOUR, linestyle="--", linewidth=1.0)
            ax.annotate(phase, xy=(epoch, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -3), textcoords="offset points", ha="left", va="top",
                        fontsize=8, color=BOUNDARY_COLOUR)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if epochs and max(epochs) - min(epochs) < 2:  # else one epoch gets fractional ticks
            ax.set_xlim(min(epochs) - 1, max(epochs) + 1)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def plot_curves(history: list[dict], path: pathlib.Path, smooth: float = 0.0) -> pathlib.Path:
    """Write a PNG of loss and accuracy per epoch (train vs val) to `path` and return it.

    `history` rows hold phase, epoch (counted across the run from 1), train_loss,
    train_accuracy and optionally val_loss, val_accuracy; missing or NaN values leave gaps.
    A dashed line marks each epoch where the phase changes, labelled with the new phase.
    With 0 < smooth < 1 the exponential moving average is drawn solid over the faint raw values.
    The file is written atomically: a reader never sees half a PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = pathlib.Path(path)
    fig = _figure(history, smooth)
    FigureCanvasAgg(fig)
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path
