"""`--strategy auto`: candidates fitted cheapest first within a time budget, each scored on the
validation split only, the best kept. The test split is never seen here: the caller scores the
winner on it once, after the choice.

The estimator is passed in as a factory (`make(options) -> fitted-to-be estimator`), so this
module knows the candidates and the budget, not how a classifier is built.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import TransferlabError
from ..runtime.frozen import EXPORT_IN_FORWARDS, EXPORT_PAYS_BACK
from ..models.weights import packaged_installed
from .saved_candidates import SavedCandidates

log = logging.getLogger("transferlab")

OFFLINE_ZOO = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
# Forward cost of each backbone at its own input size against Lite0 at 224 px, about their
# multiply-adds (0.39, 0.60, 0.87 GMACs); an ensemble runs every member at the largest size.
COST = {"tf_efficientnet_lite0": 1.0, "tf_efficientnet_lite1": 1.55, "tf_efficientnet_lite2": 2.25}
NATIVE = {"tf_efficientnet_lite0": 224, "tf_efficientnet_lite1": 240, "tf_efficientnet_lite2": 260}
# How much longer fine-tuning takes than one features pass over the same images, measured on
# cars43 and hymenoptera with the default recipe (2 cached views, up to 35 epochs on the cache).
FINETUNE_OVER_FEATURES = 4.0
# The finetune recipe unfreezes 3 stages, not 1: 2.2x the time on cars43 and cifar10-small.
UNFREEZE_3_OVER_1 = 2.2
# Bilinear pooling of a frozen tap: the same pass, then logistic regression on ~18k features
# instead of 1,280 (cars43: about 2x the features run with a validation split).
BILINEAR_POOLING_OVER_FEATURES = 2.5
# Fine-grained classes are told apart by small parts: bilinear pooling of the last block stage at
# twice the native size scored 0.912 against 0.899 at 224 px on cars43 (Lite0, squash), for about
# four times the backbone pass.
HIGHER_RESOLUTION = 2
# A features winner is refitted on all of train with C chosen by 5-fold cross-validation instead
# of on the validation split: five searches, each on 0.8 / 0.85 of the rows the chosen one saw.
REFIT_OVER_SEARCH = 5 * 0.8 / 0.85


@dataclass
class Candidate:
    name: str
    options: dict          # run options that differ from the user's
    estimate: float = 0.0  # seconds, before it runs
    val_accuracy: float | None = None
    val_log_loss: float | None = None
    seconds: float | None = None
    status: str = "pending"
    classifier_seconds: float | None = None  # of a features candidate: fitting its classifier
    torch_extra: float = 0.0  # of a features candidate: what its backbone pass would have added in PyTorch
    scoring: float = 0.0   # seconds, estimated, of scoring the held-out images with it
    model: object = field(default=None, repr=False)

    def row(self) -> dict:
        return {"candidate": self.name, "options": self.options, "val_accuracy": _round(self.val_accuracy),
                "val_log_loss": _round(self.val_log_loss), "seconds": _round(self.seconds, 1),
                "estimated_seconds": round(self.estimate, 1), "status": self.status}

    def trains(self) -> bool:
        """Whether it trains by gradient (and so keeps a checkpoint while it does)."""
        return self.options["strategy"] != "features"

    def saved_row(self) -> dict:
        """What a resumed run needs of a finished candidate besides its model."""
        return {**self.row(), "classifier_seconds": self.classifier_seconds, "torch_extra": self.torch_extra,
                "unrounded": {
            "val_accuracy": self.val_accuracy, "val_log_loss": self.val_log_loss, "seconds": self.seconds,
            "estimate": self.estimate}}

    def restore(self, row: dict) -> None:
        exact = row["unrounded"]
        self.val_accuracy, self.val_log_loss = exact["val_accuracy"], exact["val_log_loss"]
        self.seconds, self.estimate = exact["seconds"], exact["estimate"]
        self.classifier_seconds, self.status = row.get("classifier_seconds"), "ok"
        self.torch_extra = float(row.get("torch_extra") or 0.0)


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def fine_grained(labels: np.ndarray) -> bool:
    """Many classes with few images each (car models, bird species): bilinear pooling's case."""
    counts = np.bincount(labels)
    return len(counts) >= 10 and float(np.median(counts)) <= 100


def feature_candidates(backbone: str | None) -> list[Candidate]:
    """The cheap ones: features on each offline backbone (or the one the user named), then the
    ensemble of them."""
    names = [backbone] if backbone else [n for n in OFFLINE_ZOO if packaged_installed(n)]
    found = [Candidate(f"features {n}", {"strategy": "features", "backbone": n}) for n in names]
    if len(names) > 1:
        found.append(Candidate(f"features {'+'.join(n.removeprefix('tf_efficientnet_') for n in names)}",
                               {"strategy": "features", "backbone": ",".join(names)}))
    return found


