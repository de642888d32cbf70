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
from ..trust.unknown import UNKNOWN, Embedding, load_detector
from .probabilities import predict_pixels

FORMATS = ("table", "csv", "json")


def predict(run: str | Path, paths: list[str], top_k: int = 3, tta: bool = False,
            batch_size: int = 32, progress: bool = True, runtime: str = "auto",
            cache_dir: str | Path | None = None, reject: bool = False) -> dict:
    """{"predictions": [{"path", "top": [{"class", "probability"}, ...]}], "unreadable": [...]}.

    `runtime`: where the network runs (runtime/frozen.py; auto is onnxruntime on a CPU when its
    graph is kept in the cache folder or the images are enough to pay its export back).
    `reject`: each prediction also says "unknown_score" (the distance to the nearest training
    image) and "unknown" (beyond the run's threshold: of no class the model knows; its "class" is
    then "unknown")."""
    top_classes(top_k, 1, f"--top-k {top_k}")  # refused before the run loads
    resolve_runtime(runtime, "cpu")
    detector = _detector(run) if reject else None  # a run without one is refused before the work
    model = saved.load(run)
    k = top_classes(top_k, len(model.classes), f"--top-k {top_k}")
    files = gather_files(paths)
    refs = [ImageRef.from_file(f) for f in files]
    proba, ok, failures = predict_pixels(model.network, refs, model.preprocess, batch_size, "cpu", progress, tta,
                                         runtime, cache_root(cache_dir))
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    readable = [f for f, good in zip(files, ok) if good]
    predictions = [{"path": str(f), "class": model.classes[idx[0]],
                    "top": [{"class": model.classes[j], "probability": float(p[j])} for j in idx]}
                   for f, p, idx in zip(readable, proba, order)]
    result = {"run": str(run), "tta": tta, "predictions": predictions, "unreadable": [str(f) for f in failures]}
    if detector is not None:
        settings = Embedding(cache=cache_root(cache_dir), runtime=runtime, batch_size=batch_size, progress=progress,
                             stores={})
        distances, seen, _ = detector.score([r for r, good in zip(refs, ok) if good], settings)
        for row, d in zip(predictions, distances if seen.all() else _spread(distances, seen)):
            row["unknown_score"], row["unknown"] = round(float(d), 6), bool(d > detector.threshold)
            if row["unknown"]:
                row["class"] = UNKNOWN
        result["unknown_threshold"] = detector.threshold
    return result


def _detector(run: str | Path):
    detector = load_detector(run)
    if detector is None:
        raise TransferlabError(f"--reject: run '{run}' has no unknown-image detector (unknown.json): it was "
                               "trained with --keep-known 0 or by an older transferlab; train it again")
    return detector


def _spread(distances: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Distances of the images the network read, where the detector could not read one (a file
    changed in between): never rejected."""
    full = np.full(len(seen), -np.inf)
    full[seen] = distances
    return full


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
        rejecting = "unknown_threshold" in result
        writer.writerow(["path"] + (["class", "unknown_score"] if rejecting else [])
                        + [f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "probability")])
        for r in rows:
            extra = [r["class"], f"{r['unknown_score']:.6f}"] if rejecting else []
            writer.writerow([r["path"]] + extra + [v for t in r["top"] for v in (t["class"], f"{t['probability']:.6f}")])
        return buffer.getvalue()
    width = max([len("image")] + [len(r["path"]) for r in rows])
    lines = [f"{'image':<{width}}  top classes (probability)"]
    for r in rows:
        top = "  ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"])
        if r.get("unknown"):
            top = f"{UNKNOWN} (distance {r['unknown_score']:.3f} > {result['unknown_threshold']:.3f}); closest: {top}"
        lines.append(f"{r['path']:<{width}}  {top}")
    return "\n".join(lines) + "\n"
