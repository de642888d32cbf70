"""train's quick label check: confident learning (audit/labels.py) on the features the run has
just cached for train and val, and one warning line when many of them look mislabelled; which
ones, `transferlab audit DATA --labels` shows. Only for runs that cache features (features, and
auto through its features candidates): for the others it would cost a backbone pass, and it is
skipped without a word."""

from __future__ import annotations

import logging
import time

import numpy as np

from ..audit.labels import check_features
from ..config import RunConfig
from ..data.split import Splits
from ..strategy_registry import strategy

log = logging.getLogger("transferlab")

# A flag counts toward the warning only when the out-of-fold model all but rules its label out
# (under 5%) and names another class (over 30%): a weak model flags many hard images of classes
# that look alike (clean cars43: 10-22% of train flagged), but few of them so confidently. Shares
# of such flags measured on train (benchmarks/label_noise.py's noise, seeds 0-2; the crop alone,
# as a features run has it, or both views, as auto's): clean cars43 0.6-2.0%, clean hymenoptera
# none; 5% of the labels moved 2.4-5.0%; 10% moved 3.7-6.8%. Above 2.5% it warns on none of the
# clean sets, on every one with 10% moved and on most with 5%.
SELF_CONFIDENCE_BELOW = 0.05
SUGGESTED_ABOVE = 0.3
WARN_SHARE = 0.025


def label_warning(clf, splits: Splits, config: RunConfig) -> dict | None:
    """The check's counts for metrics.json (None when it does not run), and the warning line
    when its confident flags are more than WARN_SHARE of train and val."""
    kind = strategy(config.strategy)
    if not (kind.cached_features or kind.searches) or not config.feature_cache:
        return None
    started = time.perf_counter()
    models = _feature_models(clf, kind.searches)
    if not models:
        return None
    parts = [part for part in (splits.train, splits.val) if part is not None]
    images = [im for part in parts for im in part.images]
    labels = np.concatenate([part.labels for part in parts])
    extracted = [m._features(images, "label check") for m in models]
    ok = np.logical_and.reduce([ex.ok for ex in extracted])
    views = [ex.features[ok[ex.ok]] for ex in extracted]
    paths = [im.name for im, good in zip(images, ok) if good]
    issues = check_features(views, labels[ok], list(splits.train.classes), paths, config.seed)
    if issues is None:
        return None
    confident = [i for i in issues.issues
                 if i.self_confidence < SELF_CONFIDENCE_BELOW and i.suggested_probability > SUGGESTED_ABOVE]
    info = {"images": issues.images, "flagged": len(issues.issues), "confident": len(confident),
            "views": len(views), "seconds": round(time.perf_counter() - started, 2)}
    if len(confident) > WARN_SHARE * issues.images:
        first = confident[0]
        log.warning(f"{len(confident)} images of train look mislabelled (e.g. {first.path}: {first.given} -> "
                    f"{first.suggested}); see `transferlab audit {config.data} --labels`")
    return info


def _feature_models(clf, searches: bool) -> list:
    """The fitted classifiers whose cached features the check reads: the run's own; under auto,
    its features candidate of the first backbone (the crop) and its squash candidate, as the
    audit reads both views."""
    if not searches:
        return [clf]
    done = [c for c in getattr(clf, "candidates_", []) if c.status == "ok" and c.model is not None]
    crop = next((c.model for c in done if c.entry == "features"), None)
    squash = next((c.model for c in done if c.entry == "squash"), None)
    return [m for m in (crop, squash) if m is not None]
