"""`transferlab compare`: configs x seeds summarised as mean and std, resumable, failures isolated."""

import csv
import json
import re

import pytest

import transferlab
from transferlab import api
from transferlab.cli import main
from transferlab.workflows.compare import read_grid
from transferlab.errors import TransferlabError


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
    assert result.rows[0]["best"] and not result.rows[1]["best"]
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
