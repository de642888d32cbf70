"""Training runs killed at random moments, again and again, and resumed each time.

Each of --runs runs of the same small fine-tune (synthetic colour images, MobileNetV2-0.5 from
random weights at 32 px, 3 + 6 epochs, half of them on the cached-prefix path and half on pixels)
is started, killed --kills times at a random moment (SIGKILL or SIGINT, chosen at random), and
resumed after every kill; the last process is left to finish. After every kill the run directory
must be in a state a later command can use: absent (killed before anything was written), a
config.yaml to start again from, a readable checkpoint to resume, or a finished run that loads.
Prints how many kills of each kind landed, what each left, how many resumes succeeded, how many
runs ended bit-identical to an uninterrupted run of the same options, and how many run
directories were ever left without a usable state (target: 0) or with leftover temporary files.

    python benchmarks/faults.py [--runs 8] [--kills 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

OPTIONS = ["--backbone", "mobilenetv2_050", "--weights", "none", "--image-size", "32", "--strategy", "finetune",
           "--head-epochs", "3", "--epochs", "6", "--unfreeze", "2", "--patience", "20", "--batch-size", "8"]


def colour_data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls, colour in (("red", (210, 35, 35)), ("green", (35, 190, 35)), ("blue", (35, 35, 210))):
        (root / cls).mkdir(parents=True)
        for i in range(16):
            pixels = np.clip(np.array(colour) + rng.integers(-60, 60, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "transferlab", "-q", "train", *args]


def state_of(run: Path) -> str:
    """What a kill left: 'absent', 'config only', 'checkpoint', 'finished', or 'UNUSABLE: why'."""
    from transferlab import ImageClassifier
    from transferlab.config import RunConfig
    from transferlab.training.callbacks import load_checkpoint

    if not run.exists():
        return "absent"
    try:
        RunConfig.from_yaml(run / "config.yaml")
        if (run / "metrics.json").is_file():
            ImageClassifier.load(run)
            return "finished"
        return "checkpoint" if load_checkpoint(run) is not None else "config only"
    except Exception as err:  # noqa: BLE001 - whatever it is, the run cannot be used
        return f"UNUSABLE: {type(err).__name__}: {err}"


def weights(run: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(run / "model.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--kills", type=int, default=3, help="kills per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--earliest", type=float, default=3.0, help="seconds after a start before a kill may land")
    parser.add_argument("--latest", type=float, default=12.0, help="seconds after a start by which it lands")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="faults-"))
    data = colour_data(work / "data")
    reference = {}
    for cached in (True, False):
        flag = "--prefix-cache" if cached else "--no-prefix-cache"
        started = time.perf_counter()
        subprocess.run(command(str(data), "--out", str(work / "reference"), "--name", flag.strip("-"), *OPTIONS, flag),
                       check=True)
        reference[cached] = weights(work / "reference" / flag.strip("-"))
        print(f"uninterrupted run ({flag}): {time.perf_counter() - started:.1f} s", flush=True)

    kills, left, resumes, unusable, leftovers, identical, finished = Counter(), Counter(), Counter(), [], [], 0, 0
    for i in range(args.runs):
        cached = i % 2 == 0
        flag = "--prefix-cache" if cached else "--no-prefix-cache"
        run = work / "runs" / f"r{i}"
        fresh = command(str(data), "--out", str(work / "runs"), "--name", run.name, *OPTIONS, flag)
        proc = subprocess.Popen(fresh, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(args.kills):
            time.sleep(rng.uniform(args.earliest, args.latest))
            if proc.poll() is not None:
                break  # it finished before this kill could land
            how = rng.choice([signal.SIGKILL, signal.SIGINT])
            proc.send_signal(how)
            proc.wait()
            kills[how.name] += 1
            state = state_of(run)
            left[state.split(":")[0]] += 1
            if state.startswith("UNUSABLE"):
                unusable.append(f"{run.name}: {state}")
                break
            if state == "finished":
                break
            again = fresh if state == "absent" else command("--resume", str(run))
            resumes["started"] += 1
            proc = subprocess.Popen(again, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate()
        if proc.returncode not in (0, None) and not (run / "metrics.json").is_file():
            unusable.append(f"{run.name}: the last process failed: {err.strip().splitlines()[-1:]}")
            continue
        finished += 1
        resumes["finished"] += 1
        got, want = weights(run), reference[cached]
        identical += got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)
        stray = [p.name for p in run.iterdir() if p.name.startswith(".")]
        if stray:
            leftovers.append(f"{run.name}: {stray}")
        print(f"{run.name} ({flag}): finished, bit-identical so far {identical}/{finished}", flush=True)

    print()
    print(f"kills that landed: {sum(kills.values())} ({', '.join(f'{k} {v}' for k, v in sorted(kills.items()))})")
    print("what they left: " + ", ".join(f"{k} {v}" for k, v in sorted(left.items())))
    print(f"resumes started: {resumes['started']}; runs finished: {finished}/{args.runs}")
    print(f"runs bit-identical to an uninterrupted run: {identical}/{finished}")
    print(f"run directories ever left without a usable state: {len(unusable)}")
    for line in unusable:
        print("  " + line)
    print(f"finished run directories with leftover temporary or lock files: {len(leftovers)}")
    for line in leftovers:
        print("  " + line)


if __name__ == "__main__":
    main()
