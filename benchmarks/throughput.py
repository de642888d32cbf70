"""The frozen pass against the raw backbone: how close does each pass over images come to the
speed of the network itself?

For each data set (hymenoptera, cars43 by default), all in one process, on the packaged
EfficientNet-Lite0 at its 224 px:
  raw   the backbone's forward on random tensors (channels_last, inference mode, torch's threads),
        at the batch each pass below uses, and the raw forward of the default finetune's frozen
        prefix (everything below the last stage);
  (a)   the `features` pass end to end, cold (decode, resize, crop, normalise, forward);
  (b)   the prefix-cache build of the default `finetune`: the train images decoded once, then
        --views augmented views of each train image and the val images through the prefix;
  (c)   the evaluation pass: the score split's images through the whole network, cold;
each as images/s and as a ratio to the matching raw forward. Then a `features` run as a fresh
command, cold and warm (features cached), and the default `finetune` end to end: wall time,
time decoding, building the prefix cache, training epochs, and accuracy. --views-sweep 1,2,4
repeats the finetune with each number of cached views.

    python benchmarks/throughput.py [--data DIR ...] [--views-sweep 1,2,4] [--skip-finetune]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import transferlab
from transferlab.config import RunConfig
from transferlab.data.cache import DecodedImages, default_cache, readable
from transferlab.data.split import split_source
from transferlab.features.extract import extract_features
from transferlab.features.store import FeatureStore
from transferlab.inference.probabilities import predict_pixels
from transferlab.models.factory import ModelSpec, build_model
from transferlab.training import prefix_cache
from transferlab.training.strategies import phases, resolve

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def raw(module, x: torch.Tensor, batches: int = 6) -> float:
    """Images/s of `module` on `x` (one warm-up call first)."""
    with torch.inference_mode():
        module(x)
        start = time.perf_counter()
        for _ in range(batches):
            module(x)
    return len(x) * batches / (time.perf_counter() - start)


def pixels(batch: int, size: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).float().contiguous(
        memory_format=torch.channels_last)


def line(label: str, rate: float, reference: float, note: str = "") -> None:
    print(f"  {label:<36s} {rate:6.1f} images/s, {rate / reference:5.2f} of raw ({note})", flush=True)


def passes(data: Path, views: int) -> None:
    """(a), (b), (c); each beside the matching raw forward measured just before and just after it
    (their mean is the reference), so a slower or faster moment of a shared machine counts for
    both sides."""
    source = transferlab.load_source(data)
    splits = split_source(source)
    cfg = resolve(RunConfig(strategy="finetune", data=str(data), cache_views=views))
    network, pre, _ = build_model(ModelSpec.from_options(cfg.to_dict(), len(source.images.classes)))
    network = network.eval().to(memory_format=torch.channels_last)
    size = pre.input_size
    plan = prefix_cache.plan(network, phases(cfg, network), pre, len(splits.train), len(splits.val),
                             views, cfg.cache_memory_mb, Path(tempfile.gettempdir()))
    prefix = plan.chain[:plan.cut]

    def run_prefix(x):
        h = network.normalize(x)
        for _, module in prefix:
            h = module(h)
        return h

    print(f"{data.name}: {len(source.images)} images, {size} px, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; prefix = {plan.describe()}")

    def beside(label: str, reference, batch: int, work, count: int, note: str = "") -> None:
        before = raw(reference, pixels(batch, size))
        start = time.perf_counter()
        work()
        rate = count / (time.perf_counter() - start)
        after = raw(reference, pixels(batch, size))
        line(label, rate, (before + after) / 2, f"raw {before:.1f} / {after:.1f} before / after; {note}")

    images = source.images.images
    beside("(a) features pass, cold", network, 32,
           lambda: extract_features(network, images, pre, FeatureStore(None), 32, DecodedImages(), progress=False),
           len(images), "batch 32")

    default_cache.clear()
    start = time.perf_counter()
    train, _ = readable(splits.train, pre, cfg.batch_size)
    val, _ = readable(splits.val, pre, cfg.batch_size)
    decode = time.perf_counter() - start
    from transferlab.data.augment import AugmentOptions, build_augment

    augment = build_augment(AugmentOptions(preset=cfg.augment, scale_min=cfg.scale_min), size)
    cache = prefix_cache.PrefixCache(plan, Path(tempfile.gettempdir()))
    batch = prefix_cache.BUILD_BATCH if hasattr(prefix_cache, "BUILD_BATCH") else max(cfg.batch_size, 64)

    def build():
        cache.build(network, train, pre, augment, plan.views, 0, batch, "train", False)
        cache.build(network, val, pre, None, 1, 0, batch, "val", False)

    passes_ = plan.views * len(train) + len(val)
    beside(f"(b) prefix-cache build, {plan.views} views", run_prefix, batch, build, passes_,
           f"prefix, batch {batch}; {passes_} passes; decoding first {decode:.1f} s")
    cache.close()

    default_cache.clear()
    test = splits.test.images
    beside("(c) evaluation pass, cold", network, cfg.batch_size,
           lambda: predict_pixels(network, test, pre, cfg.batch_size), len(test), f"batch {cfg.batch_size}")


def command_runs(data: Path) -> None:
    exe = Path(sys.executable).parent / "transferlab"
    with tempfile.TemporaryDirectory() as tmp:
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            subprocess.run([str(exe), "-q", "train", str(data), "--cache-dir", f"{tmp}/cache", "--out",
                            f"{tmp}/runs"], check=True, capture_output=True)
            timings.append(time.perf_counter() - start)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    torch_import = time.perf_counter() - start
    print(f"  features run as a command: cold {timings[0]:.1f} s, warm {timings[1]:.1f} s, warm/cold "
          f"{timings[1] / timings[0]:.3f} (starting Python + importing torch alone: {torch_import:.1f} s)",
          flush=True)


def finetune(data: Path, views: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = transferlab.train(data, strategy="finetune", cache_views=views, cache_dir=f"{tmp}/cache",
                                out=f"{tmp}/runs", progress=False)
        wall = time.perf_counter() - start
    fit = run.metrics["fit"]
    print(f"  finetune, {views} cached views: {run.metrics['score_split']} accuracy {run.score:.4f}, wall {wall:.1f} s: "
          f"decoding {fit.get('decode_seconds', float('nan')):.1f} s, cache build {fit.get('cache_seconds', float('nan')):.1f} s, "
          f"epochs {fit['train_seconds']:.1f} s ({len(run.classifier.history_)} epochs, best {fit['best_epoch']})",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=[str(SHARED / "hymenoptera"), str(SHARED / "cars43")])
    parser.add_argument("--views", type=int, default=RunConfig().cache_views, help="views for (b)")
    parser.add_argument("--views-sweep", default="", help="finetune once per number of views, e.g. 1,2,4")
    parser.add_argument("--skip-finetune", action="store_true")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs")
    for data in map(Path, args.data):
        passes(data, args.views)
        command_runs(data)
        if not args.skip_finetune:
            for views in [int(v) for v in args.views_sweep.split(",") if v] or [RunConfig().cache_views]:
                finetune(data, views)


if __name__ == "__main__":
    main()
