"""Raw backbone throughput against the `features` pipeline end to end, and a warm re-run.

Prints: (1) the backbone's forward throughput on random tensors (batch 32, channels_last,
inference mode); (2) the `features` extraction throughput on a cold start (empty feature cache,
nothing decoded yet: decode, resize, crop, normalise, forward, store) and its ratio to (1);
(3) a whole `train` run cold and warm, in this process; (4) a warm `transferlab train` as a fresh
command, which adds Python's imports of torch, timm and scikit-learn.

    python benchmarks/throughput.py [--data ../shared/data/hymenoptera] [--backbone NAME]
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
from transferlab.data.cache import DecodedImages
from transferlab.features.extract import extract_features
from transferlab.features.store import FeatureStore
from transferlab.models.backbones import create_backbone
from transferlab.models.heads import build_head
from transferlab.models.network import Network


def raw_forward(backbone: torch.nn.Module, size: int, batch: int = 32, batches: int = 6) -> float:
    backbone = backbone.eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        backbone(x)  # warm-up: first call allocates and picks kernels
        start = time.perf_counter()
        for _ in range(batches):
            backbone(x)
    return batch * batches / (time.perf_counter() - start)


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(here.parent / "shared" / "data" / "hymenoptera"))
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"data {args.data}; backbone {args.backbone}")

    backbone, pre, info = create_backbone(args.backbone, "auto")
    raw = raw_forward(backbone, pre.input_size)
    print(f"raw backbone forward            {raw:7.1f} images/s  (random tensors, batch 32, "
          f"{pre.input_size} px)")

    source = transferlab.load_source(args.data)
    images = source.images.images
    network = Network(backbone, build_head("linear", 1, 2), pre.mean, pre.std)
    start = time.perf_counter()
    extracted = extract_features(network, images, pre, FeatureStore(None), 32, DecodedImages(),
                                 progress=False)
    cold = len(images) / (time.perf_counter() - start)
    print(f"features pipeline, cold         {cold:7.1f} images/s  ({extracted.computed} images, "
          f"decode included)")
    print(f"ratio pipeline / raw            {cold / raw:7.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        options = dict(cache_dir=f"{tmp}/cache", out=f"{tmp}/runs", progress=False)
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            run = transferlab.train(args.data, **options)
            timings.append(time.perf_counter() - start)
        print(f"train run, cold (in process)    {timings[0]:7.1f} s   "
              f"({run.metrics['score_split']} accuracy {run.score:.4f})")
        print(f"train run, warm (in process)    {timings[1]:7.1f} s   "
              f"(features {run.metrics['features']['computed']} computed, "
              f"{run.metrics['features']['cached']} cached)")
        exe = Path(sys.executable).parent / "transferlab"
        start = time.perf_counter()
        subprocess.run([str(exe), "-q", "train", args.data, "--cache-dir", f"{tmp}/cache",
                        "--out", f"{tmp}/runs"], check=True, capture_output=True)
        command = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, timm, sklearn.linear_model"], check=True)
        imports = time.perf_counter() - start
        print(f"train command, warm (new process) {command:5.1f} s   (of which {imports:.1f} s is "
              "starting Python and importing torch, timm and scikit-learn)")


if __name__ == "__main__":
    main()
