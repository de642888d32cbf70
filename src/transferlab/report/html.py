"""Self-contained HTML reports: one file per run, one per comparison, every image embedded.

A report must survive being mailed, archived or opened from a copied folder, so nothing in it
points outside the file: images are base64 data: URIs and the CSS sits in a <style> tag.
Only the comparison report links out, and only to run reports by relative path. Pages are
jinja2 templates (templates/) with autoescaping: names and paths can hold any character.
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import jinja2
import numpy as np

from ..common.atomic import write_text
from .trust import trust_section

THUMBNAIL_PX = 160
SPLIT_ORDER = ("train", "val", "test")


@dataclass
class GalleryItem:
    """One misclassified held-out image, as the run report's gallery shows it."""

    pixels: np.ndarray
    true: str
    predicted: str
    confidence: float
    path: str


# ---------------------------------------------------------------------------- templates

def _fmt(value) -> str:
    """A table cell's text: short floats, blank-looking dash for missing values."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return _fmt_float(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    if isinstance(value, np.generic):
        return _fmt(value.item())
    return str(value)


def _fmt_float(v: float) -> str:
    if math.isnan(v):
        return "—"
    if math.isinf(v) or v == 0:
        return str(v)
    if abs(v) >= 1000:
        return f"{v:,.1f}"
    if v.is_integer():
        return f"{v:.1f}"  # "1.0", so a float column never shows a bare "1" beside "0.9123"
    # 4 significant digits keeps 0.9333 and 0.0003 readable; tiny learning rates go scientific.
    return f"{v:.4g}" if abs(v) >= 1e-4 else f"{v:.2e}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("transferlab.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["cell"] = _fmt
    return env


_ENV = _environment()


def render(template: str, **context) -> str:
    """A page or section from templates/, its values escaped."""
    return _ENV.get_template(template).render(**context)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ---------------------------------------------------------------------------- pictures

def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def thumbnail_png(pixels: np.ndarray, size: int = THUMBNAIL_PX) -> bytes:
    """PNG bytes of the image shrunk to `size` px on its longest side (never enlarged)."""
    from PIL import Image

    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    image = Image.fromarray(array).convert("RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return _png_bytes(image)


def _confusion_style(n: int) -> dict:
    """Sizes that keep 2 to ~50 classes legible: bigger figure, smaller text as classes grow."""
    return {
        "inches": min(4.0 + 0.42 * n, 14.0),
        "tick_font": 10 if n <= 10 else 8 if n <= 20 else 6 if n <= 40 else 4,
        "cell_font": 10 if n <= 10 else 7 if n <= 20 else 5 if n <= 30 else None,
    }


def _short(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def confusion_png(matrix, classes: list[str]) -> bytes:
    """PNG bytes of the confusion matrix: rows true class, columns predicted, counts in cells.

    Cells are shaded by the fraction of their row, so a rare class's mistakes show as clearly
    as a common one's; the numbers stay raw counts.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.int64).reshape(len(classes), len(classes))
    fraction = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    style = _confusion_style(len(classes))
    fig = Figure(figsize=(style["inches"] + 1.5, style["inches"]), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    _label_axes(ax, classes, style["tick_font"])
    if style["cell_font"]:
        _annotate_cells(ax, counts, fraction, style["cell_font"])
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _label_axes(ax, classes: list[str], font: int) -> None:
    ticks = list(range(len(classes)))
    # parse_math=False: a class named "$x$" is a name, not a formula to typeset
    names = [_short(c) for c in classes]
    ax.set_xticks(ticks, names, rotation=45 if len(classes) > 3 else 0, ha="right"
                  if len(classes) > 3 else "center", fontsize=font, parse_math=False)
    ax.set_yticks(ticks, names, fontsize=font, parse_math=False)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")


def _annotate_cells(ax, counts: np.ndarray, fraction: np.ndarray, font: int) -> None:
    for (i, j), count in np.ndenumerate(counts):
        colour = "white" if fraction[i, j] > 0.5 else "#222"
        ax.text(j, i, str(count), ha="center", va="center", fontsize=font, color=colour)


# ---------------------------------------------------------------------------- run report

def _score_split(metrics: dict) -> str | None:
    split = metrics.get("score_split")
    if isinstance(metrics.get(split), dict):
        return split
    return next((s for s in ("test", "val") if isinstance(metrics.get(s), dict)), None)


def _metric(m: dict, key: str) -> str:
    """A score, with its 95% interval beside it where metrics.json has one (`KEY_ci`; runs
    written before intervals were kept show the score alone)."""
    value = m.get(key)
    if not isinstance(value, (int, float)):
        return "—"
    interval = m.get(f"{key}_ci")
    return f"{value:.4f}" + (" ({:.3f}–{:.3f})".format(*interval) if interval else "")


def _split_rows(metrics: dict) -> list[list[str]]:
    splits = metrics.get("splits") or {}
    rows = []
    for name in (s for s in SPLIT_ORDER if s in splits or isinstance(metrics.get(s), dict)):
        info, m = splits.get(name) or {}, metrics.get(name)
        m = m if isinstance(m, dict) else {}
        images = _fmt(info.get("images"))
        if "readable" in info and info["readable"] != info.get("images"):
            images += f" ({_fmt(info['readable'])} readable)"
        rows.append([name, images, _fmt(info.get("from")),
                     *(_metric(m, k) for k in ("accuracy", "balanced_accuracy", "top5_accuracy", "log_loss"))])
    return rows


def _headline(metrics: dict, split: str | None) -> str:
    if not split:
        return "no held-out score"
    interval = metrics[split].get("accuracy_ci")
    return (f"{split} accuracy {metrics[split]['accuracy']:.4f}"
            + (" (95% CI {:.3f}–{:.3f})".format(*interval) if interval else "")
            + (" (test-time augmented)" if metrics.get("tta") else ""))


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, np.generic))