def choose(make: Callable[[dict], object], train, val, backbone: str | None, deadline: float,
           val_scores: Callable[[object, object], tuple[float, float]],
           callbacks: Sequence = (), budget_callback: Callable[[float], object] | None = None,
           saved: SavedCandidates | None = None, scored_images: int = 0,
           ) -> tuple[object, list[Candidate], str]:
    """Fit the candidates in order while the budget allows; return (the winner, every candidate,
    why it won). `val_scores(model, val)` gives (accuracy, log loss) on the val split.

    `deadline` is when the whole run must end: a candidate starts only when it fits with the
    scoring of `scored_images` held-out images after the choice, were it (or any finished one)
    to win. `saved` keeps each finished candidate, so an interrupted run continues from them."""
    candidates = feature_candidates(backbone)
    unit = None  # seconds of a Lite0 features pass over train + val, once measured
    # The same in PyTorch, for what runs there whatever the runtime: training, the scoring of a
    # trained candidate, bilinear-pooled features (their ONNX graph is refused, 1e-4 off).
    torch_unit = None
    passed = max(len(train) + len(val), 1) if scored_images else 1  # images of the measured pass
    after: list[float] = []  # the scoring after the choice, were each finished candidate to win

    def ending(candidate: Candidate) -> float:
        """Seconds of scoring the held-out images were `candidate` to win, at its cost per image
        (the measured Lite0 pass scaled by its network's multiply-adds and pixels). A features
        winner's refit is not reserved: it runs when the time left allows it (`refit_fits`)."""
        if unit is None:
            return 0.0
        return scored_images * pace(candidate) / passed * _pass_cost(candidate.options)

    def pace(candidate: Candidate) -> float:
        """The measured unit of the runtime the scoring with `candidate` runs in: a trained network's
        in onnxruntime when the images pay back its export (inference/probabilities.py), which
        is added; bilinear pooling's in PyTorch."""
        if candidate.options.get("pooling") == "bilinear" or candidate.options["strategy"] == "bilinear":
            return torch_unit
        if candidate.options["strategy"] == "features" or unit == torch_unit:
            return unit
        if scored_images < EXPORT_PAYS_BACK:
            return torch_unit
        return unit + torch_unit * EXPORT_IN_FORWARDS / scored_images

    def run(candidate: Candidate, extra_callbacks: Sequence = ()) -> None:
        kept = saved.finished(candidate.name, candidate.options) if saved is not None else None
        if kept is not None:
            row, candidate.model = kept
            candidate.restore(row)
            candidate.scoring = ending(candidate)
            after.append(candidate.scoring)
            log.info(f"auto: {candidate.name}: val accuracy {candidate.val_accuracy:.4f} (kept from before the "
                     "interruption)")
            return
        # A candidate that trains by gradient ends its epochs in time to leave the scoring of
        # whichever candidate wins (its Budget); it starts when its whole estimate and its own
        # scoring fit. One that cannot be cut short must leave room for any winner's scoring.
        anyone = deadline - time.perf_counter() - max([*after, ending(candidate)])
        left = deadline - time.perf_counter() - ending(candidate) if candidate.trains() else anyone
        if (candidate.estimate > left or anyone <= 0) and any(c.status == "ok" for c in candidates):  # the first runs
            candidate.status = f"skipped: needs about {candidate.estimate:.0f} s, {max(min(left, anyone), 0):.0f} s left"
            log.info(f"auto: {candidate.name} {candidate.status}")
            return
        start = time.perf_counter()
        resumable = saved.training(candidate.name) if saved is not None and candidate.trains() else []
        try:
            model = make(candidate.options).fit(train, val=val,
                                                callbacks=[*callbacks, *extra_callbacks, *resumable])
        except TransferlabError:
            raise  # the user's mistake (an unknown backbone, a bad option): every candidate would hit it
        except Exception as err:  # one candidate failing (memory, odd data) leaves the others
            candidate.status = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
            log.warning(f"auto: {candidate.name} {candidate.status}")
            return
        candidate.seconds = time.perf_counter() - start
        candidate.val_accuracy, candidate.val_log_loss = val_scores(model, val)
        info = getattr(model, "fit_info_", {})
        candidate.classifier_seconds = info.get("classifier_seconds")
        candidate.torch_extra = max(info.get("frozen_torch_seconds", 0.0) - info.get("frozen_seconds", 0.0), 0.0)
        candidate.model, candidate.status = model, "ok"
        candidate.scoring = ending(candidate)
        after.append(candidate.scoring)
        if saved is not None:
            saved.keep(candidate.name, candidate.saved_row(), model)
        log.info(f"auto: {candidate.name}: val accuracy {candidate.val_accuracy:.4f}, log loss "
                 f"{candidate.val_log_loss:.4f} ({candidate.seconds:.0f} s)")

    for candidate in candidates:
        if unit is not None:
            candidate.estimate = unit * _cost(candidate.options["backbone"])
        run(candidate)
        if unit is None and candidate.seconds is not None:
            unit = candidate.seconds / _cost(candidate.options["backbone"])
            torch_unit = (candidate.seconds + candidate.torch_extra) / _cost(candidate.options["backbone"])
            candidate.scoring = ending(candidate)  # the first candidate's, now that its cost is known
            after[:] = [candidate.scoring]
    singles = [c for c in candidates if c.status == "ok" and "," not in c.options["backbone"]]
    if singles and unit is not None:
        best = max(singles, key=_rank)
        name = best.options["backbone"]
        # The whole image squashed to the square against timm's centre crop: far better on wide
        # objects (cars43 0.83 against 0.69), worse on others below the native size; validation decides,
        # and bilinear pooling then uses the better of the two.
        squash = Candidate(f"features {name} squash", {**best.options, "resize": "squash"}, unit * _cost(name))
        run(squash)
        candidates.append(squash)
        look = squash if squash.status == "ok" and _rank(squash) > _rank(best) else best
        pooling = Candidate(f"{look.name} bilinear pooling", {**look.options, "pooling": "bilinear"},
                            torch_unit * _cost(name) * BILINEAR_POOLING_OVER_FEATURES)
        run(pooling)
        candidates.append(pooling)
        detail = fine_grained(train.labels)
        if detail and pooling.status == "ok" and _rank(pooling) > _rank(look):
            size = HIGHER_RESOLUTION * NATIVE.get(name, 224)
            sharper = Candidate(f"{pooling.name} {size} px",
                                {**pooling.options, "image_size": size, "layer": last_block_stage(name)},
                                torch_unit * _cost(name) * (HIGHER_RESOLUTION ** 2 + BILINEAR_POOLING_OVER_FEATURES - 1))
            run(sharper)
            candidates.append(sharper)
        later = [Candidate(f"finetune {name}", {"strategy": "finetune", "backbone": name},
                           torch_unit * _cost(name) * FINETUNE_OVER_FEATURES * UNFREEZE_3_OVER_1)]
        if detail:
            later.append(Candidate("bilinear", {"strategy": "bilinear"}, torch_unit * FINETUNE_OVER_FEATURES))
        for candidate in later:
            left = deadline - time.perf_counter() - max([*after, ending(candidate)])
            # The budget callback ends its epochs in time for any winner's scoring; the estimate
            # decides whether it starts.
            run(candidate, [budget_callback(left / 60)] if budget_callback and left > 0 else [])
            candidates.append(candidate)
    done = [c for c in candidates if c.status == "ok"]
    if not done:
        reasons = "; ".join(f"{c.name}: {c.status}" for c in candidates)
        raise TransferlabError(f"--strategy auto: no candidate could be fitted ({reasons}): give a larger --budget "
                               "or choose a strategy")
    winner = max(done, key=_rank)
    runner_up = max((c for c in done if c is not winner), key=_rank, default=None)
    why = f"highest validation accuracy ({winner.val_accuracy:.4f}"
    why += (f"; next {runner_up.name} at {runner_up.val_accuracy:.4f})" if runner_up else ")")
    if runner_up and math.isclose(winner.val_accuracy, runner_up.val_accuracy):
        why = (f"validation accuracy tied with {runner_up.name} ({winner.val_accuracy:.4f}); lower validation "
               f"log loss ({winner.val_log_loss:.4f} against {runner_up.val_log_loss:.4f})")
    return winner.model, candidates, why


