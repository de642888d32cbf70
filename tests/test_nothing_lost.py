"""Nothing is lost and nothing ends in a traceback: outputs never replace what they were not made
to replace, damaged runs and unwritable folders get one line naming the file, a run directory has
one writer at a time, and odd input (thin strips, one class, loose files) is handled where it
arises. One test per defect a hostile but realistic user found."""

import contextlib
import csv
import os
import shutil
import stat
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import yaml
from PIL import Image

import transferlab
from transferlab.cli import main
from transferlab.data.decode import UnreadableImage, decode

FAST = ["--strategy", "features", "--weights", "none", "--image-size", "32", "--backbone", "mobilenetv2_050"]
FINETUNE = [*FAST, "--strategy", "finetune", "--head-epochs", "2", "--epochs", "2", "--batch-size", "8"]


@contextlib.contextmanager
def read_only(folder):
    """`folder` (made if needed) read-only for this process, root included: permissions where
    they bind, else a read-only bind mount, else the immutable attribute."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(stat.S_IMODE(mode))
        return
    if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True).returncode == 0:
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        try:
            yield folder
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        return
    pytest.skip("no way to make a read-only folder on this machine")


def one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory, colour_folder):
    return colour_folder(tmp_path_factory.mktemp("data") / "colours", per_class=10)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("runs")
    assert main(["-q", "train", str(data), "--out", str(out), "--name", "done", *FAST]) == 0
    return out / "done"


@pytest.fixture
def run(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "run")


def probe(tmp_path) -> str:
    path = tmp_path / "probe.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    return str(path)


# 1 ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_export_never_replaces_a_runs_own_files_nor_other_files_unless_forced(run, tmp_path, capsys):
    weights = (run / "model.safetensors").read_bytes()
    assert main(["export", str(run), "--format", "torchscript", "--out", str(run / "model.safetensors")]) == 2
    one_line_error(capsys, "model.safetensors", "is a file of the run")
    assert (run / "model.safetensors").read_bytes() == weights
    important = tmp_path / "important.txt"
    important.write_text("keep me")
    assert main(["export", str(run), "--out", str(important)]) == 2
    one_line_error(capsys, "important.txt' exists", "--force")
    assert important.read_text() == "keep me"
    assert main(["-q", "export", str(run), "--out", str(important), "--force"]) == 0
    assert transferlab.read_metadata(important)["classes"] == ["blue", "red"]
    assert main(["-q", "predict", str(run), probe(tmp_path)]) == 0  # the run still predicts


def test_user_named_outputs_of_predict_and_evaluate_are_not_replaced(run, data, tmp_path, capsys):
    target = tmp_path / "mine.csv"
    target.write_text("mine")
    assert main(["predict", str(run), probe(tmp_path), "--output", str(target)]) == 2
    one_line_error(capsys, "mine.csv' exists")
    assert main(["evaluate", str(run), str(data), "--json", str(target)]) == 2
    one_line_error(capsys, "mine.csv' exists")
    assert target.read_text() == "mine"
    assert main(["-q", "predict", str(run), probe(tmp_path), "--output", str(target), "--force", "--format", "csv"]) == 0
    assert target.read_text().startswith("path,")


# 2 ------------------------------------------------------------------------------------------------

DAMAGES = {
    "weights missing": lambda run: (run / "model.safetensors").unlink(),
    "weights truncated": lambda run: (run / "model.safetensors").write_bytes(
        (run / "model.safetensors").read_bytes()[:5000]),
    "weights empty": lambda run: (run / "model.safetensors").write_bytes(b""),
    "model.json not JSON": lambda run: (run / "model.json").write_text('{"format": 1, "classes": ['),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_run_is_one_line_naming_the_file(damage, run, data, tmp_path, capsys):
    DAMAGES[damage](run)
    named = "model.json" if "json" in damage else "model.safetensors"
    image = probe(tmp_path)
    for argv in (["predict", str(run), image], ["evaluate", str(run), str(data)],
                 ["export", str(run)], ["explain", str(run), image]):
        assert main(argv) == 2, argv
        one_line_error(capsys, named, "restore it")


# 3 ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_unwritable_outputs_are_one_line_naming_the_folder(run, data, tmp_path, capsys):
    image = probe(tmp_path)
    with read_only(tmp_path / "ro") as ro:
        assert main(["train", str(data), "--out", str(ro / "runs"), *FAST]) == 2
        one_line_error(capsys, str(ro / "runs"), "cannot write")
        assert main(["audit", str(data), "--no-near", "--out", str(ro / "audit")]) == 2
        one_line_error(capsys, str(ro / "audit"), "cannot write")
        assert main(["predict", str(run), image, "--output", str(ro / "p.csv")]) == 2
        one_line_error(capsys, "cannot write")
        assert main(["train", str(data), "--out", str(tmp_path / "runs"), "--cache-dir", str(ro / "cache"), *FAST]) == 2
        one_line_error(capsys, str(ro / "cache"), "cannot write")
    with read_only(run):
        assert main(["explain", str(run), image]) == 2
        one_line_error(capsys, "explain", "cannot write")
        assert main(["export", str(run)]) == 2
        one_line_error(capsys, "cannot write", str(run))
    assert not (run / "explain").exists() and not (run / "model.onnx").exists()


# 4 ------------------------------------------------------------------------------------------------

class StopAfter(transferlab.Callback):
    """Ctrl-C after `epochs` epochs, as a user would press it."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, trainer, row):
        if row["epoch"] == self.epochs:
            raise KeyboardInterrupt


