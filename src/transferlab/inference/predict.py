"""`transferlab predict`: a saved run over files, folders and globs; top-k classes with their
probabilities as a table, CSV or JSON. Unreadable files are listed, never fatal."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from ..common.paths import cache_root
from ..data.sources import gather_files
from ..data.types import ImageRef
from ..errors import TransferlabError
from ..models import saved
from ..runtime.frozen import resolve_runtime
from .probabilities import predict_pixels

FORMATS = ("table", "csv", "json")


def predict(run: str | Path, paths: list[str], top_k: int = 3, tta: bool = False,
            batch_size: int = 32, progress: bool = True, runtime: str = "auto",
            cache_dir: str | Path | None = None) -> dict:
    """{"predictions": [{"path", "top": [{"class", "probability"}, ...]}], "unreadable": [...]}.

    `runtime`: where the network runs (runtime/frozen.py; auto is onnxruntime on a CPU when its
    graph is kept in the cache folder or the images are enough to pay its export back)."""
    top_classes(top_k, 1, f"--top-k {top_k}")  # refused before the run loads
    resolve_runtime(runtime, "cpu")
    model = saved.load(run)
    k = top_classes(top_k, len(model.classes), f"--top-k {top_k}")
    files = gather_files(paths)
    refs = [ImageRef.from_file(f) for f in files]
    proba, ok, failures = predict_pixels(model.network, refs, model.preprocess, batch_size, "cpu", progress, tta,
                                         runtime, cache_root(cache_dir))
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    readable = [f for f, good in zip(files, ok) if good]
    predictions = [{"path": str(f), "top": [{"class": model.classes[j], "probability": float(p[j])} for j in idx]}
                   for f, p, idx in zip(readable, proba, order)]
    return {"run": str(run), "tta": tta, "predictions": predictions,
            "unreadable": [str(f) for f in failures]}


def top_classes(top_k: int, classes: int, given: str) -> int:
    """How many classes to show per image, the one rule of `predict` and `serve`: more than the run
    has shows them all (as Hugging Face pipelines treat top_k); below 1 is refused in one line
    naming `given`, the option or parameter as the user wrote it."""
    if top_k < 1:
        raise TransferlabError(f"{given} must be at least 1 (any number above the classes shows them all)")
    return min(top_k, classes)


def render(result: dict, fmt: str) -> str:
    if fmt not in FORMATS:
        raise TransferlabError(f"--format '{fmt}' is not known: choose one of {', '.join(FORMATS)}")
    rows = result["predictions"]
    if fmt == "json":
        return json.dumps(result, indent=2) + "\n"
    k = max((len(r["top"]) for r in rows), default=0)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path"] + [f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "probability")])
        for r in rows:
            writer.writerow([r["path"]] + [v for t in r["top"] for v in (t["class"], f"{t['probability']:.6f}")])
        return buffer.getvalue()
    width = max([len("image")] + [len(r["path"]) for r in rows])
    lines = [f"{'image':<{width}}  top classes (probability)"]
    for r in rows:
        top = "  ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"])
        lines.append(f"{r['path']:<{width}}  {top}")
    return "\n".join(lines) + "\n"
