"""Runs killed at random moments and resumed, and feature caches damaged at random, again and again.

Three parts (--part, default all):

finetune  Each of --runs runs of the same small fine-tune (synthetic colour images, MobileNetV2-0.5
          from random weights at 32 px, 3 + 6 epochs, half on the cached-prefix path and half on
          pixels) is killed --kills times at a random moment (SIGKILL or SIGINT) and resumed after
          every kill; the last process is left to finish.
auto      The same with the default command, `--strategy auto` on the packaged offline backbones,
          on a small real set (--auto-images ants and as many bees of hymenoptera; --budget 30, so
          no choice depends on the clock): --auto-runs runs, --kills kills each, one kill in four
          a SIGINT (Ctrl-C), the rest SIGKILLs.
cache     A features run of the packaged Lite0 on hymenoptera on a clean feature cache, then
          --corruptions runs, each on a copy of that cache damaged at random: truncated, pages
          overwritten with junk, vectors set to NaN, a vector cut short, or the file deleted while
          the run uses it.

After every kill the run directory must be in a state a later command can use: absent (killed
before anything was written), a config.yaml to start again from, a checkpoint or finished auto
candidates to resume from, or a finished run that loads. Prints how many kills of each kind
landed, what each left, how many runs ended bit-identical to an uninterrupted run of the same
options, and how many run directories were ever left unusable (target: 0) or with leftover
temporary files. For the cache: how many damaged-cache runs finished with the clean cache's model
(bit-identical weights), and how many said in one line what they recomputed.

    python benchmarks/faults.py [--part all|finetune|auto|cache] [--runs 8] [--kills 3]
                                [--auto-runs 10] [--corruptions 25] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FINETUNE = ["--backbone", "mobilenetv2_050", "--weights", "none", "--image-size", "32", "--strategy", "finetune",
            "--head-epochs", "3", "--epochs", "6", "--unfreeze", "2", "--patience", "20", "--batch-size", "8"]
AUTO = ["--strategy", "auto", "--budget", "30"]


def colour_data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls, colour in (("red", (210, 35, 35)), ("green", (35, 190, 35)), ("blue", (35, 35, 210))):
        (root / cls).mkdir(parents=True)
        for i in range(16):
            pixels = np.clip(np.array(colour) + rng.integers(-60, 60, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def small_hymenoptera(root: Path, per_class: int) -> Path:
    for cls in ("ants", "bees"):
        (root / cls).mkdir(parents=True)
        for f in sorted((SHARED / "hymenoptera" / "train" / cls).glob("*.jpg"))[:per_class]:
            shutil.copy(f, root / cls / f.name)
    return root


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "transferlab", "-q", "train", *args]


def state_of(run: Path) -> str:
    """What a kill left: 'absent', 'config only', 'checkpoint', 'candidates', 'finished', or
    'UNUSABLE: why'."""
    import json

    from transferlab import ImageClassifier
    from transferlab.config import RunConfig
    from transferlab.selection.saved_candidates import folder_name
    from transferlab.training.callbacks import load_checkpoint

    if not run.exists():
        return "absent"
    try:
        RunConfig.from_yaml(run / "config.yaml")
        if (run / "metrics.json").is_file():
            ImageClassifier.load(run)
            return "finished"
        if load_checkpoint(run) is not None:
            return "checkpoint"
        index = run / "auto" / "candidates.json"
        for training in (run / "auto").glob("*-training"):
            load_checkpoint(training)
        if index.is_file():
            for name in json.loads(index.read_text())["candidates"]:
                ImageClassifier.load(run / "auto" / folder_name(name))
            return "candidates"
        return "checkpoint" if any((run / "auto").glob("*-training/checkpoint.pt")) else "config only"
    except Exception as err:  # noqa: BLE001 - whatever it is, the run cannot be used
        return f"UNUSABLE: {type(err).__name__}: {err}"


def weights(run: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(run / "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def kill_and_resume(fresh: list[str], run: Path, kinds: list, rng: random.Random, earliest: float, latest: float,
                    tally: dict) -> bool:
    """Start `fresh`, kill it at random moments (one per entry of `kinds`, while it still runs),
    resume after each; whether it finished."""
    proc = subprocess.Popen(fresh, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = ""
    for how in kinds:
        time.sleep(rng.uniform(earliest, latest))
        if proc.poll() is not None:
            break  # it finished before this kill could land
        proc.send_signal(how)
        _, err = proc.communicate()
        tally["kills"][how.name] += 1
        if how == signal.SIGINT:
            last = (err.strip().splitlines() or [""])[-1]
            tally["sigint lines"][last.split("`")[0].strip() or "(none)"] += 1
        state = state_of(run)
        tally["left"][state.split(":")[0]] += 1
        if state.startswith("UNUSABLE"):
            tally["unusable"].append(f"{run.name}: {state}")
            return False
        if state == "finished":
            break  # the signal landed as it finished: its output is read already
        again = fresh if state == "absent" else command("--resume", str(run))
        tally["resumes"] += 1
        proc = subprocess.Popen(again, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.stderr is not None and not proc.stderr.closed:
        _, err = proc.communicate()
    if proc.returncode not in (0, None) and not (run / "metrics.json").is_file():
        tally["unusable"].append(f"{run.name}: the last process failed: {err.strip().splitlines()[-1:]}")
        return False
    stray = [p.name for p in run.iterdir() if p.name.startswith(".") or p.name in ("auto", "checkpoint.pt")]
    if stray:
        tally["leftovers"].append(f"{run.name}: {stray}")
    return True


def new_tally() -> dict:
    return {"kills": Counter(), "left": Counter(), "sigint lines": Counter(), "resumes": 0, "unusable": [],
            "leftovers": [], "finished": 0, "identical": 0}


def report(title: str, tally: dict, runs: int) -> None:
    print(f"\n== {title}")
    print(f"kills that landed: {sum(tally['kills'].values())} ("
          + ", ".join(f"{k} {v}" for k, v in sorted(tally["kills"].items())) + ")")
    print("what they left: " + ", ".join(f"{k} {v}" for k, v in sorted(tally["left"].items())))
    if tally["sigint lines"]:
        print("what Ctrl-C said: " + "; ".join(f"{k!r} x{v}" for k, v in tally["sigint lines"].items()))
    print(f"resumes started: {tally['resumes']}; runs finished: {tally['finished']}/{runs}")
    print(f"runs bit-identical to an uninterrupted run: {tally['identical']}/{tally['finished']}")
    print(f"run directories ever left without a usable state: {len(tally['unusable'])}")
    for line in tally["unusable"]:
        print("  " + line)
    print(f"finished run directories with leftover temporary, lock, checkpoint or candidate files: "
          f"{len(tally['leftovers'])}")
    for line in tally["leftovers"]:
        print("  " + line)


def finetune_part(work: Path, args, rng: random.Random) -> None:
    data = colour_data(work / "colours")
    reference = {}
    for cached in (True, False):
        flag = "--prefix-cache" if cached else "--no-prefix-cache"
        started = time.perf_counter()
        subprocess.run(command(str(data), "--out", str(work / "reference"), "--name", flag.strip("-"), *FINETUNE,
                               flag), check=True)
        reference[cached] = weights(work / "reference" / flag.strip("-"))
        print(f"uninterrupted finetune ({flag}): {time.perf_counter() - started:.1f} s", flush=True)
    tally = new_tally()
    for i in range(args.runs):
        cached = i % 2 == 0
        flag = "--prefix-cache" if cached else "--no-prefix-cache"
        run = work / "runs" / f"finetune{i}"
        fresh = command(str(data), "--out", str(run.parent), "--name", run.name, *FINETUNE, flag)
        kinds = [rng.choice([signal.SIGKILL, signal.SIGINT]) for _ in range(args.kills)]
        if kill_and_resume(fresh, run, kinds, rng, args.earliest, args.latest, tally):
            tally["finished"] += 1
            tally["identical"] += same(weights(run), reference[cached])
            print(f"{run.name} ({flag}): finished, bit-identical so far {tally['identical']}/{tally['finished']}",
                  flush=True)
    report("finetune: killed and resumed", tally, args.runs)


def auto_part(work: Path, args, rng: random.Random) -> None:
    data = small_hymenoptera(work / "small", args.auto_images)
    cache = ["--cache-dir", str(work / "auto-cache")]
    started = time.perf_counter()
    subprocess.run(command(str(data), "--out", str(work / "reference"), "--name", "auto", *AUTO, *cache), check=True)
    length = time.perf_counter() - started
    reference = weights(work / "reference" / "auto")
    print(f"uninterrupted auto: {length:.1f} s (features cached from here on)", flush=True)
    planned = args.auto_runs * args.kills
    kinds = [signal.SIGINT] * -(-planned // 4) + [signal.SIGKILL] * (planned - -(-planned // 4))
    rng.shuffle(kinds)
    tally = new_tally()
    for i in range(args.auto_runs):
        run = work / "runs" / f"auto{i}"
        fresh = command(str(data), "--out", str(run.parent), "--name", run.name, *AUTO, *cache)
        mine = kinds[i * args.kills:(i + 1) * args.kills]
        if kill_and_resume(fresh, run, mine, rng, min(3.0, length / 4), length * 0.8, tally):
            tally["finished"] += 1
            tally["identical"] += same(weights(run), reference)
            print(f"{run.name}: finished, bit-identical so far {tally['identical']}/{tally['finished']}", flush=True)
    report("auto: killed and resumed", tally, args.auto_runs)


# -- the feature cache -----------------------------------------------------------------------

def truncate(path: Path, rng: random.Random) -> str:
    size = path.stat().st_size
    keep = rng.randint(size // 10, size - 4096)
    os.truncate(path, keep)
    return f"truncated to {keep} of {size} bytes"


def junk_pages(path: Path, rng: random.Random) -> str:
    data = bytearray(path.read_bytes())
    pages = rng.sample(range(1, len(data) // 4096), rng.randint(1, 8))
    for page in pages:
        data[page * 4096:(page + 1) * 4096] = rng.randbytes(4096)
    path.write_bytes(bytes(data))
    return f"{len(pages)} page(s) of junk"


def nan_rows(path: Path, rng: random.Random) -> str:
    n = rng.randint(1, 200)
    with sqlite3.connect(path) as db:
        keys = [k for (k,) in db.execute("SELECT key FROM features ORDER BY random() LIMIT ?", (n,))]
        length = len(db.execute("SELECT vec FROM features LIMIT 1").fetchone()[0]) // 4
        db.executemany("UPDATE features SET vec = ? WHERE key = ?",
                       [(np.full(length, np.nan, np.float32).tobytes(), k) for k in keys])
    db.close()
    return f"{len(keys)} vector(s) set to NaN"


def short_vector(path: Path, rng: random.Random) -> str:
    cut = rng.randint(1, 64)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE features SET vec = substr(vec, 1, ?) WHERE key = "
                   "(SELECT key FROM features ORDER BY random() LIMIT 1)", (cut,))
    db.close()
    return f"a vector cut to {cut} bytes"


DAMAGE = {"truncation": truncate, "junk pages": junk_pages, "NaN rows": nan_rows, "short vector": short_vector,
          "deleted mid-run": None}


def cache_part(work: Path, args, rng: random.Random) -> None:
    data = str(SHARED / "hymenoptera")
    clean = work / "clean-cache"
    started = time.perf_counter()
    subprocess.run(command(data, "--strategy", "features", "--out", str(work / "reference"), "--name", "features",
                           "--cache-dir", str(clean)), check=True)
    length = time.perf_counter() - started
    reference = weights(work / "reference" / "features")
    files = list((clean / "features").glob("*.sqlite"))
    print(f"features run on a cold cache: {length:.1f} s; cache file {files[0].stat().st_size} bytes", flush=True)
    kinds = [list(DAMAGE)[i % len(DAMAGE)] for i in range(args.corruptions)]
    rng.shuffle(kinds)
    outcome, said, identical, failed = Counter(), Counter(), 0, []
    for i, kind in enumerate(kinds):
        cache = work / f"cache{i}"
        shutil.copytree(clean, cache)
        target = cache / "features" / files[0].name
        run = command(data, "--strategy", "features", "--out", str(work / "runs"), "--name", f"cache{i}",
                      "--cache-dir", str(cache))
        if DAMAGE[kind] is not None:
            what = DAMAGE[kind](target, rng)
            proc = subprocess.run(run, capture_output=True, text=True)
        else:
            target.unlink()  # a cold cache, so the run writes into it while it runs, then loses it
            proc = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            delay = rng.uniform(length * 0.3, length * 0.8)
            time.sleep(delay)
            what = f"deleted {delay:.1f} s into the run"
            for suffix in ("", "-journal"):
                Path(f"{target}{suffix}").unlink(missing_ok=True)
            proc.stdout, proc.stderr = proc.communicate()
        lines = [line for line in proc.stderr.splitlines() if str(target) in line]
        ok = proc.returncode == 0
        equal = ok and same(weights(work / "runs" / f"cache{i}"), reference)
        identical += equal
        outcome[kind] += 1
        said[f"{kind}: {len(lines)} line(s)"] += 1
        if not equal:
            failed.append(f"cache{i} ({kind}: {what}): rc {proc.returncode}: {proc.stderr.strip()[-300:]}")
        print(f"cache{i}: {kind} ({what}): rc {proc.returncode}, same model {equal}, "
              f"{len(lines)} line(s): {lines[0][:160] if lines else ''}", flush=True)
        shutil.rmtree(cache)
    print("\n== feature cache: damaged at random")
    print(f"corruptions: {sum(outcome.values())} (" + ", ".join(f"{k} {v}" for k, v in outcome.items()) + ")")
    print(f"runs finished with the clean cache's model (bit-identical): {identical}/{len(kinds)}")
    print("lines naming the cache: " + ", ".join(f"{k} x{v}" for k, v in sorted(said.items())))
    for line in failed:
        print("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "finetune", "auto", "cache"), default="all")
    parser.add_argument("--runs", type=int, default=8, help="finetune runs")
    parser.add_argument("--kills", type=int, default=3, help="kills per run")
    parser.add_argument("--auto-runs", type=int, default=10)
    parser.add_argument("--auto-images", type=int, default=10, help="ants and as many bees for the auto part")
    parser.add_argument("--corruptions", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--earliest", type=float, default=3.0, help="finetune: seconds after a start before a kill")
    parser.add_argument("--latest", type=float, default=12.0, help="finetune: seconds after a start by which it lands")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="faults-"))
    for part, run in (("finetune", finetune_part), ("auto", auto_part), ("cache", cache_part)):
        if args.part in ("all", part):
            run(work, args, rng)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