def interrupted_run(data, out, name="stopped"):
    options = dict(backbone="mobilenetv2_050", weights="none", image_size=32, strategy="finetune",
                   head_epochs=2, epochs=2, batch_size=8, progress=False)
    with pytest.raises(KeyboardInterrupt, match="--resume"):
        transferlab.train(data, out=out, name=name, callbacks=[StopAfter(2)], **options)
    return out / name


@pytest.mark.slow
def test_a_second_writer_of_a_run_gets_one_line(data, tmp_path, capsys):
    run = interrupted_run(data, tmp_path / "runs")
    assert (run / "checkpoint.pt").is_file() and not (run / ".lock").exists()
    first = subprocess.Popen([sys.executable, "-m", "transferlab", "-q", "train", "--resume", str(run)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((run / ".lock").is_file() and (run / ".lock").read_text()) and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        assert main(["train", "--resume", str(run)]) == 2
        one_line_error(capsys, "is being written by process", str(first.pid))
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert (run / "metrics.json").is_file() and not (run / ".lock").exists()
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_a_lock_left_by_a_killed_writer_is_taken_over(data, tmp_path):
    run = interrupted_run(data, tmp_path / "runs")
    (run / ".lock").write_text("process 999999 on elsewhere\n")  # its process is gone: no flock held
    (run / ".checkpoint.123-abcd.tmp.pt").write_bytes(b"half")   # what a SIGKILL mid-write leaves
    resumed = transferlab.train(resume=run, progress=False)
    assert resumed.metrics["test"]["n"] > 0
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


# 5 ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_thin_strip_is_refused_by_the_size_it_would_have_after_resizing(tmp_path, data):
    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((1, 50000, 3), np.uint8)).save(strip)
    assert strip.stat().st_size < 1000
    with pytest.raises(UnreadableImage, match="too elongated"):
        decode(strip, 224)
    assert decode(strip).shape == (1, 50000, 3)  # at its own size it is small
    folder = shutil.copytree(data, tmp_path / "with-strip")
    # At 32 px (a 36 px shorter side before the crop) it takes a longer strip to pass the limit.
    Image.fromarray(np.zeros((1, 200000, 3), np.uint8)).save(folder / "red" / "strip.png")
    run = transferlab.train(folder, out=tmp_path / "runs", name="r", strategy="features", backbone="mobilenetv2_050", weights="none",
                            image_size=32, progress=False)
    assert any("strip.png" in s and "too elongated" in s for s in run.metrics["skipped"])


# 6 ------------------------------------------------------------------------------------------------

def test_evaluate_scores_new_images_of_a_single_class(finished, colour_folder, tmp_path, capsys):
    reds = colour_folder(tmp_path / "reds", classes=("red",), per_class=6)
    assert main(["-q", "evaluate", str(finished), str(reds)]) == 0
    assert "on 6 images" in capsys.readouterr().out


# 7 ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_compare_takes_train_options_and_names_the_bad_grid_entry(data, tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": {"backbone": "mobilenetv2_050", "weights": "none"},
                                    "configs": [{"strategy": "features"}]}))
    assert main(["-q", "compare", str(data), "--grid", str(grid), "--seeds", "1", "--image-size", "48",
                 "--out", str(tmp_path / "c")]) == 0
    configs = list((tmp_path / "c").rglob("config.yaml"))
    assert len(configs) == 1 and yaml.safe_load(configs[0].read_text())["image_size"] == 48
    capsys.readouterr()
    grid.write_text("configs:\n  - {strategy: features}\n  - {strategy: frozen, epochs: 0}\n")
    assert main(["compare", str(data), "--grid", str(grid), "--out", str(tmp_path / "c2")]) == 2
    one_line_error(capsys, "grid.yaml', config 2 (strategy: frozen, epochs: 0)", "--epochs 0 must be at least 1")