def _auto_section(metrics: dict) -> dict | None:
    """The candidates of an auto run, a row each."""
    auto = (metrics.get("fit") or {}).get("auto")
    if not auto:
        return None
    rows = [[c["candidate"], c["status"], *(_fmt(c.get(k)) for k in (
        "val_accuracy", "val_log_loss", "choice_accuracy", "seconds", "estimated_seconds"))]
        for c in auto["candidates"]]
    members = [[m["name"], _fmt(round(m["weight"], 3)), m["refit"]] for m in auto.get("members", [])]
    return {"chosen": auto["chosen"], "why": auto["why"], "rows": rows, "members": members,
            "images": auto.get("choice_images"), "source": auto.get("choice_from")}


def _trust(metrics: dict) -> dict | None:
    section = trust_section(metrics)
    if section and section["calibration"]:
        section["calibration"]["diagram"] = data_uri(section["calibration"]["diagram"])
    return section


def _folds_section(metrics: dict) -> dict | None:
    """The folds of a --folds run, a row each, and their mean and sample std."""
    folds = metrics.get("folds")
    if not folds:
        return None
    rows = [[str(k), _fmt(acc), _fmt(loss)]
            for k, (acc, loss) in enumerate(zip(folds["val_accuracy"], folds["val_log_loss"]), 1)]
    return {"k": folds["k"], "mean": f"{folds['mean']:.4f}", "std": f"{folds['std']:.4f}", "rows": rows,
            "seconds": _fmt(folds.get("seconds"))}


def write_run_report(run_dir: Path, config: dict, metrics: dict, history: list[dict],
                     gallery: list[GalleryItem]) -> Path:
    """Write run_dir/report.html, one self-contained page about the run, and return its path.

    Reads run_dir/curves.png when it exists. `metrics` needs the score split's metrics
    (metrics[metrics["score_split"]] as compute_metrics returns them); every other key is
    shown when present and skipped when not.
    """
    run_dir = Path(run_dir)
    split = _score_split(metrics)
    scored = metrics[split] if split else {}
    fit = [(k, v) for k, v in (metrics.get("fit") or {}).items() if _is_scalar(v)]
    if "seconds" in metrics:
        fit.append(("total seconds", metrics["seconds"]))
    per_class = scored.get("per_class") or {}
    curves = run_dir / "curves.png"
    matrix = scored.get("confusion_matrix")
    page = render(
        "run.html.j2", title=f"{run_dir.name} — transferlab run report", name=run_dir.name,
        strategy=config.get("strategy") or metrics.get("strategy") or "?",
        backbone=config.get("backbone") or "default backbone",
        score=_headline(metrics, split),
        split=split, split_rows=_split_rows(metrics), folds=_folds_section(metrics), fit=fit,
        auto=_auto_section(metrics), trust=_trust(metrics),
        skipped=metrics.get("skipped") or [],
        epochs=len(history), curves=data_uri(curves.read_bytes()) if history and curves.is_file() else None,
        confusion=data_uri(confusion_png(matrix, list(per_class))) if per_class and matrix is not None else None,
        per_class=[[name, *(f"{s[k]:.3f}" for k in ("precision", "recall", "f1")), _fmt(s.get("support"))]
                   for name, s in per_class.items()],
        gallery=[{"uri": data_uri(thumbnail_png(g.pixels)), "true": g.true, "predicted": g.predicted,
                  "confidence": f"{g.confidence:.0%}", "path": g.path} for g in gallery],
        config=list(config.items()))
    return write_text(run_dir / "report.html", page)


# ---------------------------------------------------------------------------- comparison report

def write_comparison_report(out_dir: Path, title: str, columns: list[str], rows: list[dict],
                            chart_png: Path | None) -> Path:
    """Write out_dir/report.html: the comparison table, the chart, links to each run's report.

    rows[i][column] fills the table; optional keys: "best" (highlighted), "status" ==
    "failed" with "error" (shown as failed), "runs" (run folders relative to out_dir).
    """
    out_dir = Path(out_dir)
    shown = []
    for row in rows:
        failed = row.get("status") == "failed"
        shown.append({
            "classes": " ".join(c for c, on in (("best", row.get("best")), ("failed", failed)) if on),
            "cells": [(_fmt(row.get(c)), _numeric(row.get(c))) for c in columns],
            "best": bool(row.get("best")), "failed": failed, "error": row.get("error") or "",
            # quote(): a run folder with a space or '#' must still resolve as a relative file link
            "links": [(quote(Path(r).as_posix() + "/report.html"), Path(r).as_posix()) for r in row.get("runs") or []],
        })
    chart = data_uri(Path(chart_png).read_bytes()) if chart_png is not None and Path(chart_png).is_file() else None
    page = render("comparison.html.j2", title=title, columns=columns, rows=shown, chart=chart)
    return write_text(out_dir / "report.html", page)


def _numeric(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
