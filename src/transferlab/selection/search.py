"""The loop that runs auto's candidates: features on each backbone first (the first one measures
the machine's pace), then the portfolio's entries in order, each when it is worth trying and its
estimate fits in the time left; what does not fit is skipped and the loop goes on down the list.
Given a plan (a finished run's record), it runs exactly that plan with no clock deciding.

The estimator comes in as a factory (`make(options)`), so this module knows candidates, costs
and time, not how a classifier is built."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import TransferlabError
from ..models.compute import gflops, native_size
from ..runtime.frozen import EXPORT_IN_FORWARDS, EXPORT_PAYS_BACK
from ..training.callbacks import EpochLimits, epochs_per_phase
from ..strategy_registry import strategy
from .portfolio import PORTFOLIO, Entry, Finished, candidate_name, features_name
from .saved_candidates import SavedCandidates

log = logging.getLogger("transferlab")


@dataclass
class Candidate:
    name: str
    entry: str             # the portfolio entry it came from ("features" for the first ones)
    options: dict          # run options that differ from the user's
    estimate: float = 0.0  # seconds, before it runs
    val_accuracy: float | None = None
    val_log_loss: float | None = None
    seconds: float | None = None
    status: str = "pending"
    classifier_seconds: float | None = None  # of a features candidate: fitting its classifier
    torch_extra: float = 0.0  # of a features candidate: what its backbone pass would have added in PyTorch
    scoring: float = 0.0   # seconds, estimated, of scoring the held-out images with it
    epochs: dict | None = None  # of a trained candidate: epochs run per phase (what a replay runs)
    model: object = field(default=None, repr=False)
    val_proba: np.ndarray | None = field(default=None, repr=False)  # on the readable val images
    val_ok: np.ndarray | None = field(default=None, repr=False)

    def row(self) -> dict:
        return {"candidate": self.name, "options": self.options, "val_accuracy": _round(self.val_accuracy),
                "val_log_loss": _round(self.val_log_loss), "seconds": _round(self.seconds, 1),
                "estimated_seconds": round(self.estimate, 1), "status": self.status}

    def trains(self) -> bool:
        """Whether it trains by gradient (and so keeps a checkpoint while it does)."""
        return strategy(self.options["strategy"]).pixels

    def finished(self) -> Finished:
        return Finished(self.name, self.entry, self.options, self.val_accuracy, self.val_log_loss)

    def plan(self) -> dict:
        """What a replay needs to fit this candidate again exactly."""
        return {"candidate": self.name, "entry": self.entry, "options": self.options, "epochs": self.epochs}

    def saved_row(self) -> dict:
        """What a resumed run needs of a finished candidate besides its model."""
        return {**self.row(), "entry": self.entry, "classifier_seconds": self.classifier_seconds,
                "torch_extra": self.torch_extra, "epochs": self.epochs, "unrounded": {
                    "val_accuracy": self.val_accuracy, "val_log_loss": self.val_log_loss, "seconds": self.seconds,
                    "estimate": self.estimate}}

    def restore(self, row: dict) -> None:
        exact = row["unrounded"]
        self.val_accuracy, self.val_log_loss = exact["val_accuracy"], exact["val_log_loss"]
        self.seconds, self.estimate = exact["seconds"], exact["estimate"]
        self.classifier_seconds, self.status = row.get("classifier_seconds"), "ok"
        self.torch_extra, self.epochs = float(row.get("torch_extra") or 0.0), row.get("epochs")


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


class Costs:
    """Seconds per image and per billion operations (GFLOP) of a backbone pass, measured by the
    first candidate in the runtime of frozen passes and, from what that pass would have cost
    there, in PyTorch (training and bilinear pooling run there); every other candidate's cost is
    its backbone's own compute at its size times an entry's factor."""

    def __init__(self, images: int, scored_images: int, image_size: int | None = None):
        self.images, self.scored_images = max(images, 1), scored_images
        self.image_size = image_size  # the user's --image-size: every candidate's unless it sets its own
        self.unit: float | None = None
        self.torch_unit: float | None = None

    def measure(self, candidate: Candidate) -> None:
        work = self.images * pass_gflops(candidate.options, self.image_size)
        self.unit = candidate.seconds / work
        self.torch_unit = (candidate.seconds + candidate.torch_extra) / work

    def fitting(self, entry: Entry | None, options: dict) -> float:
        if self.unit is None:
            return 0.0
        unit = self.torch_unit if entry is not None and entry.runtime == "torch" else self.unit
        factor = entry.cost(options) if entry is not None else 1.0
        base = sum(gflops(b, self.image_size) for b in options["backbone"].split(","))
        return self.images * base * factor * unit

    def scoring(self, options: dict, images: int | None = None) -> float:
        """Seconds of scoring `images` (the held-out ones) with a candidate as the final model."""
        images = self.scored_images if images is None else images
        if self.unit is None or not images:
            return 0.0
        return images * pass_gflops(options, self.image_size) * self.pace(options, images)

    def pace(self, options: dict, images: int) -> float:
        """A features network and a trained one whose export the images pay back run in the
        frozen runtime (the export added); bilinear pooling (its graph is refused) in PyTorch."""
        kind = strategy(options["strategy"])
        if options.get("pooling") == "bilinear" or kind.bilinear_network:
            return self.torch_unit
        if kind.cached_features or self.unit == self.torch_unit:
            return self.unit
        if images < EXPORT_PAYS_BACK:
            return self.torch_unit
        return self.unit + self.torch_unit * EXPORT_IN_FORWARDS / images


def pass_gflops(options: dict, image_size: int | None = None) -> float:
    """One image through the candidate's network: every backbone at its size (the candidate's,
    else `image_size`, else the backbone's own; a concatenation runs all at the largest)."""
    names = options["backbone"].split(",")
    size = options.get("image_size") or image_size or (
        max(native_size(n) for n in names) if len(names) > 1 else None)
    return sum(gflops(n, size) for n in names)


