"""The functions behind the commands, one per command that does a job: train, evaluate, demo,
compare, audit, layers. Each is the place a command line (cli/) or a script calls; the work
itself lives in workflows/, audit/ and models/."""

from __future__ import annotations

from pathlib import Path

from .errors import TransferlabError
from .workflows.evaluate import evaluate
from .workflows.train import Run, demo, train

__all__ = ["Run", "train", "evaluate", "demo", "compare", "audit", "layers"]


def compare(data: str, grid: str | Path, seeds: int = 3, out: str | Path = "comparisons",
            name: str | None = None, first_seed: int = 0, progress: bool = True, jobs: int = 1,
            base: dict | None = None):
    """Every config of `grid` once per seed, `jobs` runs at a time; `base` options join the grid's
    base (the grid's own values win). See workflows/compare.py."""
    from .workflows.compare import compare as run_comparison

    return run_comparison(data, grid, seeds, out, name, first_seed, progress, jobs, base)


def audit(data: str | None = None, threshold: float | None = None, near: bool = True,
          out: str | Path | None = None, run: str | Path | None = None, progress: bool = True,
          **options) -> dict:
    """Duplicates, leakage, label conflicts, class counts and odd images of `data` (or of `run`'s
    data and splits); writes audit.json and audit.html. See transferlab.audit.audit."""
    from .audit import DEFAULT_THRESHOLD
    from .audit import audit as run_audit

    return run_audit(data, threshold=DEFAULT_THRESHOLD if threshold is None else threshold, near=near,
                     out=out, run=run, progress=progress, **options)


def layers(backbone: str, input_size: int | None = None, unfreeze: int | str = 1):
    """Every named module of `backbone` (random weights: shapes do not depend on them) with its
    output shape for a `input_size` input (default: the backbone's own), parameters and stage."""
    from .models.factory import ModelSpec, build_model
    from .models.summary import layer_rows

    if unfreeze != "all" and not str(unfreeze).isdigit():
        raise TransferlabError(f"--unfreeze {unfreeze} is not a number of stages or 'all'")
    built = build_model(ModelSpec(backbone=backbone, image_size=input_size), load_weights=False)
    return layer_rows(built.network.backbone, built.preprocess.input_size, unfreeze)
