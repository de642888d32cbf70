"""Files written whole or not at all: each is written beside its target under a unique temporary
name, then renamed onto it, so a reader never sees half a file and a crash, a full disk or a
second writer never leaves one behind. A file the caller does not own (a path the user named)
is only replaced when asked; a folder or disk that cannot be written is one line naming it."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import yaml

from ..errors import TransferlabError

# Read once, while the process is still single-threaded: os.umask can only be read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_REASONS = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "not permitted (an immutable folder?)", errno.ENOSPC: "no space left on the disk",
            errno.EDQUOT: "disk quota exceeded"}


def temporary_name(path: Path) -> Path:
    """A name beside `path` that no other process or thread picks; the suffix is kept so that
    writers that infer a format from it (matplotlib, PIL) still can."""
    return path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def unwritable(path: Path, err: OSError) -> TransferlabError | None:
    """The one-line error for a folder or disk that refuses a write; None for other failures."""
    reason = _REASONS.get(err.errno)
    if reason is None:
        return None
    hint = "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "choose a folder you can write to"
    return TransferlabError(f"cannot write '{path}': {reason}: {hint}")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a refused write anywhere in the block into the one-line error naming `path`."""
    try:
        yield
    except OSError as err:
        translated = unwritable(path, err)
        if translated is None:
            raise
        raise translated from None


def make_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def check_writable(folder: str | os.PathLike, create: bool = True, option: str | None = None) -> Path:
    """Prove a file can be created in `folder`, before slow work starts. With create=False a
    folder that does not exist yet is not made: the nearest one above it that exists is probed.
    `option` (such as --out) is named when `folder` is, or lies inside, a file."""
    folder = Path(folder)
    probed = folder
    while not probed.exists() and probed != probed.parent:
        probed = probed.parent
    if probed.exists() and not probed.is_dir():
        named = f"{option} '{folder}'" if option else f"'{folder}'"
        where = "is a file" if probed == folder else f"lies inside '{probed}', which is a file"
        raise TransferlabError(f"{named} {where}, not a folder: give a folder (made if missing), not a file")
    if create:
        make_dir(folder)
        probed = folder
    probe = temporary_name(probed / "probe")
    with writing(folder):
        probe.touch(exist_ok=False)
        probe.unlink()
    return folder


@contextlib.contextmanager
def replacing(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path for the caller to write; rename it onto `path` if the block
    succeeds, delete it if not. overwrite=False refuses a `path` that exists (a file the user
    named, which this write was not made to replace). The file gets the user's usual permissions
    whatever its writer chose."""
    path = Path(path)
    if not overwrite and path.exists():
        raise TransferlabError(f"'{path}' exists: choose another file, or pass --force to replace it")
    make_dir(path.parent)
    tmp = temporary_name(path)
    try:
        with writing(path):
            yield tmp
            if tmp.exists():
                os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # a failed clean-up must not hide why the write failed
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> Path:
    with replacing(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    with replacing(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data, overwrite: bool = True) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n", overwrite)


def write_yaml(path: str | os.PathLike, data) -> Path:
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; rename it to `target` only if the block succeeds.

    A crash or error leaves no half-written folder: the partial one is removed, `target` untouched.
    """
    target = Path(target)
    make_dir(target.parent)
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with writing(target):
        tmp.mkdir()
    try:
        with writing(target):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        raise TransferlabError(f"'{target}' appeared while writing it; the new one is kept at '{tmp}'")
    os.replace(tmp, target)
