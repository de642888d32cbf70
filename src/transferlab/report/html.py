"""Self-contained HTML reports: one file per run, one per comparison, every image embedded.

A report must survive being mailed, archived or opened from a copied folder, so nothing in it
points outside the file: images are base64 data: URIs and the CSS sits in a <style> tag.
Only the comparison report links out, and only to run reports by relative path.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..common.atomic import write_text

THUMBNAIL_PX = 160
SPLIT_ORDER = ("train", "val", "test")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto;
       max-width: 1120px; padding: 0 16px; color: #222; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; word-break: break-word; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.subtitle { color: #555; margin-top: 0; }
.score { font-size: 1.3em; font-weight: 600; color: #1a5e9a; }
table { border-collapse: collapse; font-size: 0.9em; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f6f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { font-weight: normal; color: #444; }
img.figure { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #666; font-style: italic; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.gallery figure { margin: 0; width: 176px; border: 1px solid #ddd; padding: 6px; background: #fafafa; }
.gallery img { display: block; margin: 0 auto; }
.gallery figcaption { font-size: 0.8em; margin-top: 4px; word-break: break-word; }
.gallery .path { color: #777; font-size: 0.85em; }
.wrong { color: #b22; }
tr.best td { background: #e6f4e6; font-weight: 600; }
tr.failed td { background: #fbeaea; color: #733; }
.badge { display: inline-block; font-size: 0.75em; padding: 0 6px; border-radius: 8px;
         color: #fff; margin-left: 4px; }
.badge.best { background: #2e7d32; }
.badge.failed { background: #c62828; }
ul.files { font-family: monospace; font-size: 0.85em; }
"""


@dataclass
class GalleryItem:
    """One misclassified held-out image, as the run report's gallery shows it."""

    pixels: np.ndarray
    true: str
    predicted: str
    confidence: float
    path: str


# ---------------------------------------------------------------------------- small helpers

def _esc(value) -> str:
    return html.escape(str(value), quote=True)


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


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, np.generic))


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, css_class: str = "figure") -> str:
    return f'<img class="{css_class}" alt="{_esc(alt)}" src="{_data_uri(png)}">'


