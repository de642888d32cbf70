"""The run directory: written atomically (a temp folder renamed into place), never overwritten."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import yaml

from .errors import TransferlabError


def unique_dir(out: Path, name: str) -> Path:
    """`out/name`, or `out/name-2`, `-3`, ... when it exists: an earlier run is never overwritten."""
    candidate, n = out / name, 1
    while candidate.exists():
        n += 1
        candidate = out / f"{name}-{n}"
    return candidate


def default_run_name(data_name: str, strategy: str) -> str:
    return f"{data_name}-{strategy}-{time.strftime('%Y%m%d-%H%M%S')}"


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; rename it to `target` only if the block succeeds.

    A crash or error leaves no half-written run: the partial folder is removed, `target` untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            raise TransferlabError(f"'{target}' appeared while writing it; the new run is kept at '{tmp}'")
        os.replace(tmp, target)
    except BaseException:
        if tmp.exists() and not target.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write beside, then rename: a reader never sees half a file, a crash never leaves one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_yaml(path: Path, data) -> None:
    write_text(path, yaml.safe_dump(data, sort_keys=False))


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
