"""The files of a run directory: unique names (a run is never overwritten), history.csv, and
reading a run's files with an error that says what the folder is missing."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import yaml

from ..errors import TransferlabError
from .atomic import write_text


def unique_dir(out: Path, name: str) -> Path:
    """`out/name`, or `out/name-2`, `-3`, ... when it exists: an earlier run is never overwritten."""
    candidate, n = out / name, 1
    while candidate.exists():
        n += 1
        candidate = out / f"{name}-{n}"
    return candidate


def default_run_name(data_name: str, strategy: str) -> str:
    return f"{data_name}-{strategy}-{time.strftime('%Y%m%d-%H%M%S')}"


def write_history(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_run_file(run: Path, name: str) -> dict:
    path = Path(run) / name
    if not path.is_file():
        raise TransferlabError(
            f"'{run}' is not a transferlab run: {name} is missing; pass a folder that "
            "`transferlab train` wrote (runs/<name>)")
    text = path.read_text()
    return yaml.safe_load(text) if name.endswith(".yaml") else json.loads(text)