def _kv_table(pairs) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt(v))}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """A table from already-escaped cells; `numeric` column indices are right-aligned."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>{CSS}</style></head>"
            f"<body>{body}</body></html>\n")


def _write_atomic(path: Path, text: str) -> Path:
    return write_text(path, text)


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


def _header(run_dir: Path, config: dict, metrics: dict, split: str | None) -> str:
    strategy = config.get("strategy") or metrics.get("strategy") or "?"
    backbone = config.get("backbone") or "default backbone"
    if split:
        score = f"{split} accuracy {metrics[split]['accuracy']:.4f}"
    else:
        score = "no held-out score"
    return (f"<h1>{_esc(run_dir.name)}</h1>"
            f'<p class="subtitle">{_esc(strategy)} · {_esc(backbone)} · '
            f'<span class="score">{_esc(score)}</span></p>')


def _split_rows(metrics: dict) -> list[list[str]]:
    splits = metrics.get("splits") or {}
    names = [s for s in SPLIT_ORDER if s in splits or isinstance(metrics.get(s), dict)]
    rows = []
    for name in names:
        info, m = splits.get(name) or {}, metrics.get(name)
        m = m if isinstance(m, dict) else {}
        images = _fmt(info.get("images"))
        if "readable" in info and info["readable"] != info.get("images"):
            images += f" ({_fmt(info['readable'])} readable)"
        rows.append([_esc(name), _esc(images), _esc(_fmt(info.get("from"))),
                     *(_esc(_metric(m, k)) for k in ("accuracy", "balanced_accuracy",
                                                       "top5_accuracy", "log_loss"))])
    return rows


def _metric(m: dict, key: str) -> str:
    value = m.get(key)
    return f"{value:.4f}" if isinstance(value, (int, float)) else "—"


def _summary_section(metrics: dict) -> str:
    parts = ["<h2>Scores</h2>"]
    rows = _split_rows(metrics)
    if rows:
        parts.append(_table(["split", "images", "from", "accuracy", "balanced accuracy",
                             "top-5", "log loss"], rows, numeric={3, 4, 5, 6}))
    fit = [(k, v) for k, v in (metrics.get("fit") or {}).items() if _is_scalar(v)]
    if "seconds" in metrics:
        fit.append(("total seconds", metrics["seconds"]))
    if fit:
        parts.append("<h2>Training</h2>" + _kv_table(fit))
    return "".join(parts) + _skipped_section(metrics.get("skipped") or [])


def _skipped_section(skipped: list) -> str:
    if not skipped:
        return ""
    items = "".join(f"<li>{_esc(name)}</li>" for name in skipped)
    return (f"<h2>Skipped files</h2><p>{len(skipped)} unreadable image(s) were left out:</p>"
            f'<ul class="files">{items}</ul>')


def _curves_section(run_dir: Path, history: list[dict]) -> str:
    head = "<h2>Training curves</h2>"
    if not history:
        return head + '<p class="note">This run trained no epochs, so there are no curves.</p>'
    curves = run_dir / "curves.png"
    if not curves.is_file():
        return head + f'<p class="note">{len(history)} epoch(s) recorded, but curves.png is missing.</p>'
    return head + _img(curves.read_bytes(), "training curves")


def _confusion_section(m: dict, split: str) -> str:
    classes = list((m.get("per_class") or {}).keys())
    matrix = m.get("confusion_matrix")
    if not classes or matrix is None:
        return ""
    png = confusion_png(matrix, classes)
    return (f"<h2>Confusion matrix ({_esc(split)})</h2>"
            f"<p>Rows are the true class, columns the predicted one; shading is the row's fraction.</p>"
            + _img(png, f"confusion matrix on {split}"))


def _per_class_section(m: dict, split: str) -> str:
    per_class = m.get("per_class") or {}
    if not per_class:
        return ""
    rows = [[_esc(name), *(f"{s[k]:.3f}" for k in ("precision", "recall", "f1")),
             _esc(_fmt(s.get("support")))] for name, s in per_class.items()]
    return (f"<h2>Per class ({_esc(split)})</h2>"
            + _table(["class", "precision", "recall", "F1", "support"], rows, numeric={1, 2, 3, 4}))


def _gallery_figure(item: GalleryItem) -> str:
    caption = (f'true <b>{_esc(item.true)}</b> / predicted <b class="wrong">{_esc(item.predicted)}</b>'
               f" ({item.confidence:.0%})")
    alt = f"true {item.true}, predicted {item.predicted}"
    return (f"<figure>{_img(thumbnail_png(item.pixels), alt, 'thumb')}"
            f'<figcaption>{caption}<br><span class="path">{_esc(item.path)}</span></figcaption></figure>')


def _gallery_section(gallery: list[GalleryItem]) -> str:
    head = "<h2>Most confident mistakes</h2>"
    if not gallery:
        return head + '<p class="note">No misclassified images.</p>'
    return head + '<div class="gallery">' + "".join(_gallery_figure(g) for g in gallery) + "</div>"


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
    body = [_header(run_dir, config, metrics, split), _summary_section(metrics),
            _curves_section(run_dir, history)]
    if split:
        body += [_confusion_section(scored, split), _per_class_section(scored, split)]
    body += [_gallery_section(gallery), "<h2>Configuration</h2>", _kv_table(config.items())]
    title = f"{run_dir.name} — transferlab run report"
    return _write_atomic(run_dir / "report.html", _page(title, "".join(body)))


# ---------------------------------------------------------------------------- comparison report

def _run_links(runs) -> str:
    links = []
    for run in runs:
        rel = Path(run).as_posix()
        # quote(): a run folder with a space or '#' must still resolve as a relative file link
        links.append(f'<a href="{_esc(quote(rel + "/report.html"))}">{_esc(rel)}</a>')
    return "<br>".join(links)


def _status_cell(row: dict) -> str:
    parts = []
    if row.get("best"):
        parts.append('<span class="badge best">best</span>')
    if row.get("status") == "failed":
        parts.append('<span class="badge failed">failed</span> ' + _esc(row.get("error") or ""))
    links = _run_links(row.get("runs") or [])
    return " ".join(parts) + (("<br>" if parts else "") + links if links else "")


def _comparison_row(row: dict, columns: list[str]) -> str:
    classes = [c for c, on in (("best", row.get("best")),
                               ("failed", row.get("status") == "failed")) if on]
    attr = f' class="{" ".join(classes)}"' if classes else ""
    cells = "".join(_cell(row.get(c)) for c in columns)
    return f"<tr{attr}>{cells}<td>{_status_cell(row)}</td></tr>"


def _cell(value) -> str:
    numeric = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    return f'<td class="num">{_esc(_fmt(value))}</td>' if numeric else f"<td>{_esc(_fmt(value))}</td>"


def write_comparison_report(out_dir: Path, title: str, columns: list[str], rows: list[dict],
                            chart_png: Path | None) -> Path:
    """Write out_dir/report.html: the comparison table, the chart, links to each run's report.

    rows[i][column] fills the table; optional keys: "best" (highlighted), "status" ==
    "failed" with "error" (shown as failed), "runs" (run folders relative to out_dir).
    """
    out_dir = Path(out_dir)
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns) + "<th>runs</th>"
    body = "".join(_comparison_row(r, columns) for r in rows)
    parts = [f"<h1>{_esc(title)}</h1>", f"<p class=\"subtitle\">{len(rows)} configuration(s)</p>",
             f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"]
    if chart_png is not None and Path(chart_png).is_file():
        parts.append("<h2>Chart</h2>" + _img(Path(chart_png).read_bytes(), "comparison chart"))
    else:
        parts.append('<p class="note">No chart was drawn.</p>')
    return _write_atomic(out_dir / "report.html", _page(title, "".join(parts)))
