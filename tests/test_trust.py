"""How far to trust an answer: probabilities calibrated on images the model did not train on
(never test) and applied inside the saved network; an image of no known class answered
"unknown" by predict --reject, serve and the exported ONNX file alike, at a threshold read from
the training images' held-out distances (never test)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import transferlab
from transferlab.cli import main
from transferlab.inference.export import export, image_pixels
from transferlab.inference.predict import predict
from transferlab.trust.calibration import apply, fit_calibration, reliability, uncalibrated

TINY = {"strategy": "features", "backbone": "mobilenetv2_050", "weights": "none", "image_size": 32,
        "progress": False}


# ---------------------------------------------------------------------------- calibration

def test_temperature_scaling_recovers_the_temperature_that_made_the_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (4000, 4))
    labels = np.array([rng.choice(4, p=p) for p in apply(logits, None)])  # calibrated at T = 1
    fitted = fit_calibration(logits * 3.0, labels)  # the model's logits three times too sharp
    assert fitted["method"] == "temperature"
    assert fitted["temperature"] == pytest.approx(3.0, rel=0.06)
    assert fitted["log_loss_after"] < fitted["log_loss_before"]


def test_expected_calibration_error_matches_a_hand_computation():
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2], [0.3, 0.7]])
    labels = np.array([0, 0, 0, 1])
    # One image per bin: |0 - 0.6| (wrong at 0.6), |1 - 0.7|, |1 - 0.8|, |1 - 0.9|, averaged.
    assert reliability(proba, labels)["ece"] == pytest.approx((0.6 + 0.3 + 0.2 + 0.1) / 4)
    assert [b["images"] for b in reliability(proba, labels)["bins"]] == [1, 1, 1, 1]
    from transferlab.inference.metrics import compute_metrics, format_metrics
    scored = compute_metrics(labels, proba, ["a", "b"])
    assert scored["ece"] == pytest.approx(0.3) and "ECE 0.3000" in format_metrics(scored, "test")


def test_calibrated_probabilities_give_back_the_uncalibrated_ones_exactly():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (50, 5))
    calibration = {"scale": [0.6], "bias": list(rng.normal(0, 1, 5))}
    assert np.abs(uncalibrated(apply(z, calibration), calibration) - apply(z, None)).max() < 1e-9


def test_a_calibration_set_the_model_separates_does_not_make_certainties():
    # 37 images all classified right with a wide margin: the likelihood alone wants the scale to
    # grow without end; Laplace's rule keeps the confidence near (n + 1) / (n + 2).
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 37)
    logits = np.where(np.eye(2)[labels] > 0, 4.0, -4.0) + rng.normal(0, 0.5, (37, 2))
    fitted = fit_calibration(logits, labels)
    confidence = apply(logits, fitted).max(1)
    assert np.isfinite(fitted["scale"]).all() and confidence.mean() < 0.995


def _with_test(root, colour_folder, swap_test: bool):
    """train/ of red and blue images; test/ of others, with its folders swapped when asked."""
    colour_folder(root / "train", ("red", "blue"), 12, 32)
    other = colour_folder(root.parent / f"{root.name}-other", ("red", "blue"), 6, 32, noise=60)
    for cls, folder in (("red", "blue"), ("blue", "red")) if swap_test else (("red", "red"), ("blue", "blue")):
        shutil.copytree(other / cls, root / "test" / folder)
    return root


def test_calibration_and_the_unknown_threshold_never_read_test(tmp_path, colour_folder):
    runs = []
    for swap in (False, True):
        data = _with_test(tmp_path / f"data{int(swap)}", colour_folder, swap)
        runs.append(transferlab.train(data, out=tmp_path / "runs", name=f"r{int(swap)}", **TINY))
    # Test labels swapped: its score falls, but what was fitted before scoring is the same.
    assert runs[0].score != runs[1].score
    (a, b) = [json.loads((r.path / "model.json").read_text())["spec"]["calibration"] for r in runs]
    assert a["scale"] == b["scale"] and a["bias"] == b["bias"] and a["images"] == b["images"]
    assert a["fitted_on"] == "val" and 0 < a["images"] < 24  # the val images cut from train/
    (ua, ub) = [json.loads((r.path / "unknown.json").read_text()) for r in runs]
    assert ua["threshold"] == ub["threshold"] and ua["images"] == ub["images"] == 24
    metrics = runs[0].metrics
    assert {"ece_before", "ece_after"} <= set(metrics["calibration"]) and metrics["unknown"]["split"] == "test"
    page = (runs[0].path / "report.html").read_text()
    assert "Calibration (test)" in page and "Unknown images" in page and "reliability diagram" in page


# ---------------------------------------------------------------------------- unknown images

@pytest.fixture(scope="module")
def run_and_images(colour_folder, tmp_path_factory):
    """A red-vs-blue run, known images like its training ones and foreign ones (stripes)."""
    root = tmp_path_factory.mktemp("unknown")
    data = colour_folder(root / "data", ("red", "blue"), 16, 40)
    run = transferlab.train(data, out=root / "runs", name="r", test_fraction=0.2, **TINY)
    known = colour_folder(root / "known", ("red", "blue"), 3, 40)
    files = sorted(known.rglob("*.png"))
    rng = np.random.default_rng(3)
    for i in range(6):
        stripes = np.zeros((40, 40, 3), np.uint8)
        stripes[::4 if i % 2 else 3] = rng.integers(0, 255, 3)
        stripes[:, ::5] = 255
        path = root / f"foreign{i}.png"
        Image.fromarray(stripes).save(path)
        files.append(path)
    return run, files


def test_predict_reject_answers_unknown_for_images_of_no_known_class(run_and_images):
    run, files = run_and_images
    result = predict(run.path, [str(f) for f in files], reject=True, progress=False)
    answers = {r["path"]: r for r in result["predictions"]}
    foreign = [answers[str(f)] for f in files if f.name.startswith("foreign")]
    known = [answers[str(f)] for f in files if not f.name.startswith("foreign")]
    assert all(r["unknown"] and r["class"] == "unknown" for r in foreign)
    assert sum(r["unknown"] for r in known) <= 1 and all(r["class"] != "unknown" for r in known if not r["unknown"])
    assert all(r["unknown_score"] > result["unknown_threshold"] for r in foreign)
    # The Python API gives the same distances and decisions.
    clf = transferlab.ImageClassifier.load(run.path)
    distances = clf.unknown_score([str(f) for f in files])
    assert np.allclose(distances, [answers[str(f)]["unknown_score"] for f in files], atol=1e-5)
    assert list(clf.predict([str(f) for f in files], reject=True)) == [answers[str(f)]["class"] for f in files]


def test_an_exported_onnx_file_rejects_the_same_images_as_predict(run_and_images, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    run, files = run_and_images
    target = tmp_path / "model.onnx"
    result = export(run.path, "onnx", out=target, check_images=files[:2])
    assert result["metadata"]["outputs"] == ["probabilities", "unknown_score", "unknown"]
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    model = transferlab.ImageClassifier.load(run.path)
    proba, distance, unknown = session.run(None, {"pixels": image_pixels(files, model.preprocess_).numpy()})
    answers = predict(run.path, [str(f) for f in files], reject=True, progress=False)["predictions"]
    assert list(unknown) == [r["unknown"] for r in answers]
    assert any(unknown) and not all(unknown)
    assert np.abs(distance - [r["unknown_score"] for r in answers]).max() < 1e-4
    assert result["metadata"]["unknown_threshold"] == model.unknown_.threshold


def test_serve_answers_unknown_with_the_distance(run_and_images):
    from starlette.testclient import TestClient

    from transferlab.serving.app import create_app
    from transferlab.serving.model import ServedModel

    run, files = run_and_images
    foreign, known = files[-1], files[0]
    with TestClient(create_app(ServedModel(run.path))) as client:
        reply = client.post("/predict", files=[("file", (p.name, p.read_bytes(), "image/png")) for p in (known, foreign)])
        assert reply.status_code == 200
        answers = reply.json()["predictions"]
        assert answers[1]["class"] == "unknown" and answers[1]["unknown"] is True
        assert answers[0]["class"] in ("red", "blue") and answers[0]["unknown_score"] < answers[1]["unknown_score"]
        assert client.get("/metadata").json()["unknown_threshold"] > 0


def test_reject_without_a_detector_and_a_damaged_one_are_one_line_errors(run_and_images, tmp_path, capsys,
                                                                         colour_folder):
    run, files = run_and_images
    data = colour_folder(tmp_path / "data", ("red", "blue"), 6, 32)
    plain = transferlab.train(data, out=tmp_path / "runs", name="plain", keep_known=0, **TINY)
    assert not (plain.path / "unknown.json").exists()
    assert main(["-q", "predict", str(plain.path), str(files[0]), "--reject"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--reject" in err and "unknown-image detector" in err
    damaged = tmp_path / "damaged"
    shutil.copytree(run.path, damaged)
    (damaged / "unknown.safetensors").write_bytes(b"\0" * 100)
    assert main(["-q", "predict", str(damaged), str(files[0]), "--reject"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown.json" in err and "damaged" in err
    assert main(["-q", "train", str(data), "--keep-known", "1.5"]) != 0
    assert "keep" in capsys.readouterr().err


def test_held_out_distances_are_each_images_distance_to_its_nearest_other_image():
    from transferlab.trust.unknown import _leave_one_out, _unit

    e = _unit(np.random.default_rng(4).normal(size=(120, 8)))
    e[7] = e[3]  # a duplicate: its nearest other image is its copy, at distance 0
    brute = [1 - max(float(e[i] @ e[j]) for j in range(120) if j != i) for i in range(120)]
    got = _leave_one_out(e, np.arange(120))
    assert np.abs(got - brute).max() < 1e-5 and got[3] == pytest.approx(0, abs=1e-6)
    assert np.abs(_leave_one_out(e, np.array([5, 60])) - got[[5, 60]]).max() < 1e-6


def test_a_confident_mistake_in_a_tiny_calibration_set_cannot_flatten_the_probabilities_to_ties():
    logits = np.array([[5.0, -5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, 5.0], [5.0, -5.0], [6.0, -6.0]])
    labels = np.array([0, 1, 0, 1, 0, 1])  # the last one confidently wrong
    fitted = fit_calibration(logits, labels)
    assert fitted["temperature"] <= 20.0 + 1e-6
    calibrated = apply(logits, fitted).astype(np.float32)
    assert (calibrated.argmax(1) == logits.argmax(1)).all() and (calibrated.max(1) > 0.5).all()
