"""The finished candidates of an auto run, kept in its run directory (RUN/auto/) as they finish, so
that an interrupted run continues from them with `--resume` instead of fitting them again.

    RUN/auto/candidates.json   every finished candidate's row (scores, seconds, where its model is),
                               the data's fingerprint and the seconds the run has spent so far
    RUN/auto/<slug>/           a finished candidate's model (written whole, then renamed); while a
                               candidate that trains by gradient runs, its checkpoint.pt

A row is trusted only when its model folder is there and the data is the one it was fitted on;
anything damaged is said in one line and fitted again. The estimator's own save and load come in
as functions, so this module knows folders, not classifiers.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Callable

from ..common.atomic import atomic_dir, write_json
from ..errors import TransferlabError
from ..training.callbacks import Checkpoint

log = logging.getLogger("transferlab")

FOLDER = "auto"
INDEX = "candidates.json"
FORMAT = 1


class SavedCandidates:
    """Finished candidates by name, read from `directory` when made; `write(model, folder)` and
    `read(folder)` save and load a fitted model (with what the run reports of its fit).
    `started` is when this process took the run over (time.perf_counter())."""

    def __init__(self, directory: str | Path, fingerprint: str, write: Callable, read: Callable,
                 started: float, save: bool = True):
        self.directory, self.fingerprint, self.save = Path(directory), fingerprint, save
        self._write, self._read, self.started = write, read, started
        self.rows: dict[str, dict] = {}
        self.spent_before = 0.0  # seconds the run spent in the processes before this one
        if save:
            self._remove_leftovers()
        index = self.directory / INDEX
        if not index.is_file():
            return
        try:
            state = json.loads(index.read_text(encoding="utf-8"))
            rows, spent, format_ = state["candidates"], float(state["spent_seconds"]), state["format"]
            if not isinstance(rows, dict) or format_ != FORMAT:
                raise ValueError("not this version's")
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning(f"auto: '{index}' is damaged ({type(err).__name__}): its candidates are fitted again")
            return
        if state.get("fingerprint") != fingerprint:
            raise TransferlabError("the data changed since this run started (its images or labels differ): "
                                   "start a new run instead of resuming")
        self.rows, self.spent_before = rows, spent
        if rows:
            log.info(f"auto: continuing after {len(rows)} finished candidate(s): {', '.join(rows)}")

    def spent(self) -> float:
        return self.spent_before + time.perf_counter() - self.started

    def _remove_leftovers(self) -> None:
        """Half-written folders and files of a writer that was killed (the run's lock is ours now)."""
        if self.directory.is_dir():
            for leftover in self.directory.glob(".*"):
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)

    def folder(self, name: str) -> Path:
        return self.directory / folder_name(name)

    def training_folder(self, name: str) -> Path:
        """Where a candidate that trains by gradient keeps its checkpoint while it trains."""
        return self.folder(name).with_name(self.folder(name).name + "-training")

    def finished(self, name: str, options: dict):
        """(its row, its fitted model) for a candidate finished with these options; None when
        there is none or its model cannot be read (said in one line: it is fitted again)."""
        row = self.rows.get(name)
        if row is None or row.get("options") != json.loads(json.dumps(options)):
            return None
        try:
            return row, self._read(self.folder(name))
        except (TransferlabError, OSError, ValueError, KeyError) as err:
            log.warning(f"auto: the saved model of {name} in '{self.folder(name)}' cannot be read "
                        f"({str(err).splitlines()[0] if str(err) else type(err).__name__}): fitting it again")
            del self.rows[name]
            return None

    def keep(self, name: str, row: dict, model) -> None:
        """Save a finished candidate's model, then its row (a row never names a model not yet
        whole), then drop its training checkpoint."""
        self.rows[name] = json.loads(json.dumps(row))
        if not self.save:
            return
        folder = self.folder(name)
        if folder.exists():  # a model of other options, from an earlier process
            shutil.rmtree(folder)
        with atomic_dir(folder) as tmp:
            self._write(model, tmp)
        self.record()
        shutil.rmtree(self.training_folder(name), ignore_errors=True)

    def record(self) -> None:
        """The rows and the seconds spent so far, written whole (once a candidate has finished:
        before that there is nothing to continue from)."""
        if self.save and self.rows:
            write_json(self.directory / INDEX, {"format": FORMAT, "fingerprint": self.fingerprint,
                                                "spent_seconds": round(self.spent(), 2), "candidates": self.rows})

    def training(self, name: str) -> list:
        """The checkpoint callback of a candidate that trains by gradient: an interrupted one
        continues from its last epoch. A damaged checkpoint is said in one line and dropped."""
        if not self.save:
            return []
        folder = self.training_folder(name)
        try:
            return [Checkpoint(folder)]
        except TransferlabError as err:
            log.warning(f"auto: {err.args[0].split(':')[0]} of {name} is damaged: training it from the start")
            shutil.rmtree(folder, ignore_errors=True)
            return [Checkpoint(folder)]


def folder_name(candidate: str) -> str:
    """The folder of a candidate's model, named after it."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", candidate).strip("-")


def has_progress(run: str | Path) -> bool:
    """Whether an interrupted auto run left anything to continue from."""
    folder = Path(run) / FOLDER
    return (folder / INDEX).is_file() or any(folder.glob("*/checkpoint.pt"))


def discard(run: str | Path) -> None:
    """The run has finished: its candidates' models are no part of it."""
    shutil.rmtree(Path(run) / FOLDER, ignore_errors=True)
