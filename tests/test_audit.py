"""The data audit finds what makes a held-out score dishonest: copies across splits, re-saved
copies, one image under two labels; `--dedupe` drops exactly the leaked copies; clean data
reports nothing."""

import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

import transferlab
from transferlab.audit import audit
from transferlab.audit.duplicates import check_splits, dedupe_splits
from transferlab.audit.near import neighbours, similar_pairs
from transferlab.cli import main
from transferlab.data.sources import load_source
from transferlab.data.split import split_source

PER_CLASS = {"train": 4, "val": 2, "test": 2}


def _small(src, dst, quality=90, scale=1.0):
    """`src` shrunk to 96 px on its longer side (times `scale`), saved as JPEG at `quality`."""
    image = Image.open(src).convert("RGB")
    image.thumbnail((96, 96), Image.Resampling.LANCZOS)
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    dst.parent.mkdir(parents=True, exist_ok=True)
    image.save(dst, quality=quality)
    return dst


def _clean(root, hymenoptera):
    """train/ val/ test/ of distinct colour photos of ants and bees, 96 px, from hymenoptera."""
    for cls in ("ants", "bees"):
        photos = sorted(p for p in (hymenoptera / "train" / cls).glob("*.jpg"))[:sum(PER_CLASS.values())]
        start = 0
        for split, n in PER_CLASS.items():
            for photo in photos[start:start + n]:
                _small(photo, root / split / cls / photo.name)
            start += n
    return root


@pytest.fixture(scope="module")
def clean(tmp_path_factory, hymenoptera):
    return _clean(tmp_path_factory.mktemp("clean") / "data", hymenoptera)


@pytest.fixture
def folder(tmp_path, clean):
    """A fresh copy of the clean folder to add copies to."""
    return shutil.copytree(clean, tmp_path / "data")


def _first(root, split, cls):
    return sorted((root / split / cls).glob("*.jpg"))[0]


def test_an_identical_file_in_train_and_test_is_reported_as_leakage(folder, tmp_path):
    original = _first(folder, "train", "ants")
    shutil.copy(original, folder / "test" / "ants" / "copy.jpg")
    result = audit(folder, near=False, out=tmp_path / "audit")
    assert len(result["exact_duplicates"]) == 1 and not result["conflicts"]
    [leak] = result["leakage"]
    assert leak["splits"] == ["train", "test"] and leak["labels"] == ["ants"]
    assert sorted((i["split"], i["name"]) for i in leak["images"]) == [
        ("test", str(folder / "test" / "ants" / "copy.jpg")), ("train", str(original))]
    assert result["leaked_copies"] == {"test": 1}
    assert any(line.startswith("leakage: 1 exact cop") for line in result["findings"])
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["leakage"] == result["leakage"]


@pytest.mark.slow
def test_a_photo_resaved_at_another_quality_and_size_is_a_near_duplicate(folder, tmp_path):
    original = _first(folder, "train", "bees")
    resaved = _small(original, folder / "test" / "bees" / "resaved.jpg", quality=60, scale=0.7)
    result = audit(folder, out=tmp_path / "audit", progress=False)
    assert result["exact_duplicates"] == []  # other bytes: not an exact copy
    pairs = [p for p in result["near_duplicates"]
             if {p["a"]["name"], p["b"]["name"]} == {str(original), str(resaved)}]
    assert len(pairs) == 1 and pairs[0]["cross_split"] and not pairs[0]["conflict"]
    assert result["near_total"] == 1  # and no distinct photo was taken for one
    html = (tmp_path / "audit" / "audit.html").read_text()
    assert "Near-duplicate pairs" in html and html.count("data:image/png;base64,") >= 2


def test_a_duplicate_under_two_labels_is_a_conflict(folder, tmp_path):
    original = _first(folder, "train", "ants")
    shutil.copy(original, folder / "train" / "bees" / "same-as-an-ant.jpg")
    result = audit(folder, near=False, out=tmp_path / "audit")
    [conflict] = result["conflicts"]
    assert conflict["labels"] == ["ants", "bees"] and conflict["splits"] == ["train"]
    assert result["leakage"] == []  # both copies are in train
    assert any(line.startswith("label conflicts: 1 group") for line in result["findings"])


def test_a_clean_folder_reports_nothing(clean, tmp_path):
    result = audit(clean, out=tmp_path / "audit", progress=False)
    assert result["findings"] == []
    for key in ("exact_duplicates", "leakage", "conflicts", "near_duplicates", "unreadable", "tiny",
                "huge", "odd_aspect"):
        assert result[key] == [], key
    assert result["leaked_copies"] == {} and not result["imbalance"]["warning"]
    assert result["splits"]["test"]["counts"] == {"ants": 2, "bees": 2}


