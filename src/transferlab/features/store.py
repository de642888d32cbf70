"""Feature vectors by image key in one SQLite file per extractor (or in memory when caching is off).

A cache is a copy of work that can be redone, so nothing read from it is trusted: every vector
carries a CRC of its bytes and is checked for its size and for finite values when read, and a
file SQLite finds damaged is removed. What was damaged is said in one line and recomputed.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from ..common.atomic import make_dir
from ..errors import TransferlabError

log = logging.getLogger("transferlab")

# SQLite's primary result codes for a file that is not (or no longer) a sound database.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
# Files checked whole (PRAGMA quick_check) by this process: once each, at first open.
_CHECKED: set[Path] = set()


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
            self._open()

    @classmethod
    def for_extractor(cls, key: str, cache_dir: Path | None) -> "FeatureStore":
        return cls(None if cache_dir is None else Path(cache_dir) / "features" / f"{key}.sqlite")

    # -- the file --------------------------------------------------------------------------

    def _open(self) -> None:
        """Make the table (adding the CRC column to a file of an earlier version). The first time
        this process opens a file, it is checked whole: SQLite's own check (a damaged file is
        removed and made again), then every vector (damaged ones are deleted)."""
        for attempt in (1, 2):
            try:
                check = self.path not in _CHECKED and self.path.exists()
                _CHECKED.add(self.path)
                with self._connection() as db:
                    verdict = [row[0] for row in db.execute("PRAGMA quick_check(1)")] if check else ["ok"]
                    if verdict != ["ok"]:
                        raise _DamagedFile(_one_line(verdict[0]) if verdict else "SQLite's check gave no verdict")
                    db.execute("CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, vec BLOB, crc INTEGER)")
                    if "crc" not in {row[1] for row in db.execute("PRAGMA table_info(features)")}:
                        db.execute("ALTER TABLE features ADD COLUMN crc INTEGER")  # a file of an earlier version
                    bad = _damaged_rows(db) if check else {}
                if bad:
                    self._drop(bad)
                return
            except _DamagedFile as err:
                self._discard(str(err))
            except sqlite3.DatabaseError as err:
                if "duplicate column" in str(err):  # another process added it first
                    return
                if attempt == 2 or not _damaged(err):
                    raise TransferlabError(f"cannot write the feature cache '{self.path}' ({err}): give --cache-dir "
                                           "a folder you can write to, or --no-feature-cache") from None
                self._discard(_one_line(str(err)))

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection committed at the end of the block (rolled back on an error) and closed."""
        db = sqlite3.connect(self.path, timeout=60)
        try:
            with db:
                yield db
        finally:
            db.close()

    def _discard(self, reason: str) -> None:
        """Remove a damaged file and its journal (a hot journal must not be replayed onto the
        new file); every vector it held is recomputed."""
        log.warning(f"feature cache '{self.path}' is damaged ({reason}): removed, its features are recomputed")
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        _CHECKED.add(self.path)

    def _run(self, work):
        """`work(db)` on the file; a file found damaged, or removed since it was opened, is made
        again and `work` runs once more on it."""
        for attempt in (1, 2):
            if not self.path.exists():
                log.warning(f"feature cache '{self.path}' was removed while in use: made again")
                self._open()
            try:
                with self._connection() as db:
                    return work(db)
            except sqlite3.DatabaseError as err:
                if attempt == 2 or not (_damaged(err) or "no such table" in str(err)):
                    raise
                if _damaged(err):
                    self._discard(str(err))
                self._open()

    # -- vectors ---------------------------------------------------------------------------

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        found = {k: self._memory[k] for k in keys if k in self._memory}
        wanted = [k for k in keys if k not in found]
        if self.path is None or not wanted:
            return found

        def read(db: sqlite3.Connection) -> list[tuple]:
            rows = []
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                rows += db.execute(f"SELECT key, vec, crc FROM features WHERE key IN "
                                   f"({','.join('?' * len(chunk))})", chunk).fetchall()
            return rows

        rows = self._run(read) or []
        good, bad = _checked_vectors(rows)
        if bad:
            self._drop(bad)
        found.update(good)
        return found

    def put_many(self, vectors: dict[str, np.ndarray]) -> None:
        if self.path is None:
            self._memory.update(vectors)
            return
        rows = []
        for k, v in vectors.items():
            data = np.ascontiguousarray(v, dtype=np.float32)
            if np.isfinite(data).all():  # a vector that could never be read back is not kept
                blob = data.tobytes()
                rows.append((k, blob, zlib.crc32(blob)))
        self._run(lambda db: db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?)", rows))

    def _drop(self, bad: dict[str, str]) -> None:
        """Delete damaged rows, saying once how many and why; their images are recomputed."""
        reasons = Counter(bad.values())
        example = next(iter(bad))
        example = example.removeprefix("file:").rsplit(":", 2)[0] if example.startswith("file:") else example
        log.warning(f"feature cache '{self.path}': {len(bad)} damaged vector(s) ("
                    + ", ".join(f"{n} {why}" for why, n in reasons.most_common())
                    + f"), e.g. '{example}': recomputing them")
        keys = list(bad)

        def delete(db: sqlite3.Connection) -> None:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                db.execute(f"DELETE FROM features WHERE key IN ({','.join('?' * len(chunk))})", chunk)

        self._run(delete)


def _damaged_rows(db: sqlite3.Connection) -> dict[str, str]:
    """The reasons of every damaged vector of the file, by key (read a thousand rows at a time)."""
    bad: dict[str, str] = {}
    cursor = db.execute("SELECT key, vec, crc FROM features")
    while rows := cursor.fetchmany(1000):
        bad.update(_checked_vectors(rows)[1])
    return bad


def _checked_vectors(rows: list[tuple]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(the sound vectors by key, the damaged ones' reasons by key). A vector is sound when its
    bytes match its CRC (rows of earlier versions have none), hold whole float32 values, have the
    length most vectors of the file have, and are all finite."""
    sizes = Counter(len(v) for _, v, _ in rows if isinstance(v, bytes))
    size = sizes.most_common(1)[0][0] if sizes else 0
    good, bad = {}, {}
    for key, blob, crc in rows:
        if not isinstance(blob, bytes) or not blob:
            bad[key] = "no vector"
        elif crc is not None and zlib.crc32(blob) != crc:
            bad[key] = "checksum mismatch"
        elif len(blob) % 4 or len(blob) != size:
            bad[key] = "wrong size"
        else:
            vector = np.frombuffer(blob, dtype=np.float32)
            if not np.isfinite(vector).all():
                bad[key] = "not finite"
            else:
                good[key] = vector
    return good, bad


class _DamagedFile(Exception):
    """SQLite's check found the file damaged; the message is its report."""


def _damaged(err: sqlite3.Error) -> bool:
    """Whether SQLite says the file itself is damaged (not locked, read-only or full)."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return "malformed" in str(err) or "not a database" in str(err)



def _one_line(text: str) -> str:
    """SQLite's report (quick_check's names the database on a line of its own) as one line."""
    return " ".join(text.replace("*** in database main ***", "").split())
