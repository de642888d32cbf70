"""ONNX and TorchScript export: the exported file computes what prediction computes, says how to
feed it, and a bad export never stays on disk."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import transferlab
from transferlab import ImageClassifier, TransferlabError
from transferlab.config import RunConfig
from transferlab.inference.export import export, image_pixels, read_metadata
from transferlab.training.strategies import resolve
from transferlab.models.factory import ModelSpec, build_model

TOL = 1e-4


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, x: torch.Tensor) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.fixture(scope="module")
def ant_bee_images(hymenoptera):
    val = hymenoptera / "val"
    return sorted((val / "ants").glob("*.jpg"))[:3] + sorted((val / "bees").glob("*.jpg"))[:3]


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory):
    """A run of tf_efficientnet_lite0 with the packaged ImageNet weights, saved as training saves
    it; the head is untrained (training would only slow the test, not change what is exported)."""
    cfg = resolve(RunConfig(strategy="frozen", image_size=96))
    spec = ModelSpec.from_options(cfg.to_dict(), 2)
    network, pre, weights = build_model(spec)
    clf = ImageClassifier(strategy="frozen", image_size=96, progress=False)
    clf.classes_, clf.config_, clf.spec_, clf.preprocess_, clf.weights_ = ["ants", "bees"], cfg, spec, pre, weights
    clf.network_ = network.eval()
    return clf.save(tmp_path_factory.mktemp("runs") / "lite0")


@pytest.fixture(scope="module")
def lite0_onnx(lite0_run, ant_bee_images):
    return export(lite0_run, check_images=ant_bee_images)


def _loaded(run) -> ImageClassifier:
    clf = ImageClassifier.load(run)
    clf.progress = False
    return clf


@pytest.fixture(scope="module")
def lite0_clf(lite0_run):
    return _loaded(lite0_run)


@pytest.fixture(scope="module")
def bilinear_run(tmp_path_factory, colour_folder):
    root = tmp_path_factory.mktemp("bilinear")
    data = colour_folder(root / "data", per_class=6, size=40)
    run = transferlab.train(str(data), strategy="bilinear", backbone="mobilenetv2_050", weights="none",
                            image_size=32, head_epochs=1, epochs=1, out=root / "runs", progress=False)
    return Path(run.path), sorted(data.glob("*/*.png"))


@pytest.mark.slow
def test_onnx_export_agrees_with_prediction_on_real_images(lite0_run, lite0_onnx, lite0_clf, ant_bee_images):
    assert lite0_onnx["path"] == lite0_run / "model.onnx" and lite0_onnx["path"].is_file()
    assert lite0_onnx["format"] == "onnx"
    assert lite0_onnx["max_abs_diff"] <= TOL
    assert lite0_onnx["inputs_checked"] >= len(ant_bee_images) + 4  # real images plus random ones
    clf = lite0_clf
    expected = clf.predict_proba([str(p) for p in ant_bee_images])
    got = _run(_session(lite0_onnx["path"]), image_pixels(ant_bee_images, clf.preprocess_))
    assert got.shape == (len(ant_bee_images), 2)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)  # probabilities, not logits
    assert np.abs(got - expected).max() <= TOL
    assert not list(lite0_run.glob(".model.onnx*"))  # no temp file left beside it


@pytest.mark.slow
def test_onnx_metadata_round_trips(lite0_onnx):
    meta = read_metadata(lite0_onnx["path"])
    assert meta == lite0_onnx["metadata"]
    assert meta["classes"] == ["ants", "bees"]
    assert meta["input_size"] == 96
    # The packaged lite0 weights expect inputs scaled to -1..1.
    assert meta["mean"] == pytest.approx([0.5, 0.5, 0.5]) and meta["std"] == pytest.approx([0.5, 0.5, 0.5])
    assert meta["input_range"] == "0..255 RGB, normalised inside"
    assert meta["backbone"] == "tf_efficientnet_lite0" and meta["strategy"] == "frozen"
    assert meta["transferlab_version"] == transferlab.__version__
    assert {"interpolation", "crop_pct", "resize_size"} <= set(meta)
    # Plain ONNX metadata_props holding JSON: readable by any ONNX tool, no transferlab needed.
    props = {p.key: p.value for p in onnx.load(str(lite0_onnx["path"])).metadata_props}
    assert props["classes"] == '["ants", "bees"]' and props["input_size"] == "96"


@pytest.mark.slow
def test_onnx_batch_axis_is_dynamic(lite0_onnx, lite0_clf):
    session = _session(lite0_onnx["path"])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    assert session.get_inputs()[0].shape[1:] == [3, 96, 96]
    network = lite0_clf.network_
    gen = torch.Generator().manual_seed(0)
    for n in (1, 5):
        x = torch.randint(0, 256, (n, 3, 96, 96), generator=gen).float()
        got = _run(session, x)
        with torch.inference_mode():
            expected = torch.softmax(network(x), 1).numpy()
        assert got.shape == (n, 2)
        assert np.abs(got - expected).max() <= TOL


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_agrees_and_carries_metadata(lite0_run, lite0_clf, ant_bee_images):
    result = export(lite0_run, format="torchscript", check_images=ant_bee_images[:2])
    assert result["path"] == lite0_run / "model.pt" and result["max_abs_diff"] <= TOL
    meta = read_metadata(result["path"])
    assert meta["classes"] == ["ants", "bees"] and meta["input_size"] == 96
    assert meta["mean"] == pytest.approx([0.5] * 3) and meta["std"] == pytest.approx([0.5] * 3)
    clf = lite0_clf
    module = torch.jit.load(str(result["path"]))
    with torch.inference_mode():
        got = module(image_pixels(ant_bee_images, clf.preprocess_)).numpy()
    assert np.abs(got - clf.predict_proba([str(p) for p in ant_bee_images])).max() <= TOL


@pytest.mark.slow
def test_bilinear_run_exports_and_agrees(bilinear_run, tmp_path):
    run, images = bilinear_run
    out = tmp_path / "deploy" / "colours.onnx"
    result = export(run, out=out, check_images=images)
    assert result["path"] == out and out.is_file() and not (run / "model.onnx").exists()
    assert result["max_abs_diff"] <= TOL
    assert read_metadata(out)["strategy"] == "bilinear"
    clf = _loaded(run)
    got = _run(_session(out), image_pixels(images, clf.preprocess_))
    assert np.abs(got - clf.predict_proba([str(p) for p in images])).max() <= TOL


def test_an_export_that_disagrees_is_not_kept(bilinear_run, monkeypatch):
    run, _ = bilinear_run
    monkeypatch.setattr("transferlab.inference.export.TOLERANCE", -1.0)  # any difference, even 0, fails
    with pytest.raises(TransferlabError, match="disagrees") as err:
        export(run, format="torchscript")
    assert "\n" not in str(err.value)
    assert not (run / "model.pt").exists()
    assert not list(run.glob(".model.pt*"))


def test_bad_format_and_missing_or_unfinished_runs_are_one_line_errors(bilinear_run, tmp_path):
    run, _ = bilinear_run
    with pytest.raises(TransferlabError) as err:
        export(run, format="tflite")
    message = str(err.value)
    assert "\n" not in message and "tflite" in message and "onnx" in message and "torchscript" in message
    with pytest.raises(TransferlabError, match="no-such-run' does not exist") as err:
        export(tmp_path / "no-such-run")
    assert "\n" not in str(err.value)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("strategy: frozen\n")
    with pytest.raises(TransferlabError, match="has not finished") as err:
        export(unfinished)
    assert "\n" not in str(err.value)
    with pytest.raises(TransferlabError, match="neither an ONNX nor a TorchScript file"):
        read_metadata(run / "model.safetensors")


def test_the_export_command_reports_the_difference(bilinear_run, tmp_path, capsys):
    from transferlab.cli import main

    target = tmp_path / "cli.pt"
    assert main(["-q", "export", str(bilinear_run[0]), "--format", "torchscript", "--out", str(target)]) == 0
    out = capsys.readouterr().out
    assert f"torchscript written to {target}" in out and "largest probability difference" in out
    assert target.is_file()
