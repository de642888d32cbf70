"""One process against N data-parallel processes (torchrun, gloo on the CPU or NCCL on GPUs) on the
same finetune recipe: held-out accuracy, wall time of the whole command (process start, imports
and rendezvous included), fit time, and whether the ranks ended with identical weights.

On a machine with fewer cores than processes this shows the cost of data parallelism, not its
gain: it is a correctness and overhead check there, a speed check on several GPUs.

    python benchmarks/distributed.py [--data ../shared/data/hymenoptera] [--devices 2] [--image-size 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(data: str, out: Path, name: str, devices: int, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "transferlab", "-q", "train", data, "--out", str(out), "--name", name,
               "--devices", str(devices), *extra]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / name / "metrics.json").read_text())
    return {"wall": wall, "acc": metrics[metrics["score_split"]]["accuracy"], "fit": metrics["fit"]}


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(here.parent / "shared" / "data" / "hymenoptera"))
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    extra = ["--strategy", "finetune", "--image-size", str(args.image_size), "--cache-views", "2",
             "--head-epochs", "3", "--epochs", "4"]
    print(f"finetune on {args.data}, {args.image_size} px, 3 + 4 epochs, seed 0")
    print("| processes | test acc | wall s | fit s | ranks identical |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for devices in (1, args.devices):
            r = run(args.data, Path(tmp), f"p{devices}", devices, extra)
            same = r["fit"].get("ranks_identical", "(one rank)")
            print(f"| {devices} | {r['acc']:.4f} | {r['wall']:.1f} | {r['fit']['fit_seconds']:.1f} | {same} |",
                  flush=True)


if __name__ == "__main__":
    main()