@dataclass
class Search:
    """Runs candidates: `make(options)` builds an estimator, `val_scores(model, val)` gives its
    (accuracy, log loss, probabilities, readable mask) on val. A candidate starts when its
    estimate and the scoring after the choice fit before `deadline`; `saved` keeps each finished
    one (an interrupted run continues from them)."""
    make: Callable[[dict], object]
    train: object
    val: object
    deadline: float
    val_scores: Callable
    costs: Costs
    callbacks: Sequence = ()
    budget_callback: Callable[[float], object] | None = None
    saved: SavedCandidates | None = None
    reserve: Callable[[], float] = lambda: 0.0  # seconds kept for what follows the search (refits)
    candidates: list[Candidate] = field(default_factory=list)

    def run(self, backbones: list[str], portfolio: Sequence[Entry] = PORTFOLIO) -> list[Candidate]:
        for name in backbones:
            self._try(Candidate(features_name(name), "features", {"strategy": "features", "backbone": name}))
        for entry in portfolio:
            done = [c.finished() for c in self.candidates if c.status == "ok"]
            base = entry.base(done)
            if base is None:
                continue
            if not entry.worth(base, done):
                log.info(f"auto: {entry.key} not tried: its condition does not hold on the scores so far")
                continue
            options = {**base.options, **entry.changes(base.options)}
            options = {k: v for k, v in options.items() if v is not None}
            self._try(Candidate(candidate_name(entry, base, options), entry.key, options), entry)
        return self._check()

    def replay(self, plan: list[dict]) -> list[Candidate]:
        """Fit exactly the candidates of `plan`, in its order, each trained one for the epochs it ran."""
        for item in plan:
            candidate = Candidate(item["candidate"], item["entry"], item["options"], epochs=item.get("epochs"))
            self.candidates.append(candidate)
            extra = [EpochLimits(item["epochs"])] if item.get("epochs") else []
            self._fit(candidate, extra)
            if candidate.status != "ok":
                raise TransferlabError(f"--replay: {candidate.name} {candidate.status}")
        return self._check()

    def _try(self, candidate: Candidate, entry: Entry | None = None) -> None:
        self.candidates.append(candidate)
        candidate.estimate = self.costs.fitting(entry, candidate.options)
        candidate.scoring = self.costs.scoring(candidate.options)
        if self._restore(candidate):
            return
        finished = [c.scoring for c in self.candidates if c.status == "ok"]
        now = time.perf_counter()
        # What follows the search must fit whichever candidate wins: its scoring and the refits.
        left = self.deadline - now - max([*finished, candidate.scoring]) - self.reserve()
        if candidate.estimate > left and finished:  # the first always runs: it measures the pace
            candidate.status = f"skipped: needs about {candidate.estimate:.0f} s, {max(left, 0):.0f} s left"
            log.info(f"auto: {candidate.name} {candidate.status}")
            return
        extra = []
        if candidate.trains() and self.budget_callback is not None and left > 0:
            extra = [self.budget_callback(left / 60)]  # its epochs end in time for the scoring after
        self._fit(candidate, extra)
        if self.costs.unit is None and candidate.status == "ok":
            self.costs.measure(candidate)
            candidate.scoring = self.costs.scoring(candidate.options)

    def _restore(self, candidate: Candidate) -> bool:
        kept = self.saved.finished(candidate.name, candidate.options) if self.saved is not None else None
        if kept is None:
            return False
        row, candidate.model = kept
        candidate.restore(row)
        self._score(candidate)
        if self.costs.unit is None:
            self.costs.measure(candidate)
        candidate.scoring = self.costs.scoring(candidate.options)
        log.info(f"auto: {candidate.name}: val accuracy {candidate.val_accuracy:.4f} (kept from before the "
                 "interruption)")
        return True

    def _fit(self, candidate: Candidate, extra: Sequence = ()) -> None:
        start = time.perf_counter()
        resumable = self.saved.training(candidate.name) if self.saved is not None and candidate.trains() else []
        try:
            model = self.make(candidate.options).fit(self.train, val=self.val,
                                                     callbacks=[*self.callbacks, *extra, *resumable])
        except TransferlabError:
            raise  # the user's mistake (an unknown backbone, a bad option): every candidate would hit it
        except Exception as err:  # one candidate failing (memory, odd data) leaves the others
            candidate.status = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
            log.warning(f"auto: {candidate.name} {candidate.status}")
            return
        candidate.seconds = time.perf_counter() - start
        candidate.model, candidate.status = model, "ok"
        info = getattr(model, "fit_info_", {})
        candidate.classifier_seconds = info.get("classifier_seconds")
        candidate.torch_extra = max(info.get("frozen_torch_seconds", 0.0) - info.get("frozen_seconds", 0.0), 0.0)
        if candidate.trains():
            candidate.epochs = epochs_per_phase(getattr(model, "history_", []))
        self._score(candidate)
        if self.saved is not None:
            self.saved.keep(candidate.name, candidate.saved_row(), model)
        log.info(f"auto: {candidate.name}: val accuracy {candidate.val_accuracy:.4f}, log loss "
                 f"{candidate.val_log_loss:.4f} ({candidate.seconds:.0f} s)")

    def _score(self, candidate: Candidate) -> None:
        scored = self.val_scores(candidate.model, self.val)
        candidate.val_accuracy, candidate.val_log_loss, candidate.val_proba, candidate.val_ok = scored

    def _check(self) -> list[Candidate]:
        if not any(c.status == "ok" for c in self.candidates):
            reasons = "; ".join(f"{c.name}: {c.status}" for c in self.candidates)
            raise TransferlabError(f"--strategy auto: no candidate could be fitted ({reasons}): give a larger "
                                   "--budget or choose a strategy")
        return self.candidates
