"""Files written whole or not at all: each is written beside its target under a unique temporary
name, then renamed onto it, so a reader never sees half a file and a crash, a full disk or a
second writer never leaves one behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import yaml

from ..errors import TransferlabError


def temporary_name(path: Path) -> Path:
    """A name beside `path` that no other process or thread picks; the suffix is kept so that
    writers that infer a format from it (matplotlib, PIL) still can."""
    return path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path for the caller to write; rename it onto `path` if the block
    succeeds, delete it if not. The temporary file is created by the writer, so it gets the
    user's usual permissions (mkstemp's would be private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n")


def write_yaml(path: str | os.PathLike, data) -> Path:
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; rename it to `target` only if the block succeeds.

    A crash or error leaves no half-written folder: the partial one is removed, `target` untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        raise TransferlabError(f"'{target}' appeared while writing it; the new one is kept at '{tmp}'")
    os.replace(tmp, target)
