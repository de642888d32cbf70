"""`transferlab predict`: files, folders and globs; table, CSV and JSON; unreadable files listed."""

import csv
import io
import json

import numpy as np
import pytest
import torch

import transferlab
from transferlab.cli import main
from transferlab.data.decode import decode
from transferlab.inference.probabilities import ten_views
from transferlab.models.network import to_batch
from transferlab.inference.predict import predict

RGB = ("red", "green", "blue")


@pytest.fixture(scope="module")
def trained(colour_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    data = colour_folder(root / "data", RGB, 10, 40)
    run = transferlab.train(data, strategy="frozen", backbone="mobilenetv2_050", weights="none", image_size=32,
                            epochs=4, lr=0.01, out=root / "runs", progress=False)
    (root / "new").mkdir()
    for i, cls in enumerate(RGB):
        (root / "new" / f"{cls}.png").write_bytes((data / cls / "0.png").read_bytes())
    (root / "new" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return run, root


def cli(capsys, *argv):
    code = main(["-q", "predict", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_three_formats_agree_with_the_classifier(trained, capsys):
    run, root = trained
    code, out, err = cli(capsys, run.path, root / "new", "--format", "json", "--top-k", "2")
    assert code == 0
    result = json.loads(out)
    assert [p["path"].rsplit("/", 1)[-1] for p in result["predictions"]] == ["blue.png", "green.png", "red.png"]
    assert all(len(p["top"]) == 2 for p in result["predictions"])
    assert [p["top"][0]["class"] for p in result["predictions"]] == \
           list(run.classifier.predict([p["path"] for p in result["predictions"]]))
    assert len(result["unreadable"]) == 1 and "broken.jpg" in result["unreadable"][0] and "broken.jpg" in err
    _, out, _ = cli(capsys, run.path, root / "new" / "red.png", str(root / "new" / "g*.png"), "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["path", "class_1", "probability_1", "class_2", "probability_2", "class_3", "probability_3"]
    assert [r[0].rsplit("/", 1)[-1] for r in rows[1:]] == ["red.png", "green.png"]
    assert sum(float(v) for v in rows[1][2::2]) == pytest.approx(1.0, abs=1e-5)
    _, out, _ = cli(capsys, run.path, root / "new" / "blue.png")
    assert out.splitlines()[0].startswith("image") and "blue.png" in out.splitlines()[1]


@pytest.mark.slow
def test_tta_averages_the_ten_views(trained):
    run, root = trained
    result = predict(run.path, [str(root / "new" / "green.png")], top_k=3, tta=True, progress=False)
    clf = transferlab.ImageClassifier.load(run.path)
    pixels = decode(str(root / "new" / "green.png"), clf.preprocess_.resize_size, clf.preprocess_.interpolation)
    with torch.inference_mode():
        want = torch.softmax(clf.network_(to_batch(ten_views(pixels, clf.preprocess_.input_size)).float()), 1).mean(0)
    got = {t["class"]: t["probability"] for t in result["predictions"][0]["top"]}
    assert got == pytest.approx({c: float(want[i]) for i, c in enumerate(clf.classes_)}, abs=1e-5)
    assert len(ten_views(np.zeros((40, 50, 3), np.uint8), 32)) == 10


@pytest.mark.slow
def test_output_file_and_bad_input(trained, capsys, tmp_path):
    run, root = trained
    code, out, _ = cli(capsys, run.path, root / "new", "--format", "json", "--output", tmp_path / "p.json")
    assert code == 0 and "written to" in out and len(json.loads((tmp_path / "p.json").read_text())["predictions"]) == 3
    code, _, err = cli(capsys, run.path, root / "missing.png")
    assert code == 2 and "missing.png' does not exist" in err and err.count("\n") == 1
    code, _, err = cli(capsys, run.path, str(root / "nothing-*.png"))
    assert code == 2 and "matches no file" in err
    code, _, err = cli(capsys, root / "new", root / "new")
    assert code == 2 and "not a transferlab run" in err
