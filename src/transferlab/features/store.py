"""Feature vectors by image key in one SQLite file per extractor (or in memory when caching is off)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from ..common.atomic import make_dir
from ..errors import TransferlabError


class FeatureStore:
    """Feature vectors by image key in one SQLite file per extractor.

    SQLite gives atomic commits (an interrupted run leaves no half-written vectors) and safe
    concurrent readers and writers (several runs of a comparison share one store).
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._memory: dict[str, np.ndarray] = {}
        if path is not None:
            make_dir(path.parent)
            try:
                with self._connect() as db:
                    db.execute("CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, vec BLOB)")
            except sqlite3.OperationalError as err:  # a read-only or full cache folder
                raise TransferlabError(f"cannot write the feature cache '{path}' ({err}): give --cache-dir a "
                                       "folder you can write to, or --no-feature-cache") from None

    @classmethod
    def for_extractor(cls, key: str, cache_dir: Path | None) -> "FeatureStore":
        return cls(None if cache_dir is None else Path(cache_dir) / "features" / f"{key}.sqlite")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        found = {k: self._memory[k] for k in keys if k in self._memory}
        wanted = [k for k in keys if k not in found]
        if self.path is None or not wanted:
            return found
        with self._connect() as db:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                rows = db.execute(f"SELECT key, vec FROM features WHERE key IN ({','.join('?' * len(chunk))})",
                                  chunk)
                found.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        return found

    def put_many(self, vectors: dict[str, np.ndarray]) -> None:
        if self.path is None:
            self._memory.update(vectors)
            return
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?)",
                           [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in vectors.items()])
