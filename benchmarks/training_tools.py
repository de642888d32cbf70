"""Test accuracy and wall time of the default finetune recipe against each training tool switched
on (EMA, layer-wise rate decay, gradual unfreezing, progressive resizing, `--lr find`), on
../shared/data/cars43 and cifar10-small.

Each configuration is one `transferlab.train` call with the decoded-image cache emptied first,
so every wall time includes decoding the JPEGs; the runs go one after another: run the script
alone on the machine. Ratios of wall times within one run of the script are what to compare.

    python benchmarks/training_tools.py [--data DIR ...] [--configs NAME ...] [--seeds N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import transferlab
from transferlab.data.cache import default_cache

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

BASE = {"strategy": "finetune"}
CONFIGS = {
    "finetune (default)": {},
    "--unfreeze 1": {"unfreeze": 1},  # the default until this benchmark showed 3 winning
    "--ema 0.999": {"ema": 0.999},
    "--lr-decay 0.7": {"lr_decay": 0.7},
    "--unfreeze-schedule 1,2,3": {"unfreeze_schedule": "1,2,3"},
    "--sizes 160,224": {"sizes": "160,224"},
    "--lr find": {"lr": "find"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=[str(SHARED / n) for n in ("cars43", "cifar10-small")])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="NAME")
    parser.add_argument("--seeds", type=int, default=1, help="runs per configuration (seeds 0..N-1)")
    args = parser.parse_args()
    print(f"{'data':14s} {'configuration':30s} {'test acc':>8s} {'wall s':>7s} {'epochs':>6s}  notes", flush=True)
    for data in map(Path, args.data):
        baseline = None
        for name in args.configs:
            scores, walls, epochs, notes = [], [], [], ""
            for seed in range(args.seeds):
                default_cache.clear()
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    run = transferlab.train(data, out=f"{tmp}/runs", cache_dir=f"{tmp}/cache", progress=False,
                                            seed=seed, **BASE, **CONFIGS[name])
                    walls.append(time.perf_counter() - start)
                scores.append(run.score)
                epochs.append(len(run.classifier.history_))
                found = run.metrics["fit"].get("lr_find")
                if found:
                    notes = f"lr {found['suggestions']['valley']:.2g}"
            wall = statistics.mean(walls)
            baseline = baseline or wall
            spread = f" ± {statistics.stdev(scores):.4f}" if len(scores) > 1 else ""
            print(f"{data.name:14s} {name:30s} {statistics.mean(scores):8.4f}{spread} {wall:7.1f} "
                  f"{statistics.mean(epochs):6.1f}  x{wall / baseline:.2f} time {notes}", flush=True)


if __name__ == "__main__":
    main()
