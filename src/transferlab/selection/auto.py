"""AutoClassifier: `--strategy auto` as a meta-estimator (scikit-learn's GridSearchCV, AutoGluon's
predictor). It fits the portfolio's candidates within the budget (search.py), each an ordinary
ImageClassifier; weighs them by ensemble selection on validation probabilities (out-of-fold over
train + val where every candidate is a cheap features one); refits the chosen ones on all the
labelled training images where that is cheap (or asked for); and holds the result, one candidate
or their weighted ensemble, as `model_`, through which predict, score and save pass.

The test split is never seen here: the caller scores `model_` on it once, after the choice. The
run's plan (the candidates fitted, each trained one's epochs, and every decision the clock made)
is `plan_`: `fit(..., plan=)` replays it exactly, with no budget deciding anything."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from ..classifier import (ImageClassifier, align_classes, hold_back, labelled_set, read_fitted, training_set,
                          val_scores, write_fitted)
from ..config import FitOptions, RunConfig
from ..data.types import ImageSet
from ..errors import TransferlabError
from ..features.logistic import C_GRID, out_of_fold
from ..models.factory import build_model, ensemble_spec
from ..models.weights import WeightsInfo, packaged_installed
from ..training.callbacks import Budget, Checkpoint, EpochLimits
from ..training.fit import fingerprint
from ..training.strategies import register_meta, resolve
from ..trust.calibration import apply
from ..models.compute import gflops, native_size
from ..trust.unknown import EMBEDDER, fit_detector
from .ensemble_selection import Selection, scores, select
from .saved_candidates import FOLDER as CANDIDATES_FOLDER
from .saved_candidates import SavedCandidates
from .search import Candidate, Costs, Search

log = logging.getLogger("transferlab")

OFFLINE_ZOO = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
# A features candidate is refitted on train + val at the C its validation chose: one fit at one C
# against its first fit's search along the 11 values of C_GRID (warm-started, so each costs less
# than a cold one: twice the search's share is kept).
REFIT_OVER_SEARCH = 2 / len(C_GRID)
FOLDS = 5  # out-of-fold probabilities of the features candidates
# Their cost: FOLDS fits at one C, each cold, against the first fit's warm-started search along
# the grid: 0.4 to 1.8 of it, measured on synthetic features of 1,280 and 20,000 dimensions.
OUT_OF_FOLD_OVER_SEARCH = 2.0
PLAN_FORMAT = 1


@dataclass
class Member:
    """A candidate in the final model: its weight and how it was (re)fitted."""
    name: str
    weight: float
    refit: str  # "train+val", or why it was kept as fitted on train


@dataclass(kw_only=True, eq=False, repr=False)
class AutoClassifier(ClassifierMixin, BaseEstimator, FitOptions):
    """The best of the portfolio's candidates, or their weighted ensemble, within `budget` minutes.

    Parameters are ImageClassifier's (the options of `transferlab train`); every candidate
    inherits them and uses what applies to it. `fit` learns `candidates_` (every candidate, fitted
    or skipped, with its validation scores), `ensemble_` (the selection: members and weights),
    `best_estimator_` (the best single candidate on validation), `model_` (what predicts: one
    ImageClassifier, a candidate or the ensemble of several), `plan_` (what `fit(plan=)` replays)
    and `fit_info_`."""

    progress: bool = True

    def fit(self, X, y=None, *, val=None, callbacks=None, plan: dict | None = None) -> "AutoClassifier":
        """Fit on `X` (as ImageClassifier.fit takes it); `val` guides the choice, else 15% of each
        class is held back from X for it. Either way the chosen features candidates are refitted
        on all of X and val. `plan` (a finished fit's `plan_`) replays that fit exactly."""
        started = time.perf_counter()
        cfg = resolve(RunConfig.from_dict(self._fit_options(), origin="AutoClassifier"))
        given, classes = training_set(X, y)
        if val is not None:
            val = align_classes(labelled_set(val, None, "val")[0], given.classes, "val")
        train, val = hold_back(given, cfg.seed) if val is None else (given, val)
        whole = ImageSet(train.images + val.images, np.concatenate([train.labels, val.labels]), train.classes,
                         train.name)
        callbacks = list(callbacks or [])
        budget = next((c for c in callbacks if isinstance(c, Budget)), None) or Budget(cfg.budget, started)
        checkpoint = next((c for c in callbacks if isinstance(c, Checkpoint)), None)
        saved = None if checkpoint is None or plan is not None else SavedCandidates(
            checkpoint.directory / CANDIDATES_FOLDER, fingerprint(train, val), write_fitted,
            read_fitted, budget.started, save=checkpoint.save)
        spent_before = saved.spent_before if saved is not None else 0.0
        deadline = budget.started + budget.minutes * 60 - spent_before if plan is None else np.inf
        # The unknown-image detector is the final model's, fitted once below, not each candidate's.
        options = {**self._fit_options(), "budget": None, "keep_known": 0.0}

        def make(changes: dict) -> ImageClassifier:
            return ImageClassifier(**{**options, **changes}, progress=self.progress)

        costs = Costs(len(train) + len(val), budget.reserve_images, cfg.image_size)
        search = Search(make, train, val, deadline, val_scores, costs,
                        [c for c in callbacks if not isinstance(c, (Budget, Checkpoint))], Budget, saved,
                        reserve=lambda: self._refit_reserve(search.candidates)
                        + _detector_reserve(search.candidates, costs, cfg))
        try:
            candidates = (search.replay(plan["candidates"]) if plan is not None
                          else search.run(self._backbones()))
        except BaseException:
            if saved is not None:
                saved.record()  # the seconds spent so far count against the budget when it continues
            raise
        done = [c for c in candidates if c.status == "ok"]
        decisions = plan["decisions"] if plan is not None else None
        oof = self._out_of_fold(done, whole, cfg.seed, deadline, costs, decisions)
        selection, allowed, rows = self._select(done, oof, len(train), whole, costs, deadline, decisions)
        members = self._refit(done, selection, whole, val, deadline, costs, cfg, make, decisions)
        model = self._assemble(done, selection, members, cfg, rows)
        best = max(done, key=lambda c: (c.val_accuracy, -c.val_log_loss))
        detector = fit_detector(whole.images, whole.labels, model.preprocess_, model.embedding(), cfg.keep_known,
                                cfg.seed) if cfg.keep_known else None
        # Learned state, set only now that everything has succeeded.
        self.candidates_, self.ensemble_, self.best_estimator_, self.model_ = candidates, selection, best.model, model
        self.unknown_ = detector
        self.plan_ = {"format": PLAN_FORMAT, "candidates": [c.plan() for c in done],
                      "decisions": {"out_of_fold": sorted(oof), "allowed": [c.name for c, ok in zip(done, allowed) if ok],
                                    "refit": {m.name: m.refit for m in members}}}
        self.fit_info_ = {**model.fit_info_, "auto": self._report(
            candidates, done, selection, members, rows, oof, cfg, time.perf_counter() - started + spent_before)}
        return self

    # -- the steps ---------------------------------------------------------------------------

    def _backbones(self) -> list[str]:
        """The user's backbone (several, comma-separated, run as one concatenated candidate), else
        every offline one installed."""
        return [self.backbone] if self.backbone else [n for n in OFFLINE_ZOO if packaged_installed(n)]

    def _refit_reserve(self, candidates: list[Candidate]) -> float:
        """Seconds to keep for refitting features candidates on train + val: the dearest one's (the
        ensemble's other members are refitted when the time left allows it)."""
        return max((REFIT_OVER_SEARCH * (c.classifier_seconds or 0.0) for c in candidates
                    if c.status == "ok" and not c.trains()), default=0.0)

    def _out_of_fold(self, done: list[Candidate], whole: ImageSet, seed: int, deadline: float, costs: Costs,
                     decisions: dict | None) -> dict[str, tuple]:
        """Per features candidate with logistic regression: (probabilities, readable mask) of every
        train + val image from the candidate's classifier (at its C) fitted on the other folds;
        its features are cached, so this costs a few classifier fits: each done only when they
        fit before the scoring of the best candidate."""
        found = {}
        best = max(done, key=lambda c: (c.val_accuracy, -c.val_log_loss))
        for c in done:
            info = getattr(c.model, "fit_info_", {})
            if c.trains() or info.get("classifier") != "logistic regression":
                continue
            need = OUT_OF_FOLD_OVER_SEARCH * (c.classifier_seconds or 0.0)
            fits = time.perf_counter() + need + costs.scoring(best.options) <= deadline
            if not (fits if decisions is None else c.name in decisions["out_of_fold"]):
                log.info(f"auto: {c.name} chosen on val alone: its out-of-fold fits need about {need:.0f} s")
                continue
            extracted = c.model._features(whole.images, "features")
            labels = whole.labels[extracted.ok]
            proba = out_of_fold(extracted.features, labels, len(whole.classes), info["C"], seed, FOLDS)
            if proba is not None:
                # More held-out images than val alone: the candidate's calibration is fitted on them.
                log_proba = np.log(np.clip(proba, 1e-300, None))
                calibration = c.model.calibrate(log_proba, labels, "out-of-fold over train + val", seed)
                found[c.name] = (apply(log_proba, calibration), extracted.ok)
        return found

    def _select(self, done: list[Candidate], oof: dict, n_train: int, whole: ImageSet, costs: Costs,
                deadline: float, decisions: dict | None) -> tuple[Selection, list[bool], dict]:
        """Ensemble selection over the candidates that see images the way the best one does (crop
        or squash: the ensemble decodes once). The rows: every train + val image when each such
        candidate has out-of-fold probabilities, else the val images (a features candidate's
        out-of-fold ones there). A candidate whose scoring would not fit the time left is kept out."""
        best = max(done, key=lambda c: (c.val_accuracy, -c.val_log_loss))
        view = best.options.get("resize", "crop")
        allowed = [c.options.get("resize", "crop") == view for c in done]
        if decisions is not None:
            allowed = [c.name in decisions["allowed"] for c in done]
        everywhere = all(c.name in oof for c, ok in zip(done, allowed) if ok)
        n = len(whole)
        rows = np.arange(n) if everywhere else np.arange(n_train, n)
        full, readable = [], np.ones(len(rows), bool)
        for c, may_join in zip(done, allowed):
            # Every candidate's probabilities over all train + val rows (zeros where it has none:
            # a candidate without out-of-fold ones has them for val alone).
            spread, seen = np.zeros((n, len(whole.classes))), np.zeros(n, bool)
            if c.name in oof:
                proba, seen = oof[c.name]
                spread[seen] = proba
            else:
                spread[n_train:][c.val_ok] = c.val_proba
                seen[n_train:] = c.val_ok
            full.append(spread[rows])
            if may_join:  # one that may not join (another view) decides no rows
                readable &= seen[rows]
        labels = whole.labels[rows][readable]
        probas = [p[readable] for p in full]
        selection = select(probas, labels, allowed=allowed)
        # Members whose scoring does not fit the time left go, dearest first, until it does.
        while decisions is None and len(selection.members) > 1:
            scoring = sum(costs.scoring(done[k].options) for k in selection.members)
            if time.perf_counter() + scoring <= deadline:
                break
            dearest = max(selection.members, key=lambda k: costs.scoring(done[k].options))
            allowed[dearest] = False
            selection = select(probas, labels, allowed=allowed)
        source = "out-of-fold over train + val" if everywhere else "the validation images"
        mixture = sum(selection.weights[k] * probas[k] for k in selection.members)
        return selection, allowed, {"images": int(readable.sum()), "from": source,
                                    "scores": {c.name: scores(p, labels) for c, p in zip(done, probas)},
                                    "mixture": (np.log(np.clip(mixture, 1e-300, None)), labels)}

    def _refit(self, done: list[Candidate], selection: Selection, whole: ImageSet, val: ImageSet, deadline: float,
               costs: Costs, cfg: RunConfig, make, decisions: dict | None) -> list[Member]:
        """Each member refitted on train + val: a features one (from cached features, at the C its
        validation chose) when the time left allows it, a trained one with --refit-full (for the
        epochs its first fit ran). The test split is never touched."""
        members = []
        ensemble_scoring = sum(costs.scoring(done[k].options) for k in selection.members)
        for k in selection.members:
            c = done[k]
            why = _refit_decision(c, deadline, ensemble_scoring, cfg.refit_full) if decisions is None \
                else decisions["refit"][c.name]
            if why == "train+val":
                begun = time.perf_counter()
                extra = [EpochLimits(c.epochs)] if c.trains() and c.epochs else []
                # A trained member keeps val for its (epoch-limited) early stopping; it trains on it too.
                chosen_c = c.model.fit_info_.get("C")
                again = {**c.options, "logistic_c": chosen_c} if chosen_c and not c.trains() else c.options
                # Its calibration was fitted on images its first fit held out; this fit holds none out.
                c.model = make(again).fit(whole, val=val if c.trains() else None, callbacks=extra,
                                          calibration=c.model.spec_.calibration)
                log.info(f"auto: refitted {c.name} on all {len(whole)} training images "
                         f"({time.perf_counter() - begun:.0f} s)")
            else:
                log.info(f"auto: {c.name} kept as fitted on train: {why}")
            members.append(Member(c.name, selection.weights[k], why))
        return members

    def _assemble(self, done: list[Candidate], selection: Selection, members: list[Member],
                  cfg: RunConfig, rows: dict) -> ImageClassifier:
        """One member: that candidate's classifier (calibrated by its own fit). Several: one
        network averaging their calibrated probabilities with the selection's weights, saved and
        loaded like any run's, and calibrated on the images the selection chose on (averages of
        calibrated models are underconfident)."""
        chosen = [done[k].model for k in selection.members]
        if len(chosen) == 1:
            return chosen[0]
        model = ensemble_classifier(chosen, [m.weight for m in members], {**self._fit_options(), "budget": cfg.budget},
                                    [m.name for m in members], cfg.seed)
        model.calibrate(*rows["mixture"], fitted_on=rows["from"], seed=cfg.seed)
        return model

    def _report(self, candidates, done, selection, members, rows, oof, cfg, seconds) -> dict:
        scored = rows["scores"]
        table = []
        for c in candidates:
            row = c.row()
            if c.name in scored:
                row["choice_accuracy"], row["choice_log_loss"] = (round(v, 4) for v in scored[c.name])
            table.append(row)
        names = [f"{m.name} ({m.weight:.2f})" for m in members]
        why = (f"ensemble selection on {rows['images']} images ({rows['from']}): accuracy "
               f"{selection.accuracy:.4f}, log loss {selection.log_loss:.4f}")
        return {"chosen": " + ".join(names), "why": why, "members": [vars(m) for m in members],
                "choice_images": rows["images"], "choice_from": rows["from"], "budget_minutes": cfg.budget,
                "seconds": round(seconds, 1), "candidates": table, "refit_full": cfg.refit_full}

    # -- what passes through to model_ -------------------------------------------------------

    def _fit_options(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(FitOptions)}

    def __getattr__(self, name: str):
        # The fitted model's learned state (classes_, config_, network_, history_, ...), as
        # GridSearchCV passes its best estimator's through.
        if name.endswith("_") and not name.startswith("__") and "model_" in self.__dict__:
            return getattr(self.__dict__["model_"], name)
        raise AttributeError(name)

    def __sklearn_is_fitted__(self) -> bool:
        return "model_" in self.__dict__

    def _fitted(self) -> ImageClassifier:
        if "model_" not in self.__dict__:
            raise TransferlabError("this AutoClassifier is not fitted yet: call fit() first")
        return self.model_

    def predict_proba(self, X, tta: bool = False) -> np.ndarray:
        return self._fitted().predict_proba(X, tta)

    def predict(self, X, tta: bool = False, reject: bool = False) -> np.ndarray:
        return ImageClassifier.predict(self, X, tta, reject)

    def predict_proba_readable(self, images, tta: bool = False):
        return self._fitted().predict_proba_readable(images, tta)

    def score(self, X, y=None, sample_weight=None) -> float:
        return self._fitted().score(X, y, sample_weight)

    def class_names(self) -> list[str]:
        return self._fitted().class_names()

    def save(self, directory, overwrite: bool = False):
        return ImageClassifier.save(self, directory, overwrite)

    def write_model_files(self, directory) -> None:
        self._fitted().write_model_files(directory)
        if self.unknown_ is not None:
            self.unknown_.save(directory)

    def unknown_score(self, X) -> np.ndarray:
        return ImageClassifier.unknown_score(self, X)

    def embedding(self):
        return self._fitted().embedding()

    def _detector(self):
        return ImageClassifier._detector(self)

    def _check_fitted(self) -> None:
        self._fitted()


def ensemble_classifier(models: list[ImageClassifier], weights: list[float], params: dict, names: list[str],
                        seed: int = 0) -> ImageClassifier:
    """One classifier whose network averages the fitted `models`' probabilities with `weights`:
    built from its spec (as loading the saved run rebuilds it), the members' weights copied in."""
    spec = ensemble_spec([(m.spec_, m.preprocess_) for m in models], weights, seed)
    built = build_model(spec, load_weights=False)
    for network, m in zip(built.network.backbone.networks, models):
        network.load_state_dict(m.network_.state_dict())
    return ImageClassifier.assemble(
        params, built.network.eval(), spec, built.preprocess, WeightsInfo.combined([m.weights_ for m in models]),
        list(models[0].classes_),
        fit_info={"ensemble": [{"candidate": n, "weight": round(w, 4)} for n, w in zip(names, weights)]},
        skipped=sorted({s for m in models for s in m.skipped_}))


def _detector_reserve(candidates: list[Candidate], costs: Costs, cfg: RunConfig) -> float:
    """Seconds to keep for the unknown-image detector: its backbone (in PyTorch) over the held-out
    images the run scores, and over the training images unless the best candidate so far sees
    them as a Lite0 features candidate cached them (the embedder's own input: nothing to run)."""
    if not cfg.keep_known or costs.torch_unit is None:
        return 0.0
    done = [c for c in candidates if c.status == "ok"]
    best = max(done, key=lambda c: (c.val_accuracy, -c.val_log_loss), default=None)
    cached = best is not None and best.options.get("image_size") in (None, native_size(EMBEDDER)) and \
        best.options.get("resize", "crop") == "crop" and best.options.get("backbone") == EMBEDDER
    images = costs.scored_images + (0 if cached else costs.images)
    return images * gflops(EMBEDDER) * costs.torch_unit


def _refit_decision(c: Candidate, deadline: float, scoring: float, refit_full: bool) -> str:
    """"train+val", or why the candidate is kept as fitted on train."""
    if c.trains():
        return "train+val" if refit_full else "kept: a trained candidate is refitted with --refit-full"
    need = REFIT_OVER_SEARCH * (c.classifier_seconds or 0.0)
    left = deadline - time.perf_counter() - scoring
    if need <= left:
        return "train+val"
    return f"kept: its refit needs about {need:.0f} s, {max(left, 0):.0f} s left"


register_meta("auto", AutoClassifier)
