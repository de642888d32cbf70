"""`transferlab lr-find`: the learning-rate sweep on the images a `train` run with the same
options would train on, its plot written and its suggested rates returned. Nothing is trained
for keeps and no run directory is made."""

from __future__ import annotations

import logging
from pathlib import Path

from ..classifier import ImageClassifier
from ..common.run_files import claim_output
from ..config import RunConfig
from ..data.edits import apply_edits
from ..data.sources import load_source
from ..data.split import split_source
from ..training.lr_find import LRFindResult
from ..training.strategies import resolve

log = logging.getLogger("transferlab")


def lr_find(data: str | None = None, config: RunConfig | None = None, plot: str | Path | None = "lr_find.png",
            start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200, force: bool = False,
            progress: bool = True, **options) -> LRFindResult:
    """`options` are train's (RunConfig keys); without a strategy the sweep is finetune's, since
    auto (train's default) chooses among several rates. `plot`: the PNG to write (None: none)."""
    values = (config or RunConfig(strategy="finetune")).to_dict()
    values.update(options)
    if data is not None:
        values["data"] = str(data)
    values["lr"] = "find"
    config = resolve(RunConfig.from_dict(values, origin="options"))
    if plot is not None:
        claim_output(plot, force)  # before the data loads: a file in the way fails at once
    clf = ImageClassifier(**config.model_options(), progress=progress)
    source = load_source(config.data, cifar_labels=config.cifar_labels, classes=config.class_list())
    splits = split_source(source, config.val_fraction, config.test_fraction, config.seed)
    splits = apply_edits(splits, source.root, config.exclude, config.relabel)[0]  # what train would train on
    result = clf.lr_find(splits.train, start_lr=start_lr, end_lr=end_lr, steps=steps)
    if plot is not None:
        result.plot(plot)
        log.info(f"sweep plot written to {plot}")
    return result