# 8 ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_and_a_changed_data_set_each_say_one_thing(data, tmp_path, capsys, monkeypatch):
    from transferlab.training import engine

    original, calls = engine.Trainer._run_epoch, []

    def interrupted(self):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(engine.Trainer, "_run_epoch", interrupted)
    folder = shutil.copytree(data, tmp_path / "data")
    assert main(["train", str(folder), "--out", str(tmp_path / "runs"), "--name", "r", *FINETUNE]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"interrupted: continue it with `transferlab train --resume {tmp_path / 'runs' / 'r'}`"]
    monkeypatch.setattr(engine.Trainer, "_run_epoch", original)
    Image.new("RGB", (24, 24), (200, 30, 30)).save(folder / "red" / "new.png")
    assert main(["train", "--resume", str(tmp_path / "runs" / "r")]) == 2
    err = one_line_error(capsys, "the data changed")
    assert "--resume" not in err


# 9 ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_unfreeze_beyond_the_stages_is_refused_and_kept_as_a_number(data, tmp_path, capsys):
    assert main(["train", str(data), "--out", str(tmp_path / "runs"), *FINETUNE, "--unfreeze", "99"]) == 2
    one_line_error(capsys, "--unfreeze 99", "stages")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert main(["-q", "train", str(data), "--out", str(tmp_path / "runs"), "--name", "u", *FINETUNE,
                 "--unfreeze", "2"]) == 0
    assert "unfreeze: 2\n" in (tmp_path / "runs" / "u" / "config.yaml").read_text()


# 10 -----------------------------------------------------------------------------------------------

def test_images_lying_beside_the_class_folders_are_reported(data, tmp_path, caplog):
    folder = shutil.copytree(data, tmp_path / "data")
    Image.new("RGB", (24, 24)).save(folder / "loose.png")
    assert transferlab.load_source(folder).loose == [str(folder / "loose.png")]
    with caplog.at_level("WARNING", logger="transferlab"):
        transferlab.train(folder, out=tmp_path / "runs", name="r", strategy="features", backbone="mobilenetv2_050", weights="none",
                          image_size=32, progress=False)
    assert any("loose.png" in r.message and "beside the class folders" in r.message for r in caplog.records)


# 11 -----------------------------------------------------------------------------------------------

def test_a_run_name_cannot_leave_the_output_folder(data, tmp_path, capsys):
    out = tmp_path / "a" / "b" / "runs"
    assert main(["train", str(data), "--out", str(out), "--name", "../../../escaped", *FAST]) == 2
    one_line_error(capsys, "--name ../../../escaped is not a folder name")
    assert not list(tmp_path.rglob("escaped"))


# 12 -----------------------------------------------------------------------------------------------

def test_a_weights_file_that_cannot_be_read_is_one_whole_line(tmp_path, capsys):
    import argparse

    import torch

    bad = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2), "extra": argparse.Namespace(a=1)}, bad)  # not only tensors
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning leaking from torch would fail here
        assert main(["train", "digits", "--backbone", "mobilenetv2_050", "--weights", str(bad),
                     "--out", str(tmp_path / "runs")]) == 2
    err = one_line_error(capsys, "cannot read weights file", "give a .safetensors file")
    reason = err[err.index("(") + 1:err.index("): give")]
    assert "\x1b" not in err and (reason.endswith(" ...") or len(reason) < 140), reason
    assert "besides tensors" in reason


def test_weights_and_output_folder_are_checked_before_the_data(tmp_path, capsys):
    assert main(["train", str(tmp_path / "no-data"), "--weights", str(tmp_path / "none.pt")]) == 2
    one_line_error(capsys, "--weights")
    with read_only(tmp_path / "ro") as ro:
        assert main(["train", str(tmp_path / "no-data"), "--out", str(ro / "runs")]) == 2
        one_line_error(capsys, "cannot write", str(ro / "runs"))


def test_every_run_file_gets_the_same_permissions(finished):
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in finished.iterdir()}
    assert len(set(modes.values())) == 1, modes


