"""Run directories hold everything a later command needs; commands fail with one clear line."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

import transferlab
from transferlab import ImageClassifier, RunConfig, TransferlabError
from transferlab.cli import main

# A tiny two-class set whose classes differ in colour: fast to train on random weights.
FAST = ["--strategy", "features", "--weights", "none", "--image-size", "32", "--backbone", "mobilenetv2_050"]


@pytest.fixture
def colours(tmp_path, colour_folder):
    return colour_folder(tmp_path / "colours")


@pytest.mark.slow
def test_a_run_directory_holds_config_metrics_and_a_rebuildable_model(colours, tmp_path, capsys):
    assert main(["train", str(colours), "--out", str(tmp_path / "runs"), "--name", "r1", *FAST]) == 0
    run = tmp_path / "runs" / "r1"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.json", "model.json",
                                                    "model.safetensors", "report.html", "unknown.json",
                                                    "unknown.safetensors"]
    config = RunConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert (config.backbone, config.weights, config.image_size) == ("mobilenetv2_050", "none", 32)
    spec = json.loads((run / "model.json").read_text())
    assert spec["classes"] == ["blue", "red"] and spec["preprocess"]["input_size"] == 32
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"score_split", "train", "val", "test", "splits", "fit", "seconds"}
    assert {"accuracy", "accuracy_ci", "log_loss", "per_class", "confusion_matrix"} <= set(metrics["test"])
    assert "95% CI" in capsys.readouterr().out  # train's summary gives the accuracy's interval
    # no temporary folder is left beside the run
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["r1"]


@pytest.mark.slow
def test_an_existing_run_is_never_overwritten(colours, tmp_path):
    out = str(tmp_path / "runs")
    assert main(["train", str(colours), "--out", out, "--name", "same", *FAST]) == 0
    first = (tmp_path / "runs" / "same" / "model.safetensors").read_bytes()
    assert main(["train", str(colours), "--out", out, "--name", "same", "--seed", "5", *FAST]) == 0
    assert (tmp_path / "runs" / "same" / "model.safetensors").read_bytes() == first
    assert (tmp_path / "runs" / "same-2" / "model.safetensors").is_file()


def test_a_run_that_fails_while_saving_leaves_nothing_half_written(colours, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("transferlab.workflows.train.write_json", broken)
    with pytest.raises(OSError):
        transferlab.train(colours, out=tmp_path / "runs", name="x", strategy="features", weights="none", image_size=32,
                          backbone="mobilenetv2_050", progress=False)
    assert list((tmp_path / "runs").iterdir()) == []


def test_evaluate_scores_a_saved_run_on_other_data(colours, colour_folder, tmp_path, capsys):
    assert main(["train", str(colours), "--out", str(tmp_path / "runs"), "--name", "r", *FAST]) == 0
    other = colour_folder(tmp_path / "other", per_class=5)
    capsys.readouterr()
    out_json = tmp_path / "eval.json"
    assert main(["evaluate", str(tmp_path / "runs" / "r"), str(other), "--json", str(out_json)]) == 0
    metrics = json.loads(out_json.read_text())
    assert metrics["n"] == 10 and metrics["split"] == "all"
    clf = ImageClassifier.load(tmp_path / "runs" / "r")
    assert metrics["accuracy"] == clf.score(str(other))
    low, high = metrics["accuracy_ci"]
    assert low <= metrics["accuracy"] <= high and f"(95% CI {low:.3f}-{high:.3f})" in capsys.readouterr().out
    # the run keeps which test image it got right, for compare's paired test
    run = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())
    record, test = run["predictions"], run["test"]
    assert record["split"] == "test" and len(record["correct"]) == test["n"]
    assert record["correct"].count("1") == round(test["accuracy"] * test["n"])


@pytest.mark.slow
def test_evaluate_refuses_data_whose_class_names_differ(colours, colour_folder, tmp_path, capsys):
    assert main(["train", str(colours), "--out", str(tmp_path / "runs"), "--name", "r", *FAST]) == 0
    other = colour_folder(tmp_path / "other", classes=("red", "green"), per_class=3)
    assert main(["evaluate", str(tmp_path / "runs" / "r"), str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert "unknown 'green'" in err and "missing" not in err  # scoring on some of the classes is fine


def test_evaluate_on_a_folder_that_is_not_a_run_says_so(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), str(tmp_path)]) == 2
    assert "is not a transferlab run" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["train", "no/such/folder"], "data 'no/such/folder' does not exist"),
    (["train", "{colours}", "--backbone", "resnet5O"], "did you mean resnet50"),
    (["train", "{colours}", "--head", "mlp:x"], "--head 'mlp:x' is not understood"),
    (["train", "{colours}", "--val-fraction", "1.5"], "--val-fraction 1.5 is outside"),
    (["train", "{colours}", "--epochs", "0"], "--epochs 0 must be at least 1"),
    (["train", "{colours}", "--weights", "missing.safetensors"], "--weights 'missing.safetensors' is not a file"),
    (["train", "--config", "{tmp}/nope.yaml"], "config file"),
])
def test_bad_input_gets_one_line_that_names_it(argv, expected, colours, tmp_path, capsys):
    argv = [a.format(colours=colours, tmp=tmp_path) for a in argv]
    assert main([*argv, "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_a_config_file_sets_options_and_flags_override_it(colours, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"data": str(colours), "backbone": "mobilenetv2_050", "weights": "none",
                                   "image_size": 32, "seed": 3, "name": "from-config",
                                   "out": str(tmp_path / "runs")}))
    assert main(["train", "--config", str(cfg), "--seed", "4"]) == 0
    saved = yaml.safe_load((tmp_path / "runs" / "from-config" / "config.yaml").read_text())
    assert saved["seed"] == 4 and saved["image_size"] == 32
    cfg.write_text("backbon: resnet50\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "unknown key 'backbon' (did you mean 'backbone'?)" in capsys.readouterr().err


def test_a_mistyped_option_suggests_the_right_one(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "digits", "--val-fractoin", "0.2"])
    assert exit_.value.code == 2
    assert "did you mean --val-fraction?" in capsys.readouterr().err


def test_backbones_lists_names_and_marks_offline_weights(capsys):
    assert main(["backbones", "*efficientnet_lite0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "tf_efficientnet_lite0  (offline weights)" in lines and "efficientnet_lite0" in lines
    assert main(["backbones", "zzz*"]) == 2
    assert main(["backbones", "--offline"]) == 0  # what works on a machine without a network
    assert capsys.readouterr().out.splitlines() == [
        "basenet  (trains from scratch)", "basenet-plus  (trains from scratch)",
        "tf_efficientnet_lite0  (offline weights)", "tf_efficientnet_lite1  (offline weights)",
        "tf_efficientnet_lite2  (offline weights)"]


def test_the_installed_command_has_help_everywhere():
    exe = shutil.which("transferlab", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the console script `transferlab` is not installed beside this Python"
    for command in ([], ["train"], ["evaluate"], ["backbones"], ["demo"]):
        result = subprocess.run([exe, *command, "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "usage: transferlab" in result.stdout


def test_unfitted_classifier_says_what_to_do():
    with pytest.raises(TransferlabError, match="not fitted yet"):
        ImageClassifier().predict(["x.jpg"])


def test_a_file_is_written_whole_or_not_at_all(tmp_path):
    from transferlab.common.atomic import replacing, write_text

    target = write_text(tmp_path / "report.html", "old")
    with pytest.raises(OSError):
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise OSError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.html"]
    with replacing(target) as a, replacing(target) as b:  # two writers never share a temporary file
        assert a != b and a.suffix == b.suffix == ".html"
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a" and [p.name for p in tmp_path.iterdir()] == ["report.html"]
