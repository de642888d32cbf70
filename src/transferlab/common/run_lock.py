"""One writer per run directory: an advisory lock file (`.lock`, holding the writer's pid) that a
second writer finds taken and says so in one line. The lock is the kernel's (flock), so it is
released when its process ends however it ends, and a lock file left by a killed process is
simply taken over."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from ..errors import TransferlabError
from .atomic import writing

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not locked there
    fcntl = None

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        if fcntl is None:
            return self
        while True:
            with writing(self.path):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise TransferlabError(f"run '{self.directory}' is being written by {holder}: wait for it to "
                                       "finish or stop it, then try again") from None
            # A holder that released and removed the file between our open and our lock leaves us
            # holding a lock on a file no longer there: take the one that is.
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        self._remove_leftovers()
        return self

    def _remove_leftovers(self) -> None:
        """Temporary files a killed writer left behind (nobody else writes here now)."""
        for leftover in self.directory.glob(".*.tmp*"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still held: nobody can take this file in between
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