def test_a_malformed_config_file_says_where(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("strategy: frozen\nepochs: [3\nlr: 0.1\n")
    assert main(["train", "--config", str(cfg)]) == 2
    one_line_error(capsys, "run.yaml", "line 3")


def test_predict_on_unreadable_files_only_fails(finished, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert main(["predict", str(finished), str(broken)]) == 2
    err = capsys.readouterr().err
    assert "unreadable: " in err and "none of the 1 image(s) could be read" in err


def test_a_csv_with_only_its_header_says_so(tmp_path, capsys):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n")
    assert main(["train", str(csv)]) == 2
    one_line_error(capsys, "labels.csv' has a header but no rows")


# 13 -----------------------------------------------------------------------------------------------
# Second round: a hostile user's findings on audit, compare, one-class fits, empty predictions and
# the smaller options.

def test_audit_refuses_other_data_for_a_run_and_still_audits_its_own(run, data, colour_folder, tmp_path, capsys):
    other = colour_folder(tmp_path / "small", per_class=6)
    report = (run / "report.html").read_text()
    assert main(["audit", str(other), "--run", str(run), "--no-near", "--out", str(tmp_path / "a")]) == 2
    one_line_error(capsys, "--run", str(other), str(data), "drop DATA")
    assert not (run / "audit.json").exists() and (run / "report.html").read_text() == report
    assert not (tmp_path / "a").exists()  # refused before any work
    # its own data, given or not (a relative path to the same folder is the same data)
    assert main(["-q", "audit", os.path.relpath(data), "--run", str(run), "--no-near",
                 "--out", str(tmp_path / "b")]) == 0
    assert main(["-q", "audit", "--run", str(run), "--no-near", "--out", str(tmp_path / "c")]) == 0
    assert yaml.safe_load((run / "audit.json").read_text())["data"] == str(data)


def test_a_one_class_fit_is_refused_by_the_api_as_by_the_cli(data, tmp_path, capsys):
    reds = [str(p) for p in sorted((data / "red").glob("*.png"))]
    options = dict(strategy="features", backbone="mobilenetv2_050", weights="none", image_size=32, progress=False)
    needles = ("found only 1 class ('red')", "a classifier needs at least 2 classes")
    for X, y in ((reds, ["red"] * len(reds)), (transferlab.load_source(data).images.subset(range(10, 20)), None)):
        with pytest.raises(transferlab.TransferlabError) as err:
            transferlab.ImageClassifier(**options).fit(X, y)
        assert all(n in str(err.value) for n in needles) and "\n" not in str(err.value), err.value
    only_red = shutil.copytree(data / "red", tmp_path / "reds" / "red")
    assert main(["train", str(only_red.parent), "--out", str(tmp_path / "runs"), *FAST]) == 2
    one_line_error(capsys, *needles)


def test_compare_refuses_bad_folds_before_any_run_and_fails_when_every_config_failed(data, tmp_path, capsys,
                                                                                     monkeypatch):
    from transferlab.workflows import compare as comparing

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": {"backbone": "mobilenetv2_050", "weights": "none", "image_size": 32},
                                    "configs": [{"strategy": "features"}, {"strategy": "features", "head": "mlp:8"}]}))
    out = tmp_path / "c"
    assert main(["compare", str(data), "--grid", str(grid), "--folds", "50", "--out", str(out)]) == 2
    one_line_error(capsys, "--folds 50", "class 'blue' has only")
    assert not out.exists() or not list(out.rglob("config.yaml"))  # no run started

    def broken(*args, **kwargs):
        raise transferlab.TransferlabError("the disk ate it")

    monkeypatch.setattr(comparing, "train", broken)
    assert main(["compare", str(data), "--grid", str(grid), "--seeds", "1", "--out", str(out)]) == 2
    err = one_line_error(capsys, "no config", "comparison.csv")
    rows = list(csv.DictReader(next(out.glob("*/comparison.csv")).open()))
    assert [r["status"] for r in rows] == ["failed", "failed"] and all("the disk ate it" in r["error"] for r in rows)
    assert "the disk ate it" in err


def test_an_out_folder_that_is_a_file_is_one_line(run, data, tmp_path, capsys):
    keep = tmp_path / "keep.csv"
    keep.write_text("keep me")
    assert main(["explain", str(run), probe(tmp_path), "--out", str(keep)]) == 2
    one_line_error(capsys, "--out", "keep.csv", "is a file", "folder")
    assert main(["audit", str(data), "--out", str(keep), "--no-near"]) == 2
    one_line_error(capsys, "--out", "keep.csv", "is a file", "folder")
    assert main(["audit", str(data), "--out", str(keep / "inside"), "--no-near"]) == 2
    one_line_error(capsys, "--out", "keep.csv", "is a file", "folder")
    assert keep.read_text() == "keep me"


