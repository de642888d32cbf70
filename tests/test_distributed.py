"""Data-parallel training with torchrun (gloo on the CPU) and comparisons in worker processes."""

import csv
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

import transferlab
from transferlab.cli import main

RUN_FILES = ["config.yaml", "curves.png", "history.csv", "metrics.json", "model.json", "model.safetensors",
             "report.html", "unknown.json", "unknown.safetensors"]


def _transferlab(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run([sys.executable, "-m", "transferlab", "-q", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


# One stage unfrozen: the promise is DDP == one process, not the recipe's accuracy (3 stages, the
# default, doubles the time).
HYMENOPTERA = dict(strategy="finetune", image_size=128, cache_views=2, head_epochs=3, epochs=4, unfreeze=1,
                   budget=3)


@pytest.mark.slow
def test_two_gloo_ranks_train_finetune_like_one_process(hymenoptera, tmp_path):
    options = [w for k, v in HYMENOPTERA.items() for w in (f"--{k.replace('_', '-')}", v)]
    proc = _transferlab("train", hymenoptera, *options, "--out", tmp_path / "runs", "--name", "ddp", "--devices", 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test accuracy") == 1  # rank 0 alone reports
    # One run directory, written once: no second run, no leftover checkpoint or temporary file.
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]
    run = tmp_path / "runs" / "ddp"
    assert sorted(p.name for p in run.iterdir()) == RUN_FILES
    metrics = json.loads((run / "metrics.json").read_text())
    fit = metrics["fit"]
    assert fit["ranks"] == 2 and fit["ranks_identical"], fit
    assert len(set(fit["rank_weight_digests"])) == 1
    # The same recipe in one process (measured: 0.9216 both ways at these settings).
    single = transferlab.train(hymenoptera, out=tmp_path / "runs1", progress=False, **HYMENOPTERA)
    assert "ranks" not in single.metrics["fit"]
    ddp = metrics["test"]["accuracy"]
    assert ddp > 0.85 and abs(ddp - single.score) <= 0.05, (ddp, single.score)


KILLED_RANK = """
import os, signal, sys
from transferlab.training import prefix_cache
from transferlab.cli import main

epochs_started = [0]
original = prefix_cache.CachedActivations.batches

def batches(self, seed):
    if self.shuffle:
        epochs_started[0] += 1
    for k, batch in enumerate(original(self, seed)):
        if self.shuffle and epochs_started[0] == 4 and k == 1 and os.environ["RANK"] == "1":
            os.kill(os.getpid(), signal.SIGKILL)   # one rank dies mid-epoch; torchrun stops the other
        yield batch

prefix_cache.CachedActivations.batches = batches
sys.exit(main(sys.argv[1:]))
"""

FAST = ["--strategy", "finetune", "--backbone", "mobilenetv2_050", "--weights", "none", "--image-size", "32",
        "--batch-size", "8", "--head-epochs", "2", "--epochs", "3", "--unfreeze", "2", "--patience", "10"]


@pytest.mark.slow
def test_a_data_parallel_run_killed_mid_epoch_resumes_to_the_same_weights(colour_folder, tmp_path):
    data = colour_folder(tmp_path / "data", ("red", "green", "blue"), 12, 40)
    child = tmp_path / "child.py"
    child.write_text(KILLED_RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             str(child), "-q", "train", str(data), *FAST, "--out", str(tmp_path / "runs"),
                             "--name", "interrupted"], capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode != 0
    interrupted = tmp_path / "runs" / "interrupted"
    # Rank 0 alone checkpoints: one checkpoint, after the last complete epoch, nothing half-written.
    # A rank 0 that torchrun had to kill leaves its lock file; the kernel released its flock, so
    # the file blocks nobody (the resume below takes it).
    assert sorted(p.name for p in interrupted.iterdir() if p.name != ".lock") == [
        "checkpoint.pt", "config.yaml", "history.csv"]
    with open(interrupted / "history.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3
    resumed = _transferlab("train", "--resume", interrupted, "--devices", 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = _transferlab("train", data, *FAST, "--out", tmp_path / "runs", "--name", "whole", "--devices", 2)
    assert whole.returncode == 0, whole.stderr[-3000:]
    fits = [json.loads((tmp_path / "runs" / n / "metrics.json").read_text())["fit"] for n in ("interrupted", "whole")]
    assert all(f["ranks"] == 2 and f["ranks_identical"] for f in fits), fits
    a = load_file(interrupted / "model.safetensors")
    b = load_file(tmp_path / "runs" / "whole" / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a), "resumed weights differ from an uninterrupted run's"
    assert fits[0]["rank_weight_digests"] == fits[1]["rank_weight_digests"]


def test_compare_with_two_jobs_gives_the_rows_of_one(colour_folder, tmp_path, capsys):
    data = colour_folder(tmp_path / "data", ("red", "green", "blue"), 10, 32)
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: {strategy: features, weights: none, image_size: 32, backbone: mobilenetv2_050}\n"
                    "grid: {head: [linear, 'mlp:16']}\n")
    tables = []
    for jobs in (1, 2):
        assert main(["-q", "compare", str(data), "--grid", str(grid), "--seeds", "2", "--jobs", str(jobs),
                     "--out", str(tmp_path / f"jobs{jobs}"), "--name", "c"]) == 0
        with open(tmp_path / f"jobs{jobs}" / "c" / "comparison.csv") as fh:
            rows = list(csv.DictReader(fh))
        tables.append([{k: v for k, v in r.items() if k != "train_seconds"} for r in rows])
    capsys.readouterr()
    assert len(tables[0]) == 2 and all(r["status"] == "ok" and r["seeds"] == "2" for r in tables[0])
    assert tables[0] == tables[1]


def test_devices_must_be_a_positive_count(capsys):
    assert main(["train", "digits", "--devices", "0"]) == 2
    assert "--devices 0 must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_ranks_end_with_the_same_batchnorm_statistics(colour_folder, tmp_path):
    # reinit updates the fresh blocks' BatchNorm statistics, each rank from its own shard; without
    # rank 0's being broadcast after every epoch the ranks ended with different running means.
    data = colour_folder(tmp_path / "data", ("red", "green", "blue"), 12, 40)
    proc = _transferlab("train", data, "--strategy", "reinit", "--backbone", "mobilenetv2_050", "--weights", "none",
                        "--image-size", "32", "--epochs", "2", "--out", tmp_path / "runs", "--name", "r",
                        "--devices", 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fit = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())["fit"]
    assert fit["ranks"] == 2 and fit["ranks_identical"], fit
