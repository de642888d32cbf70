"""Test accuracy and wall time of transferlab's configurations on each data set in ../shared/data.

Each configuration is one `transferlab.train` call in this process with an empty feature cache of
its own (so every figure includes the backbone pass over every image, as a first run does), run
one after another: run the script alone on the machine.

    python benchmarks/accuracy.py [--data DIR ...] [--configs NAME ...] [--list]

For `auto`, every candidate is also scored on the test split after the run (not counted in its
wall time; the run itself never reads test before its choice), and the final model (one
candidate or the ensemble) against the best single candidate on validation and on test. The
figures auto is held to: cars43 >= 0.94, cifar10-small >= 0.80, hymenoptera >= 0.98, the
ensemble at least the best single candidate's test accuracy, the run within its budget + 5%.
    python benchmarks/accuracy.py --configs auto
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import transferlab

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LITES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")

CONFIGS = {
    "features": {},
    "features-lite2": {"backbone": LITES[2]},
    "features-lite0+2": {"backbone": f"{LITES[0]},{LITES[2]}"},
    "features-lite0+1+2": {"backbone": ",".join(LITES)},
    "features-lite0+1+2-mirror": {"backbone": ",".join(LITES), "feature_views": 2},
    "features-squash": {"resize": "squash"},
    "features-bilinear-pooling": {"pooling": "bilinear", "resize": "squash"},
    "features-bilinear-pooling-448": {"pooling": "bilinear", "resize": "squash", "image_size": 448,
                                      "layer": "blocks.6"},
    "features-tta": {"tta": True},
    "features-squash-tta": {"resize": "squash", "tta": True},
    "frozen": {"strategy": "frozen"},
    "finetune": {"strategy": "finetune"},
    "bilinear": {"strategy": "bilinear"},
    "reinit": {"strategy": "reinit"},
    "scratch": {"strategy": "scratch"},
    "auto": {"strategy": "auto"},  # its default budget; every candidate scored on test after the run
}
QUICK = ["features", "features-lite2", "features-lite0+2", "features-lite0+1+2", "features-lite0+1+2-mirror"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+",
                        default=[str(SHARED / n) for n in ("hymenoptera", "cifar10-small", "cars43")])
    parser.add_argument("--configs", nargs="+", default=QUICK, choices=list(CONFIGS))
    parser.add_argument("--list", action="store_true", help="print the configurations and stop")
    args = parser.parse_args()
    if args.list:
        for name, options in CONFIGS.items():
            print(f"{name:28s} {options}")
        return
    print(f"{'data':14s} {'configuration':28s} {'test acc':>8s} {'wall s':>7s}  auto chose")
    for data in map(Path, args.data):
        for name in args.configs:
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                run = transferlab.train(data, out=f"{tmp}/runs", cache_dir=f"{tmp}/cache", progress=False,
                                        **CONFIGS[name])
                wall = time.perf_counter() - start
                auto = run.metrics["fit"].get("auto", {})
                budget = auto.get("budget_minutes")
                within = f"  budget {budget * 60:.0f} s: {wall / (budget * 60):.3f} of it" if budget else ""
                print(f"{data.name:14s} {name:28s} {run.score:8.4f} {wall:7.1f}  {auto.get('chosen', '')}{within}",
                      flush=True)
                if auto:  # while the run folder and its cache are still there
                    _candidates_on_test(run)


def _candidates_on_test(run) -> None:
    """Each fitted candidate's val and test accuracy (as the run fitted it: members after their
    refit), and the final model against the best single candidate."""
    from transferlab.workflows.train import _splits

    splits = _splits(transferlab.RunConfig.from_yaml(run.path / "config.yaml"))[1]  # the run's own, audit included
    test = splits.test
    rows = {r["candidate"]: r for r in run.metrics["fit"]["auto"]["candidates"]}
    best = None
    for c in run.classifier.candidates_:
        if c.status != "ok":
            print(f"{'':14s}   {c.name:52s} {c.status}", flush=True)
            continue
        proba, ok, _ = c.model.predict_proba_readable(test.images)
        accuracy = float((proba.argmax(1) == test.labels[ok]).mean())
        print(f"{'':14s}   {c.name:52s} val {c.val_accuracy:.4f} test {accuracy:.4f} {c.seconds:6.1f} s "
              f"(choice rows {rows[c.name].get('choice_accuracy')})", flush=True)
        if best is None or (c.val_accuracy, -c.val_log_loss) > best[0]:
            best = ((c.val_accuracy, -c.val_log_loss), c.name, accuracy)
    members = run.metrics["fit"]["auto"]["members"]
    print(f"{'':14s}   final ({len(members)} member(s)) test {run.score:.4f} against the best single on val "
          f"({best[1]}) {best[2]:.4f}: {run.score - best[2]:+.4f}", flush=True)


if __name__ == "__main__":
    main()