def test_nothing_to_score_on_is_refused_before_a_run_folder_exists(data, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", str(data), "--out", str(runs), *FAST, "--test-fraction", "0", "--val-fraction", "0"]) == 2
    one_line_error(capsys, "--test-fraction 0", "nothing to score")
    assert main(["train", str(data), "--out", str(runs), *FAST, "--strategy", "auto", "--test-fraction", "0"]) == 2
    one_line_error(capsys, "--test-fraction 0", "nothing to score", "auto")
    assert not runs.exists() or not list(runs.iterdir())
    # data that brings its own test split needs no fraction (its own val/ too: no C tuned by
    # cross-validation, which takes seconds on random features)
    split = tmp_path / "split"
    for part, k in (("train", slice(0, 6)), ("val", slice(6, 8)), ("test", slice(8, 10))):
        for cls in ("red", "blue"):
            (split / part / cls).mkdir(parents=True)
            for f in sorted((data / cls).glob("*.png"))[k]:
                shutil.copy(f, split / part / cls / f.name)
    assert main(["-q", "train", str(split), "--out", str(runs), "--name", "s", *FAST,
                 "--test-fraction", "0", "--val-fraction", "0"]) == 0
    assert yaml.safe_load((runs / "s" / "metrics.json").read_text())["score_split"] == "test"


def test_predicting_nothing_or_only_missing_files(finished, tmp_path):
    clf = transferlab.ImageClassifier.load(finished)
    for tta in (False, True):  # cached features, then the network over pixels
        assert clf.predict([], tta=tta).shape == (0,)
        assert clf.predict_proba([], tta=tta).shape == (0, 2)
        with pytest.raises(transferlab.TransferlabError, match="cannot read 1 image.*nope.jpg: file not found"):
            clf.predict([str(tmp_path / "nope.jpg")], tta=tta)
        with pytest.raises(transferlab.TransferlabError, match="cannot read 1 image.*nope.jpg: file not found"):
            clf.predict_proba([str(tmp_path / "nope.jpg")], tta=tta)


@pytest.mark.parametrize("options, needles", [
    (["--strategy", "finetune", "--unfreeze-schedule", ",,"], ("--unfreeze-schedule ',,'", "empty entry")),
    (["--strategy", "finetune", "--unfreeze-schedule", "1,,2"], ("--unfreeze-schedule '1,,2'", "empty entry")),
    (["--ema", "0.99"], ("--ema 0.99", "logistic regression", "--head mlp")),
    (["--backbone", "mobilenetv2_050,mobilenetv2_050"], ("--backbone", "'mobilenetv2_050' twice")),
])
def test_options_that_would_do_nothing_or_the_wrong_thing_are_refused(options, needles, data, tmp_path, capsys):
    assert main(["train", str(data), "--out", str(tmp_path / "runs"), *FAST, *options]) == 2
    one_line_error(capsys, *needles)
    assert not (tmp_path / "runs").exists()  # refused as options, before the data loads


def test_ema_is_accepted_where_a_head_trains_by_gradient():
    from transferlab.config import RunConfig

    RunConfig.from_dict({"strategy": "features", "head": "mlp:16", "ema": 0.99}).refuse_unused()
    RunConfig.from_dict({"strategy": "frozen", "ema": 0.99}).refuse_unused()
    RunConfig.from_dict({"strategy": "auto", "ema": 0.99}).refuse_unused()  # its trained candidates use it


def test_an_unfreeze_schedule_beyond_the_stages_names_the_schedule_and_its_entry(data, tmp_path, capsys):
    assert main(["train", str(data), "--out", str(tmp_path / "runs"), *FINETUNE, "--unfreeze-schedule", "1,99"]) == 2
    err = one_line_error(capsys, "--unfreeze-schedule '1,99'", "entry 99", "stages")
    assert "--unfreeze 99" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("text, line, count", [
    ("path,label\n{a},red\n{b},blue,extra\n", 3, 3),
    ("path,label,split\n{a},red,train\n{b},blue,train,oops\n", 3, 4),
    ("{a},red\n{b},blue,test\n", 2, 3),
])
def test_a_csv_row_with_too_many_columns_names_its_line(text, line, count, data, tmp_path, capsys):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(text.format(a=data / "red" / "0.png", b=data / "blue" / "0.png"))
    assert main(["train", str(csv_file)]) == 2
    one_line_error(capsys, f"labels.csv' line {line} has {count} columns", "too many", "comma")
