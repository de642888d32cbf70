"""`transferlab predict`: a saved run over files, folders and globs; top-k classes with their
probabilities as a table, CSV or JSON. Unreadable files are listed, never fatal."""

from __future__ import annotations

import csv
import glob
import io
import json
from pathlib import Path

import numpy as np

from .errors import TransferlabError

FORMATS = ("table", "csv", "json")


def gather(paths: list[str]) -> list[Path]:
    """Image files named directly, inside folders (recursively) or matched by glob patterns."""
    from .data.sources import IMAGE_EXTENSIONS

    found: list[Path] = []
    for given in paths:
        matches = sorted(glob.glob(given, recursive=True)) if glob.has_magic(given) else [given]
        if not matches:
            raise TransferlabError(f"'{given}' matches no file: check the pattern (quote it so the shell "
                                   "does not expand it)")
        for match in map(Path, matches):
            if match.is_dir():
                found += sorted(p for p in match.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            elif match.exists() or not glob.has_magic(given):
                if not match.exists():
                    raise TransferlabError(f"'{match}' does not exist: give image files, folders or globs")
                found.append(match)
    if not found:
        raise TransferlabError(f"no images in {', '.join(paths)}: give image files, folders or globs")
    return list(dict.fromkeys(found))


def predict(run: str | Path, paths: list[str], top_k: int = 3, tta: bool = False,
            batch_size: int = 32, progress: bool = True) -> dict:
    """{"predictions": [{"path", "top": [{"class", "probability"}, ...]}], "unreadable": [...]}."""
    from .classifier import ImageClassifier
    from .data.sources import ImageRef
    from .inference import predict_pixels

    if top_k < 1:
        raise TransferlabError(f"--top-k {top_k} must be at least 1")
    clf = ImageClassifier.load(run)
    files = gather(paths)
    refs = [ImageRef.from_file(f) for f in files]
    proba, ok, failures = predict_pixels(clf.network_, refs, clf.preprocess_, batch_size, "cpu", progress, tta)
    k = min(top_k, len(clf.classes_))
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    readable = [f for f, good in zip(files, ok) if good]
    predictions = [{"path": str(f), "top": [{"class": clf.classes_[j], "probability": float(p[j])} for j in idx]}
                   for f, p, idx in zip(readable, proba, order)]
    return {"run": str(run), "tta": tta, "predictions": predictions,
            "unreadable": [str(f) for f in failures]}


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
