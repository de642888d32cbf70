"""The files of a run directory: unique names (a run is never overwritten), history.csv, reading
a run's files with one-line errors for missing or damaged ones, and keeping user-named outputs
off a run's own files."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import yaml

from ..errors import TransferlabError
from .atomic import check_writable, write_text


# What `train` writes into a run directory; nothing else may replace them.
RUN_FILES = frozenset({"config.yaml", "metrics.json", "model.json", "model.safetensors", "history.csv",
                       "curves.png", "report.html", "checkpoint.pt", "audit.json", ".lock"})


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
    run = Path(run)
    if not run.exists():
        raise TransferlabError(f"run '{run}' does not exist: pass a folder that `transferlab train` wrote "
                               "(runs/<name>)")
    if not run.is_dir():
        raise TransferlabError(f"'{run}' is a file, not a run: pass a folder that `transferlab train` wrote")
    path = run / name
    if not path.is_file():
        raise TransferlabError(
            f"'{run}' is not a transferlab run: {name} is missing; pass a folder that "
            "`transferlab train` wrote (runs/<name>)")
    try:
        text = path.read_text(encoding="utf-8")
        values = yaml.safe_load(text) if name.endswith(".yaml") else json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        where = f"line {err.lineno}" if isinstance(err, json.JSONDecodeError) else _yaml_line(err)
        raise TransferlabError(f"'{path}' is damaged (not valid {'YAML' if name.endswith('.yaml') else 'JSON'}"
                               f"{', ' + where if where else ''}): restore it from a copy of the run, or "
                               "train again") from None
    if not isinstance(values, dict):
        raise TransferlabError(f"'{path}' is damaged (not a mapping): restore it from a copy of the run, or "
                               "train again")
    return values


def _yaml_line(err: Exception) -> str:
    mark = getattr(err, "problem_mark", None)
    return f"line {mark.line + 1}" if mark is not None else ""


def yaml_error(path: Path, err: Exception) -> str:
    """A YAML error in one line, with where it is."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = _yaml_line(err)
    return f"'{path}' is not valid YAML ({problem}{', ' + where if where else ''})"


def refuse_run_file(path: Path) -> None:
    """A user-named output must not be one of a run's own files (export --out RUN/model.safetensors)."""
    path = Path(path)
    folder = path.parent
    if path.name in RUN_FILES and ((folder / "model.json").exists() or (folder / "config.yaml").exists()):
        raise TransferlabError(f"'{path}' is a file of the run in '{folder}': choose another file name")


def claim_output(path: str | Path, force: bool = False) -> Path:
    """Check a file the user named for an output, before the work that fills it: not a run's own
    file, not an existing file unless `force`, in a folder that can be written."""
    path = Path(path)
    refuse_run_file(path)
    if path.exists() and not force:
        raise TransferlabError(f"'{path}' exists: choose another file, or pass --force to replace it")
    check_writable(path.parent)
    return path
