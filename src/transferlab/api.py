"""The functions behind the commands, one per command that does a job: train, evaluate, demo,
compare, audit, layers, lr_find. Each is the place a command line (cli/) or a script calls; the work
itself lives in workflows/, audit/ and models/."""

from __future__ import annotations

from pathlib import Path

from .errors import TransferlabError
from .workflows.evaluate import evaluate
from .workflows.train import Run, demo, train

__all__ = ["Run", "train", "evaluate", "demo", "compare", "audit", "layers", "lr_find"]


def compare(data: str, grid: str | Path, seeds: int = 3, out: str | Path = "comparisons",
            name: str | None = None, first_seed: int = 0, progress: bool = True, jobs: int = 1,
            base: dict | None = None, folds: int = 0):
    """Every config of `grid` once per seed, `jobs` runs at a time; `base` options join the grid's
    base (the grid's own values win). `folds` K: every run cross-validates with K folds on its
    train split, and configs are ranked by that validation accuracy. See workflows/compare.py."""
    from .workflows.compare import compare as run_comparison

    return run_comparison(data, grid, seeds, out, name, first_seed, progress, jobs, base, folds)


def lr_find(data: str | None = None, config=None, plot: str | Path | None = "lr_find.png", start_lr: float = 1e-7,
            end_lr: float = 10.0, steps: int = 200, force: bool = False, progress: bool = True, **options):
    """The learning-rate sweep on what `train(data, **options)` would train on (strategy finetune
    unless given); writes `plot` and returns the rates, losses and suggestions. See
    workflows/lr_find.py."""
    from .workflows.lr_find import lr_find as run_lr_find

    return run_lr_find(data, config, plot=plot, start_lr=start_lr, end_lr=end_lr, steps=steps, force=force,
                       progress=progress, **options)


def audit(data: str | None = None, threshold: float | None = None, near: bool = True,
          out: str | Path | None = None, run: str | Path | None = None, progress: bool = True,
          **options) -> dict:
    """Duplicates, leakage, label conflicts, class counts and odd images of `data` (or of `run`'s
    data and splits); with `labels=True` also suspected label errors (`result["label_issues"]`,
    a LabelIssues); writes audit.json and audit.html. See transferlab.audit.audit."""
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
