"""The frozen passes against the raw network, in PyTorch and in onnxruntime: how close does each
pass over images come to the speed of the network itself, and how much does onnxruntime give?

All in one process unless said, on 2 CPU cores by default:
  raw     Lite0, Lite1, Lite2 (packaged weights) at their native sizes, batch 32: PyTorch's
          forward (channels_last, inference mode) and onnxruntime's (the graph transferlab
          exports, runtime/frozen.py): the two limits;
then for each data set (hymenoptera and cars43 by default), on the packaged Lite0, each pass
cold, once per runtime (--runtime torch, then onnx):
  (a)     the `features` pass end to end (decode, resize, crop, forward; graph export included),
          and again in onnxruntime with the graph kept (read back and checked, as a later run does);
  (b)     the prefix-cache build of the default `finetune`: --views augmented views of each train
          image and the val images through the frozen front (decoding first, not counted);
  (c)     the evaluation pass: the score split's images through the whole network;
each in images/s and as a ratio to both raw forwards of the network it runs. Then as commands
(a fresh process each, cold caches): `train` (features), and `predict` over --predict-images
images of the set (or fewer when it has fewer) with --runtime torch, with auto and no graph
kept, and with auto once the graph is kept, then the predict pass alone in this process.
--finetune adds the default finetune end to end in each runtime.

    python benchmarks/throughput.py [--data DIR ...] [--views 2] [--finetune]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import transferlab
from transferlab.config import RunConfig
from transferlab.data.cache import DecodedImages, default_cache, readable
from transferlab.data.split import split_source
from transferlab.features.extract import extract_features
from transferlab.features.store import FeatureStore
from transferlab.inference.probabilities import predict_pixels
from transferlab.models.factory import ModelSpec, build_model
from transferlab.runtime import frozen
from transferlab.training import prefix_cache
from transferlab.training.strategies import phases, resolve

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PACKAGED = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
EXE = Path(sys.executable).parent / "transferlab"


def rate(run, batch: int, batches: int = 5) -> float:
    """Images/s of `run` (one call = one batch), median of `batches` calls after two warm-ups."""
    with torch.inference_mode():
        run()
        run()
        seconds = []
        for _ in range(batches):
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
    return batch / float(np.median(seconds))


def raw_pair(module: torch.nn.Module, size: int, batch: int = 32) -> tuple[float, float]:
    """(PyTorch, onnxruntime) raw images/s of a module from pixels, on random pixels."""
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    last = pixels.contiguous(memory_format=torch.channels_last)
    module = module.eval().to(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_pass = frozen.whole_pass(module, size, frozen.EXPORT_PAYS_BACK, "onnx", Path(tmp))
        return rate(lambda: module(last), batch), rate(lambda: onnx_pass(pixels), batch)


def raw_forwards() -> None:
    print("raw forward, batch 32 (images/s): PyTorch, onnxruntime, ratio", flush=True)
    for name in PACKAGED:
        built = build_model(ModelSpec(name, num_classes=10))
        size = built.preprocess.input_size
        torch_rate, onnx_rate = raw_pair(built.network, size)
        print(f"  {name:<22s} {size} px  {torch_rate:6.1f}  {onnx_rate:6.1f}  {onnx_rate / torch_rate:4.2f}x",
              flush=True)


def passes(data: Path, views: int) -> None:
    source = transferlab.load_source(data)
    splits = split_source(source)
    cfg = resolve(RunConfig(strategy="finetune", data=str(data), cache_views=views))
    network, pre, _ = build_model(ModelSpec.from_options(cfg.to_dict(), len(source.images.classes)))
    network = network.eval()
    size = pre.input_size
    plan = prefix_cache.plan(network, phases(cfg, network), pre, len(splits.train), len(splits.val),
                             views, cfg.cache_memory_mb, Path(tempfile.gettempdir()))
    front = prefix_cache.Prefix(network, plan.chain[:plan.cut])

    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network

        def forward(self, x):
            return self.network.features(x)

    limits = {"features": raw_pair(Features(), size), "prefix": raw_pair(front, size, 64),
              "network": raw_pair(network, size)}
    print(f"{data.name}: {len(source.images)} images, {size} px, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; prefix = {plan.describe()}", flush=True)
    for what, (t, o) in limits.items():
        print(f"  raw {what:<9s} PyTorch {t:6.1f}, onnxruntime {o:6.1f} images/s ({o / t:.2f}x)", flush=True)

    def report(label: str, work, count: int, limit: str, runtime: str) -> float:
        frozen._SESSIONS.clear()
        start = time.perf_counter()
        work()
        got = count / (time.perf_counter() - start)
        t, o = limits[limit]
        print(f"  {label:<34s} {runtime:<5s} {got:6.1f} images/s = {got / t:4.2f} of PyTorch's raw, "
              f"{got / o:4.2f} of onnxruntime's raw", flush=True)
        return got

    images, test = source.images.images, splits.test.images
    for runtime in ("torch", "onnx"):
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp)
            for label in ("(a) features pass, cold", "(a) the same, graph kept"):
                if runtime == "torch" and "kept" in label:
                    continue
                report(label, lambda: extract_features(
                    network, images, pre, FeatureStore(None), 32, DecodedImages(), progress=False, runtime=runtime,
                    graph=("bench", cache)), len(images), "features", runtime)

            default_cache.clear()
            train, _ = readable(splits.train, pre, cfg.batch_size)
            val, _ = readable(splits.val, pre, cfg.batch_size)
            from transferlab.data.augment import AugmentOptions, build_augment

            augment = build_augment(AugmentOptions(preset=cfg.augment, scale_min=cfg.scale_min), size)
            built = prefix_cache.PrefixCache(plan, cache)

            def build():
                built.build(network, train, pre, augment, plan.views, 0, 64, "train", False, runtime, cache)
                built.build(network, val, pre, None, 1, 0, 64, "val", False, runtime, cache)

            report(f"(b) prefix-cache build, {plan.views} views", build, plan.views * len(train) + len(val),
                   "prefix", runtime)
            built.close()
            default_cache.clear()
            report("(c) evaluation pass, cold", lambda: predict_pixels(network, test, pre, 32, runtime=runtime,
                                                                       cache=cache), len(test), "network", runtime)


def commands(data: Path, predict_images: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        timings = {}
        for runtime in ("torch", "auto"):
            start = time.perf_counter()
            subprocess.run([str(EXE), "-q", "train", str(data), "--strategy", "features", "--runtime", runtime,
                            "--cache-dir", str(tmp / f"cache-{runtime}"), "--out", str(tmp / "runs"), "--name",
                            f"features-{runtime}"], check=True, capture_output=True)
            timings[runtime] = time.perf_counter() - start
        print(f"  features run as a command, cold: --runtime torch {timings['torch']:.1f} s, auto "
              f"{timings['auto']:.1f} s ({timings['torch'] / timings['auto']:.2f}x)", flush=True)
        files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:predict_images]
        folder = tmp / "predict"
        folder.mkdir()
        for k, f in enumerate(files):
            (folder / f"{k:05d}{f.suffix}").symlink_to(f.resolve())
        seconds = {}
        for label, runtime, cache in (("torch", "torch", "p-torch"), ("auto, no graph kept", "auto", "p-auto"),
                                      ("auto, graph kept", "auto", "p-auto")):
            start = time.perf_counter()
            subprocess.run([str(EXE), "-q", "predict", str(tmp / "runs" / "features-torch"), str(folder),
                            "--format", "csv", "--output", str(tmp / f"{label}.csv"), "--runtime", runtime,
                            "--cache-dir", str(tmp / cache)], check=True, capture_output=True)
            seconds[label] = time.perf_counter() - start
        base = seconds["torch"]
        print(f"  predict {len(files)} images as a command: " + ", ".join(
            f"{k} {v:.1f} s ({base / v:.2f}x)" for k, v in seconds.items()), flush=True)
        # The pass alone, in this process: the run loaded, its graph kept from the command above.
        from transferlab.data.types import ImageRef
        from transferlab.models import saved

        model = saved.load(tmp / "runs" / "features-torch")
        refs = [ImageRef.from_file(f) for f in sorted(folder.iterdir())]
        passes_ = {}
        for runtime in ("torch", "auto"):
            frozen._SESSIONS.clear()
            default_cache.clear()
            start = time.perf_counter()
            predict_pixels(model.network, refs, model.preprocess, 32, runtime=runtime, cache=tmp / "p-auto")
            passes_[runtime] = time.perf_counter() - start
        print(f"  the predict pass alone over {len(refs)} images (decoded cold): torch {passes_['torch']:.1f} s, "
              f"onnxruntime (graph kept) {passes_['auto']:.1f} s ({passes_['torch'] / passes_['auto']:.2f}x)",
              flush=True)
        same = (tmp / "torch.csv").read_text().splitlines()
        other = (tmp / "auto, graph kept.csv").read_text().splitlines()
        top = sum(a.split(",")[1] == b.split(",")[1] for a, b in zip(same[1:], other[1:]))
        print(f"  predicted class the same for {top} of {len(same) - 1} images", flush=True)


def finetune(data: Path) -> None:
    for runtime in ("torch", "onnx"):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run = transferlab.train(data, strategy="finetune", runtime=runtime, cache_dir=f"{tmp}/cache",
                                    out=f"{tmp}/runs", progress=False)
            wall = time.perf_counter() - start
        fit = run.metrics["fit"]
        print(f"  finetune --runtime {runtime}: {run.metrics['score_split']} accuracy {run.score:.4f}, wall "
              f"{wall:.1f} s, cache build {fit.get('cache_seconds', float('nan')):.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=[str(SHARED / "hymenoptera"), str(SHARED / "cars43")])
    parser.add_argument("--views", type=int, default=RunConfig().cache_views, help="views for (b)")
    parser.add_argument("--predict-images", type=int, default=500)
    parser.add_argument("--finetune", action="store_true")
    parser.add_argument("--skip-raw", action="store_true")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs", flush=True)
    if not args.skip_raw:
        raw_forwards()
    for data in map(Path, args.data):
        passes(data, args.views)
        commands(data, args.predict_images)
        if args.finetune:
            finetune(data)


if __name__ == "__main__":
    main()