def refit_fits(candidate: Candidate, deadline: float) -> tuple[bool, str]:
    """Whether a features winner's refit on all of train (C by cross-validation) fits in the time
    left after scoring; (False, why) when it does not: the winner is then kept as fitted."""
    need = REFIT_OVER_SEARCH * (candidate.classifier_seconds or 0.0)
    left = deadline - time.perf_counter() - candidate.scoring
    if need <= left:
        return True, ""
    return False, f"needs about {need:.0f} s, {max(left, 0):.0f} s left"


def last_block_stage(backbone: str) -> str | None:
    """The tap for bilinear pooling at the higher resolution: the Lite zoo's last block stage
    (320 channels; the stage before it scored lower at 448 px on cars43), else the default."""
    return "blocks.6" if backbone in OFFLINE_ZOO else None


def _cost(backbone: str) -> float:
    """Estimated cost of a features pass, in Lite0 passes. An ensemble runs every member at the
    largest member's size; a member already at its own size reuses its single run's features."""
    names = backbone.split(",")
    if len(names) == 1:
        return COST.get(names[0], 1.0)
    size = max(NATIVE.get(n, 224) for n in names)
    return sum(COST.get(n, 1.0) * (size / NATIVE.get(n, 224)) ** 2 for n in names if NATIVE.get(n, 224) != size)


def _pass_cost(options: dict) -> float:
    """The cost of a new image through the candidate's network, in Lite0 passes at 224 px: an
    ensemble runs every member at the largest member's size, `image_size` scales the pixels."""
    names = (options.get("backbone") or OFFLINE_ZOO[0]).split(",")  # the trained bilinear: the default
    size = options.get("image_size") or max(NATIVE.get(n, 224) for n in names)
    return sum(COST.get(n, 1.0) * (size / NATIVE.get(n, 224)) ** 2 for n in names)


def _rank(candidate: Candidate) -> tuple[float, float]:
    return candidate.val_accuracy, -candidate.val_log_loss
