"""`transferlab compare`: configs x seeds summarised as mean and std with a 95% interval, the best
tested against each other config on the same images, resumable, failures isolated."""

import csv
import json
import re

import pytest

import transferlab
from transferlab import api
from transferlab.cli import main
from transferlab.errors import TransferlabError
from transferlab.inference.intervals import wilson_interval
from transferlab.workflows.compare import config_id, read_grid


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.slow
def test_two_configs_two_seeds_on_hymenoptera_then_a_rerun_trains_nothing(hymenoptera, tmp_path, monkeypatch):
    grid = write(tmp_path / "heads.yaml", "base: {strategy: features, epochs: 30}\n"
                                          "grid: {head: [linear, 'mlp:64']}\n")
    result = transferlab.compare(hymenoptera, grid, seeds=2, out=tmp_path, progress=False)
    assert [r["head"] for r in result.rows] and {r["head"] for r in result.rows} == {"linear", "mlp:64"}
    for row in result.rows:
        assert row["status"] == "ok" and row["seeds"] == 2 and len(row["runs"]) == 2
        accs = [json.loads((result.path / run / "metrics.json").read_text())["test"]["accuracy"]
                for run in row["runs"]]
        assert row["test_accuracy_mean"] == pytest.approx(sum(accs) / 2)
        assert row["test_accuracy_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
        assert row["test_accuracy_mean"] > 0.85
        assert row["test_accuracy_ci_low"] < row["test_accuracy_mean"] < row["test_accuracy_ci_high"]
    assert result.rows[0]["best"] and not result.rows[1]["best"]
    # every seed scores val/ held out as test: the same images, so the runs pair up
    assert result.rows[0]["vs_best"] == "best"
    assert re.fullmatch(r"p=\S+ \((worse|not different)\)", result.rows[1]["vs_best"])
    assert result.rows[0]["test_accuracy_mean"] >= result.rows[1]["test_accuracy_mean"]
    table = list(csv.DictReader((result.path / "comparison.csv").open()))
    assert [t["head"] for t in table] == [r["head"] for r in result.rows]
    assert "±" in (result.path / "comparison.md").read_text()
    assert (result.path / "comparison.png").stat().st_size > 1000
    assert (result.path / "report.html").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(api, "train", no_training)
    again = transferlab.compare(hymenoptera, grid, seeds=2, out=tmp_path, progress=False)
    assert [(r["head"], r["test_accuracy_mean"]) for r in again.rows] == \
           [(r["head"], r["test_accuracy_mean"]) for r in result.rows]


@pytest.mark.slow
def test_a_failing_config_is_reported_and_the_others_complete(colour_folder, tmp_path, capsys):
    data = colour_folder(tmp_path / "data", ("red", "green", "blue"), 10, 32)
    grid = write(tmp_path / "grid.yaml",
                 "base: {strategy: features, weights: none, image_size: 32, backbone: mobilenetv2_050}\n"
                 "configs: [{}, {backbone: resnet5x}]\n")
    code = main(["-q", "compare", str(data), "--grid", str(grid), "--seeds", "2", "--out", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert code == 0
    rows = list(csv.DictReader(next((tmp_path / "c").glob("*/comparison.csv")).open()))
    assert [r["backbone"] for r in rows] == ["mobilenetv2_050", "resnet5x"]
    assert rows[0]["status"] == "ok" and rows[0]["seeds"] == "2"
    assert rows[1]["status"] == "failed" and "unknown backbone 'resnet5x'" in rows[1]["error"]
    assert "failed" in out and "mobilenetv2_050" in out


@pytest.mark.parametrize("text, message", [
    ("grid: {lr: [0.1]}\nbase: {strategy: nope}\n", "--strategy 'nope' is not known"),
    ("grid: {lrr: [0.1]}\n", "unknown key 'lrr' (did you mean 'lr'?)"),
    ("grid: {lr: 0.1}\n", "'grid' must map each key to a non-empty list"),
    ("base: {lr: 0.1}\n", "must be a mapping with 'base'"),
    ("grid: {seed: [1, 2]}\n", "'seed' is set by compare itself"),
    # an empty list of configs is no config, not the default once per seed
    ("configs: []\n", "'configs' is empty: list at least one option mapping"),
    ("configs:\n", "'configs' is empty: list at least one option mapping"),
    ("grid: {lr: [0.1]}\nconfigs: []\n", "'configs' is empty"),
    ("grid: {}\n", "'grid' is empty: map at least one key"),
])
def test_bad_grids_are_refused_before_anything_runs(tmp_path, text, message):
    with pytest.raises(TransferlabError, match=re.escape(message)):
        read_grid(write(tmp_path / "g.yaml", text))


def test_product_and_list_combine_and_only_varied_keys_are_columns(tmp_path):
    grid = read_grid(write(tmp_path / "g.yaml", "base: {epochs: 5}\n"
                                                "configs: [{strategy: frozen}, {strategy: finetune}]\n"
                                                "grid: {lr: [0.001, 0.0001], dropout: [0.2]}\n"))
    assert len(grid.configs) == 4 and grid.varied == ["strategy", "lr"]


# ---------------------------------------------------------------------------- intervals and the paired test

def finished_run(folder, accuracy_of: str, loss: float, images: str | None):
    """A run folder as a finished run leaves it, with its per-image record (none: an old run)."""
    folder.mkdir(parents=True)
    n = len(accuracy_of)
    metrics = {"score_split": "test", "test": {"n": n, "accuracy": accuracy_of.count("1") / n, "log_loss": loss},
               "fit": {}, "seconds": 1.0}
    if images is not None:
        metrics["predictions"] = {"split": "test", "images": images, "correct": accuracy_of}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_compare_gives_intervals_and_tests_the_best_against_each_config_on_the_same_images(
        colour_folder, tmp_path, capsys, monkeypatch):
    data = colour_folder(tmp_path / "data", ("red", "blue"), 4, 16)
    grid = write(tmp_path / "heads.yaml", "base: {strategy: features, weights: none, image_size: 32, "
                                          "backbone: mobilenetv2_050, epochs: 5}\n"
                                          "configs: [{head: linear}, {head: 'mlp:8'}, {head: 'mlp:16'}, "
                                          "{head: 'mlp:32'}]\n")
    spec = read_grid(grid)
    best = "1" * 36 + "0" * 4
    runs = {"linear": (best, 0.30),
            "mlp:8": ("0" * 10 + "1" * 26 + "0" * 4, 0.50),  # wrong on 10 images the best gets right
            "mlp:16": ("0" + "1" * 36 + "0" * 3, 0.35),  # 1 against 1 per seed: no difference
            "mlp:32": ("1" * 34 + "0" * 6, 0.40)}  # a run from before the per-image record
    runs_dir = tmp_path / "c" / "grid" / "runs"
    for values in spec.configs:
        correct, loss = runs[values["head"]]
        for seed in (0, 1):  # each seed its own random split: other images
            images = None if values["head"] == "mlp:32" else f"split of seed {seed}"
            finished_run(runs_dir / f"{config_id(values, spec.base)}-seed{seed}", correct, loss, images)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("transferlab.workflows.compare.train", no_training)
    assert main(["-q", "compare", str(data), "--grid", str(grid), "--seeds", "2", "--out", str(tmp_path / "c"),
                 "--name", "grid"]) == 0
    out = capsys.readouterr().out
    table = {r["head"]: r for r in csv.DictReader((runs_dir.parent / "comparison.csv").open())}
    assert list(table) == ["linear", "mlp:16", "mlp:32", "mlp:8"]
    # the interval of 36 of 40 right, pooled over the seeds at one run's 40 images
    low, high = wilson_interval(36, 40)
    assert (float(table["linear"]["test_accuracy_ci_low"]), float(table["linear"]["test_accuracy_ci_high"])) == \
        pytest.approx((low, high), abs=1e-4)
    assert float(table["mlp:32"]["test_accuracy_ci_low"]) == pytest.approx(wilson_interval(34, 40)[0], abs=1e-4)
    # mlp:8: 20 images over both seeds only the best got right, none the other way
    assert table["mlp:8"]["vs_best"] == f"p={2 / 2 ** 20:.2g} (worse)" == "p=1.9e-06 (worse)"
    assert table["mlp:16"]["vs_best"] == "p=1 (not different)"
    assert table["mlp:32"]["vs_best"] == "no per-image predictions (runs made before transferlab kept them)"
    assert table["linear"]["vs_best"] == "best"
    assert "| p=1.9e-06 (worse) |" in out and f"| {low:.3f}–{high:.3f} |" in out
    assert ("not significantly different from the best (head=linear; exact McNemar on the same test images, "
            "p >= 0.05): head=mlp:16; not tested: head=mlp:32") in out
    assert "p=1.9e-06 (worse)" in (runs_dir.parent / "report.html").read_text()
