"""Bilinear heads against `finetune` on the same data, with their default recipes.

Prints accuracy on the held-out split (hymenoptera's val/), wall time, the pooled feature size and
the head's parameter count, for finetune, symmetric bilinear on the default tap, the same with
Tensor Sketch pooling, and with a 1x1 channel reduction.

    python benchmarks/bilinear.py [--data ../shared/data/hymenoptera] [--seeds 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import transferlab

VARIANTS = {
    "finetune": dict(strategy="finetune"),
    "bilinear": dict(strategy="bilinear"),
    "bilinear, sketch 8192": dict(strategy="bilinear", sketch_dim=8192),
    "bilinear, reduce 128": dict(strategy="bilinear", bilinear_reduce=128),
}


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(here.parent / "shared" / "data" / "hymenoptera"))
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; the table shows their mean")
    parser.add_argument("--only", help="comma-separated variant names to run")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = {k: v for k, v in VARIANTS.items() if not args.only or k in args.only.split(",")}
    print(f"{'variant':24s} {'test acc':>8s} {'wall s':>7s} {'features':>8s} {'head params':>11s}  tap / path")
    with tempfile.TemporaryDirectory() as tmp:
        for label, options in variants.items():
            accs, walls = [], []
            for seed in seeds:
                start = time.perf_counter()
                run = transferlab.train(args.data, seed=seed, out=tmp, cache_dir=f"{tmp}/cache", progress=False,
                                        **options)
                walls.append(time.perf_counter() - start)
                accs.append(run.score)
            net = run.classifier.network_
            head = sum(p.numel() for p in net.head.parameters())
            dim = getattr(net.head, "dim", None) or net.head[-1].in_features
            taps = getattr(net.backbone, "_chain", None)
            where = f"tap {net.backbone._chain[net.backbone.first_tap][0]}; " if taps else ""
            print(f"{label:24s} {sum(accs) / len(accs):8.4f} {sum(walls) / len(walls):7.1f} {dim:8d} {head:11,d}  "
                  f"{where}{run.metrics['fit']['path']}", flush=True)
            if len(seeds) > 1:
                print(f"{'':24s} accuracies over seeds {seeds}: {', '.join(f'{a:.4f}' for a in accs)}")


if __name__ == "__main__":
    main()
