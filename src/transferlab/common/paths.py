"""Where transferlab keeps what it can compute again: the feature cache and on-disk prefix caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir` when given, else $TRANSFERLAB_CACHE, else $XDG_CACHE_HOME/transferlab
    (~/.cache/transferlab)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("TRANSFERLAB_CACHE"):
        return Path(os.environ["TRANSFERLAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "transferlab"