def _leaky(root):
    """Copies: train->test, train->val, val->test (leaks) and one within train (not a leak)."""
    a, b = _first(root, "train", "ants"), _first(root, "train", "bees")
    v = _first(root, "val", "bees")
    leaks = [shutil.copy(a, root / "test" / "ants" / "leak-train-test.jpg"),
             shutil.copy(b, root / "val" / "bees" / "leak-train-val.jpg"),
             shutil.copy(v, root / "test" / "bees" / "leak-val-test.jpg")]
    shutil.copy(a, root / "train" / "ants" / "twin-in-train.jpg")
    return sorted(str(p) for p in leaks)


def test_dedupe_drops_exactly_the_leaked_copies_from_val_and_test(folder):
    leaks = _leaky(folder)
    splits = split_source(load_source(folder))
    deduped, dropped = dedupe_splits(splits, check_splits(splits))
    assert sorted(d["name"] for d in dropped) == leaks
    assert len(deduped.train) == len(splits.train)  # both train copies kept
    assert (len(deduped.val), len(deduped.test)) == (len(splits.val) - 1, len(splits.test) - 2)
    kept = {ref.name for _, part in deduped.items() for ref in part.images}
    assert not kept & set(leaks) and str(_first(folder, "val", "bees")) in kept


@pytest.mark.slow
def test_train_warns_about_leakage_and_dedupe_records_what_it_dropped(folder, tmp_path, caplog):
    leaks = _leaky(folder)
    audit(folder, out=tmp_path / "audit", progress=False)  # computes and caches every image's features
    with caplog.at_level(logging.INFO, logger="transferlab"):
        run = transferlab.train(folder, strategy="features", dedupe=True, out=tmp_path / "runs", name="r",
                                progress=False)
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert sorted(metrics["audit"]["dropped"]) == leaks
    assert metrics["audit"]["leaked"] == {"val": 1, "test": 2}
    assert metrics["splits"]["test"]["images"] == 2 * PER_CLASS["test"]  # the 4 originals, no copies
    assert metrics["features"]["computed"] == 0  # the audit's features were the features strategy's
    assert any("--dedupe: dropped 3 leaked copies" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        transferlab.train(folder, strategy="features", out=tmp_path / "runs", name="plain", progress=False)
    [line] = [r.message for r in caplog.records if "data audit" in r.message]
    assert "1 val and 2 test image(s) are exact copies" in line and f"transferlab audit {folder}" in line
    assert "--dedupe" in line

    # `audit --run` adds an Audit section to the run's report and audit.json to the run
    assert main(["-q", "audit", "--run", str(run.path), "--out", str(tmp_path / "a2")]) == 0
    assert '<section id="audit">' in (run.path / "report.html").read_text()
    assert json.loads((run.path / "audit.json").read_text())["leaked_copies"] == {"val": 1, "test": 2}


def test_dedupe_is_a_grid_option_of_compare(tmp_path):
    from transferlab.workflows.compare import read_grid

    grid = tmp_path / "grid.yaml"
    grid.write_text("base: {dedupe: true}\ngrid: {head: [linear, 'mlp:16']}\n")
    assert read_grid(grid).base == {"dedupe": True}


def test_the_audit_command_prints_a_table_and_writes_audit_json(folder, tmp_path, capsys):
    shutil.copy(_first(folder, "train", "ants"), folder / "test" / "ants" / "copy.jpg")
    out = tmp_path / "out"
    assert main(["audit", str(folder), "--no-near", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "leakage (identical files in different splits):" in text
    assert "test/ants/copy.jpg [test, ants]" in text and "near-duplicate pairs" in text
    assert json.loads((out / "audit.json").read_text())["near_duplicates"] is None
    assert (out / "audit.html").is_file()


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data '") and "does not exist" in err and "\n" not in err
    assert main(["audit", "digits", "--threshold", "1.5", "--no-near", "--out", str(tmp_path)]) == 2
    assert "--threshold 1.5" in capsys.readouterr().err


def test_pairs_are_found_tile_by_tile_as_in_one_matrix():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    x[7] = x[31] + 0.01
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    full = x @ x.T
    pairs, total = similar_pairs(x, 0.6, tile=7)
    expected = {(i, j) for i, j in zip(*np.nonzero(np.triu(full, 1) >= 0.6))}
    assert {(i, j) for i, j, _ in pairs} == expected and total == len(expected)
    near = neighbours(x, k=2, minimum=-1.0, tile=7)
    np.fill_diagonal(full, -2)
    top = np.argsort(-full, 1)[:, :2]
    assert {(i, j) for i, j, _ in near} == {(min(i, j), max(i, j)) for i in range(50) for j in top[i]}
