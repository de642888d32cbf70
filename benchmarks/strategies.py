"""The pretrained strategies with their full default recipes: accuracy, wall time, throughput.

For each of frozen, finetune and reinit: accuracy on the held-out split (hymenoptera's val/), wall
time, and training throughput (images trained per second of the whole fit: decoding, the prefix
cache, every epoch and its validation) against the raw backbone's throughput measured in the same
process: forward+backward of the whole network (what a plain loop pays per training image) and
forward only (what a frozen backbone costs per image at least).

    python benchmarks/strategies.py [--data ../shared/data/hymenoptera] [--seeds 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import transferlab
from transferlab.models.backbones import create_backbone, feature_dim


def raw_throughput(batch: int = 32, size: int = 224, steps: int = 4) -> tuple[float, float]:
    backbone, _, _ = create_backbone("tf_efficientnet_lite0", "auto")
    model = nn.Sequential(backbone, nn.Linear(feature_dim(backbone), 2)).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    train = batch * steps / (time.perf_counter() - start)
    model.eval()
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        for _ in range(steps):
            model(x)
    return train, batch * steps / (time.perf_counter() - start)


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(here.parent / "shared" / "data" / "hymenoptera"))
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; the table shows their mean")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    train_raw, forward_raw = raw_throughput()
    print(f"raw backbone, 224 px, batch 32, channels_last: forward+backward {train_raw:.1f} images/s, "
          f"forward {forward_raw:.1f} images/s")
    print(f"\n{'strategy':9s} {'test acc':>8s} {'wall s':>7s} {'epochs':>6s} {'train img/s':>11s} "
          f"{'/ raw f+b':>9s} {'/ raw fwd':>9s}  path")
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in ("frozen", "finetune", "reinit"):
            accs, walls, rates, epochs = [], [], [], []
            for seed in seeds:
                start = time.perf_counter()
                run = transferlab.train(args.data, strategy=strategy, seed=seed, out=tmp,
                                        cache_dir=f"{tmp}/cache", progress=False)
                walls.append(time.perf_counter() - start)
                accs.append(run.score)
                rates.append(run.metrics["fit"]["train_images_per_second"])
                epochs.append(len(run.classifier.history_))
            mean = lambda v: sum(v) / len(v)  # noqa: E731
            print(f"{strategy:9s} {mean(accs):8.4f} {mean(walls):7.1f} {mean(epochs):6.1f} {mean(rates):11.1f} "
                  f"{mean(rates) / train_raw:9.2f} {mean(rates) / forward_raw:9.2f}  {run.metrics['fit']['path']}",
                  flush=True)
            if len(seeds) > 1:
                print(f"{'':9s} accuracies over seeds {seeds}: {', '.join(f'{a:.4f}' for a in accs)}")


if __name__ == "__main__":
    main()
