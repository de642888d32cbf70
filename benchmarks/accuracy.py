"""Test accuracy and wall time of transferlab's configurations on each data set in ../shared/data.

Each configuration is one `transferlab.train` call in this process with an empty feature cache of
its own (so every figure includes the backbone pass over every image, as a first run does), run
one after another: run the script alone on the machine.

    python benchmarks/accuracy.py [--data DIR ...] [--configs NAME ...] [--list]
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
    "auto": {"strategy": "auto"},  # its default budget
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
            chose = run.metrics["fit"].get("auto", {}).get("chosen", "")
            print(f"{data.name:14s} {name:28s} {run.score:8.4f} {wall:7.1f}  {chose}", flush=True)
            for row in run.metrics["fit"].get("auto", {}).get("candidates", []):
                print(f"{'':14s}   {row['candidate']:60s} val {row['val_accuracy'] or float('nan'):.4f} "
                      f"{row['seconds'] or 0:6.1f} s  {row['status']}", flush=True)


if __name__ == "__main__":
    main()
