"""The product as users run it: `transferlab train DATA` with no option, whole (from the command's
start to its exit, the written report included), on an empty feature cache, on each set in
../shared/data. Prints the wall time against the budget, the time the run reports, the test
accuracy, what auto chose and every candidate's row.

`--src` runs another checkout's code (its src/ first on PYTHONPATH), so the code before a change
and after it are measured in one run of this script, one command after the other: run it alone.

    python benchmarks/default_command.py [--data DIR ...] [--src CHECKOUT ...] [--seeds 0 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HERE = Path(__file__).resolve().parents[1]


def run_once(data: Path, src: Path, seed: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TRANSFERLAB_CACHE": f"{tmp}/cache", "PYTHONPATH": str(src / "src"),
               "TQDM_DISABLE": "1"}
        seed_option = ["--seed", str(seed)] if seed else []  # seed 0 is the default: no option at all
        command = [sys.executable, "-m", "transferlab", "-q", "train", str(data), "--out", f"{tmp}/runs",
                   *seed_option, *extra]
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            return {"wall": wall, "error": done.stderr.strip().splitlines()[-1:]}
        run = next(Path(tmp, "runs").iterdir())
        metrics = json.loads((run / "metrics.json").read_text())
        config = (run / "config.yaml").read_text()
        budget = next((float(line.split(":")[1]) for line in config.splitlines()
                       if line.startswith("budget:") and line.split(":")[1].strip() not in ("", "null")), None)
        return {"wall": wall, "metrics": metrics, "budget": budget}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+",
                        default=[str(SHARED / n) for n in ("hymenoptera", "cifar10-small", "cars43")])
    parser.add_argument("--src", nargs="+", default=[str(HERE)], help="checkouts to measure (default this one)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="options after DATA (none: the "
                        "default command)")
    args = parser.parse_args()
    print(f"{'data':14s} {'code':10s} {'seed':>4s} {'test acc':>8s} {'wall s':>7s} {'run s':>7s} {'budget s':>8s}  "
          "auto chose")
    for data in map(Path, args.data):
        for seed in args.seeds:
            for src in map(Path, args.src):
                result = run_once(data, src, seed, args.extra)
                label = src.name[:10]
                if "error" in result:
                    print(f"{data.name:14s} {label:10s} {seed:4d} failed after {result['wall']:.0f} s: {result['error']}")
                    continue
                m = result["metrics"]
                auto = m["fit"].get("auto", {})
                budget = f"{result['budget'] * 60:.0f}" if result["budget"] else "-"
                print(f"{data.name:14s} {label:10s} {seed:4d} {m[m['score_split']]['accuracy']:8.4f} "
                      f"{result['wall']:7.1f} {m['seconds']:7.1f} {budget:>8s}  {auto.get('chosen', '')}", flush=True)
                for row in auto.get("candidates", []):
                    accuracy = row["val_accuracy"] if row["val_accuracy"] is not None else float("nan")
                    print(f"{'':30s} {row['candidate']:58s} val {accuracy:.4f} {row['seconds'] or 0:6.1f} s "
                          f"(est {row['estimated_seconds']:.0f})  {row['status']}", flush=True)
                if auto.get("refit"):  # written before auto became an ensemble
                    refit = auto["refit"]
                    print(f"{'':30s} refit: " + (f"skipped, {refit['skipped']}" if refit.get("skipped")
                                                 else f"{refit['seconds']} s"), flush=True)
                for member in auto.get("members", []):
                    print(f"{'':30s} member {member['name']} weight {member['weight']:.3f}: {member['refit']}",
                          flush=True)


if __name__ == "__main__":
    main()
