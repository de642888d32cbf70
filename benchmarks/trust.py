"""How far transferlab's answers can be trusted, on the sets in ../shared/data (issue 33):

(a) calibration: expected calibration error (15 bins) on each set's test split, before and after
    the run's calibration, for `features`, `finetune` and the default strategy (`auto`);
(b) unknown images: the hymenoptera and cars43 runs asked about the other sets' test images and
    cifar10-small's: AUROC of the unknown score (foreign against the run's own test images), the
    share of foreign images rejected and of known test images kept at the run's threshold;
(c) suspected label errors: benchmarks/label_noise.py (noise moved into train, the audit's top
    flags, a run after --exclude), run from here with --labels.

Every run is a `transferlab.train` call in this process with a feature cache of its own (cold).
Run it alone: auto's choices follow its time budget. Targets: ECE after <= 0.03 on each set;
AUROC >= 0.95 with >= 90% of foreign images rejected while >= 94% of known ones are kept.

    python benchmarks/trust.py [--data hymenoptera cars43 ...] [--strategies features finetune auto]
                               [--finetune-budget MIN] [--labels]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

import transferlab
from transferlab.classifier import ImageClassifier
from transferlab.data.sources import load_source
from transferlab.trust.calibration import apply, fit_calibration, reliability, uncalibrated

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = ("hymenoptera", "cifar10-small", "cars43")
FOREIGN_LIMIT = 500  # foreign images per set (a seeded draw), so no set outweighs the others


def held_out(name: str, limit: int | None = None):
    """A set's held-out images (test/, else val/), at most `limit` of them (seeded)."""
    source = load_source(SHARED / name)
    splits = np.array(source.splits, dtype=object)
    split = "test" if "test" in source.given_splits else "val"
    rows = np.flatnonzero(splits == split)
    if limit is not None and len(rows) > limit:
        rows = np.sort(np.random.default_rng(0).choice(rows, limit, replace=False))
    return source.images.subset(rows)


def unknown_figures(run: Path, known: str) -> dict:
    """AUROC, foreign images rejected and known test images kept, per foreign set."""
    clf = ImageClassifier.load(run)
    clf.progress = False
    threshold = clf.unknown_.threshold
    mine = clf.unknown_score(held_out(known))
    rows = {"known_kept": float((mine <= threshold).mean()), "threshold": threshold}
    for other in SETS:
        if other == known:
            continue
        theirs = clf.unknown_score(held_out(other, FOREIGN_LIMIT))
        truth = np.r_[np.zeros(len(mine)), np.ones(len(theirs))]
        rows[other] = {"auroc": float(roc_auc_score(truth, np.r_[mine, theirs])),
                       "rejected": float((theirs > threshold).mean()), "images": int(len(theirs))}
    return rows


def best_temperature_ece(run: Path, name: str) -> float:
    """The expected calibration error a temperature fitted on the test images themselves would
    reach: what no calibration fitted elsewhere can beat on average, the floor the target meets
    on these few images (read only here, never by a run)."""
    clf = ImageClassifier.load(run)
    clf.progress = False
    test = held_out(name)
    proba = uncalibrated(clf.predict_proba(test), clf.spec_.calibration)
    best = fit_calibration(np.log(np.clip(proba, 1e-300, None)), test.labels)
    return reliability(apply(np.log(np.clip(proba, 1e-300, None)), best), test.labels)["ece"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--strategies", nargs="+", default=["features", "finetune", "auto"])
    parser.add_argument("--finetune-budget", type=float, default=None,
                        help="minutes for each finetune run (default: none, its own early stopping)")
    parser.add_argument("--labels", action="store_true", help="also run (c), benchmarks/label_noise.py")
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="trust-"))
    os.environ["TRANSFERLAB_CACHE"] = str(work / "cache")  # cold: every backbone pass counted
    results = {}
    for name in args.data:
        for strategy in args.strategies:
            options = {"budget": args.finetune_budget} if strategy == "finetune" and args.finetune_budget else {}
            started = time.perf_counter()
            run = transferlab.train(str(SHARED / name), strategy=strategy, out=str(work / "runs"),
                                    name=f"{name}-{strategy}", progress=False, **options)
            seconds = time.perf_counter() - started
            m = run.metrics
            cal = m["calibration"]
            row = {"accuracy": m[m["score_split"]]["accuracy"], "ece_before": cal["ece_before"],
                   "ece_after": cal["ece_after"], "calibration": (cal["fitted"] or {}).get("method"),
                   "fitted_on": (cal["fitted"] or {}).get("fitted_on"), "seconds": round(seconds, 1),
                   "known_kept": m["unknown"]["kept"], "ece_temperature_fitted_on_test": best_temperature_ece(run.path, name)}
            if name in ("hymenoptera", "cars43"):
                row["unknown"] = unknown_figures(run.path, name)
            results[f"{name}/{strategy}"] = row
            print(f"{name:14s} {strategy:9s} test acc {row['accuracy']:.4f}  ECE {row['ece_before']:.4f} -> "
                  f"{row['ece_after']:.4f} ({row['calibration']}, on {row['fitted_on']}; a temperature fitted on "
                  f"test: {row['ece_temperature_fitted_on_test']:.4f})  "
                  f"known kept {row['known_kept']:.3f}  {seconds:.0f} s", flush=True)
            for other, f in (row.get("unknown") or {}).items():
                if isinstance(f, dict):
                    print(f"{'':25s}foreign {other:14s} AUROC {f['auroc']:.4f}  rejected {f['rejected']:.3f} "
                          f"of {f['images']}", flush=True)
    (work / "trust.json").write_text(json.dumps(results, indent=2))
    print(f"figures in {work / 'trust.json'}")
    afters = [r["ece_after"] for r in results.values()]
    print(f"ECE after calibration: worst {max(afters):.4f} (target <= 0.03)")
    if args.labels:
        script = Path(__file__).with_name("label_noise.py")
        for name in ("hymenoptera", "cars43"):
            subprocess.run([sys.executable, str(script), str(SHARED / name), "--retrain"], check=True)


if __name__ == "__main__":
    main()
