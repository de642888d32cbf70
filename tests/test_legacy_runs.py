"""Run directories written by earlier versions keep working: they load, predict the very
probabilities they did, evaluate and export (see legacy_runs.py for how they are kept)."""

import json

import pytest
import yaml

import transferlab
from transferlab.inference.export import export
from legacy_runs import FIXTURES, materialise, names, probe_images
from transferlab.cli import main


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    return probe_images(tmp_path_factory.mktemp("probes"))


def _expected(name: str) -> dict:
    return json.loads((FIXTURES / name / "expected.json").read_text())["probabilities"]


def test_every_kind_of_network_is_kept_as_a_fixture():
    assert names() == ["bilinear-lite0", "features-lite0", "finetune-lite0-mlp", "scratch-basenet-plus"]


# The scratch network (no packaged backbone) stays in the fast lane; the others are slow.
@pytest.mark.parametrize("name", [n if n == "scratch-basenet-plus" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in names()])
def test_a_legacy_run_predicts_what_it_predicted_when_it_was_written(name, tmp_path, probes, capsys):
    run = materialise(name, tmp_path)
    assert main(["-q", "predict", str(run), *map(str, probes), "--top-k", "10", "--format", "json"]) == 0
    got = {r["path"].rsplit("/", 1)[-1]: {t["class"]: t["probability"] for t in r["top"]}
           for r in json.loads(capsys.readouterr().out)["predictions"]}
    expected = _expected(name)
    assert set(got) == set(expected)
    for probe, classes in expected.items():
        assert got[probe] == pytest.approx(classes, abs=1e-5), probe
    clf = transferlab.ImageClassifier.load(run)
    assert clf.predict_proba([str(p) for p in probes]).shape == (3, 2)
    transferlab.RunConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["features-lite0", "scratch-basenet-plus", "bilinear-lite0"])
def test_a_legacy_run_exports_and_evaluates(name, tmp_path, probes, colour_folder):
    run = materialise(name, tmp_path)
    result = export(run, "onnx", check_images=[str(p) for p in probes])
    assert result["path"].is_file() and result["max_abs_diff"] <= 1e-4
    assert transferlab.read_metadata(result["path"])["classes"] == ["blue", "red"]
    metrics = transferlab.evaluate(run, colour_folder(tmp_path / "colours"), progress=False)
    assert metrics["n"] == 16
