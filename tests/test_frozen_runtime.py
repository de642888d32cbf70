"""Frozen passes in onnxruntime: the graph computes PyTorch's features, is made once and kept in
the cache, is made again when damaged, keeps its features under a key of their own, and gives
way to PyTorch in one line where onnxruntime is missing or the graph cannot be made."""

import logging

import numpy as np
import pytest
import torch

from transferlab.cli import main
from transferlab.data.cache import iter_decoded
from transferlab.data.types import ImageRef
from transferlab.errors import TransferlabError
from transferlab.features.extract import extractor_key, frozen_features
from transferlab.features.store import FeatureStore
from transferlab.models.factory import ModelSpec, build_model
from transferlab.models.network import to_batch
from transferlab.runtime import frozen

PACKAGED = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]


@pytest.fixture(autouse=True)
def _fresh_process_memory(monkeypatch):
    monkeypatch.setattr(frozen, "_FAILED", {})
    monkeypatch.setattr(frozen, "_SAID", set())
    monkeypatch.setattr(frozen, "_SESSIONS", {})


def _refs(folder):
    return [ImageRef.from_file(p) for p in sorted(folder.rglob("*.png"))]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", PACKAGED)
def test_the_onnx_pass_computes_pytorchs_features_for_each_packaged_backbone(backbone):
    built = build_model(ModelSpec(backbone))  # the packaged ImageNet weights
    size = built.preprocess.input_size
    pixels = torch.randint(0, 256, (5, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    onnx_pass = frozen.frozen_pass(built.network, size, "k", "onnx")
    assert onnx_pass.runtime == "onnx"
    with torch.inference_mode():
        expected = built.network.features(pixels).numpy()
    got = onnx_pass(pixels)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def _small(image_size=64):
    return build_model(ModelSpec("mobilenetv2_050", weights="none", image_size=image_size))


def _extractor(tmp_path, colour_folder, per_class: int):
    """(images, a small random-weight network, its extractor key, a cache root) for one test."""
    images = _refs(colour_folder(tmp_path / "c", per_class=per_class, size=40))
    built = _small()
    return images, built, extractor_key("mobilenetv2_050", built.weights.identity, built.preprocess), tmp_path / "cache"


def _tiny_run(tmp_path, colour_folder):
    """(its data folder, a trained run of a small frozen network at 64 px)."""
    data = colour_folder(tmp_path / "c", per_class=6, size=40)
    out = tmp_path / "runs"
    assert main(["-q", "train", str(data), "--strategy", "frozen", "--backbone", "mobilenetv2_050", "--weights",
                 "none", "--image-size", "64", "--epochs", "1", "--out", str(out), "--name", "r",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    return data, out / "r"


@pytest.mark.slow
def test_torch_keeps_todays_key_and_features_bit_for_bit(tmp_path, colour_folder):
    images, built, key, _ = _extractor(tmp_path, colour_folder, per_class=3)
    got = frozen_features(built.network, images, built.preprocess, key, tmp_path / "cache", "torch", progress=False)
    assert [p.stem for p in (tmp_path / "cache" / "features").glob("*.sqlite")] == [key]
    assert not (tmp_path / "cache" / "onnx").exists()
    # Today's path: the network's own forward in PyTorch (channels_last) over the same batch.
    crops = [built.preprocess.center_crop(p) for _, pixels, _ in
             iter_decoded(images, built.preprocess.resize_size, built.preprocess.interpolation, 32) for p in pixels]
    with torch.inference_mode():
        direct = built.network.to(memory_format=torch.channels_last).features(to_batch(crops)).numpy()
    assert np.array_equal(got.features, direct)


@pytest.mark.slow
def test_onnx_features_live_under_a_key_of_their_own_and_agree(tmp_path, colour_folder, caplog):
    images, built, key, cache = _extractor(tmp_path, colour_folder, per_class=4)
    torch_run = frozen_features(built.network, images, built.preprocess, key, cache, "torch", progress=False)
    onnx_run = frozen_features(built.network, images, built.preprocess, key, cache, "onnx", progress=False)
    assert onnx_run.computed == len(images)  # not read from PyTorch's store
    stems = sorted(p.stem for p in (cache / "features").glob("*.sqlite"))
    assert stems == sorted([key, frozen.runtime_key(key, "onnx")])
    assert len(list((cache / "onnx").glob(f"{key}-*.onnx"))) == 1 and (cache / "onnx" / f"{key}.json").is_file()
    scale = np.abs(torch_run.features).max()
    assert np.abs(onnx_run.features - torch_run.features).max() <= 1e-4 * scale
    again = frozen_features(built.network, images, built.preprocess, key, cache, "auto", progress=False)
    assert again.cached == len(images) and np.array_equal(again.features, onnx_run.features)


@pytest.mark.slow
def test_a_damaged_graph_is_made_again_and_said(tmp_path, colour_folder, caplog):
    images, built, key, cache = _extractor(tmp_path, colour_folder, per_class=2)
    first = frozen_features(built.network, images, built.preprocess, key, cache, "onnx", progress=False).features
    graph, = (cache / "onnx").glob(f"{key}-*.onnx")
    data = bytearray(graph.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)  # weights zeroed: still a valid protobuf
    graph.write_bytes(bytes(data))
    for store in (cache / "features").glob("*.sqlite"):
        store.unlink()
    frozen._SESSIONS.clear()  # a new process: the graph is read from the cache again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="transferlab"):
        second = frozen_features(built.network, images, built.preprocess, key, cache, "onnx", progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(graph) in warnings[0] and "damaged" in warnings[0], warnings
    assert np.array_equal(second.features, first)
    assert graph.read_bytes() != bytes(data)


@pytest.mark.slow
def test_without_onnxruntime_auto_falls_back_in_one_line_and_onnx_is_refused(tmp_path, colour_folder, monkeypatch,
                                                                             caplog):
    monkeypatch.setattr(frozen, "onnx_missing", lambda: "onnxruntime")
    images, built, key, _ = _extractor(tmp_path, colour_folder, per_class=2)
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        for _ in range(2):
            frozen_features(built.network, images, built.preprocess, key, tmp_path / "cache", "auto", progress=False)
    assert len(caplog.records) == 1 and "'onnxruntime' is not installed" in caplog.records[0].getMessage()
    assert [p.stem for p in (tmp_path / "cache" / "features").glob("*.sqlite")] == [key]
    with pytest.raises(TransferlabError, match="--runtime onnx: the 'onnxruntime' package is missing"):
        frozen_features(built.network, images, built.preprocess, key, tmp_path / "cache", "onnx", progress=False)


@pytest.mark.slow
def test_a_graph_that_cannot_be_made_gives_way_to_pytorch_and_is_not_tried_again(tmp_path, colour_folder,
                                                                               monkeypatch, caplog):
    calls = []

    def fails(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(frozen, "exporters", lambda what: (fails, fails))
    images, built, key, _ = _extractor(tmp_path, colour_folder, per_class=2)
    with caplog.at_level(logging.INFO, logger="transferlab"):
        got = frozen_features(built.network, images, built.preprocess, key, tmp_path / "cache", "auto",
                              progress=False)
    assert got.computed == len(images) and len(calls) == 2  # each exporter tried once
    assert len(FeatureStore.for_extractor(key, tmp_path / "cache").get_many([im.key for im in images])) == len(images)
    lines = [r.getMessage() for r in caplog.records if r.name == "transferlab"]
    assert len(lines) == 1 and "unsupported operator" in lines[0] and "PyTorch" in lines[0]
    monkeypatch.setattr(frozen, "_FAILED", {})  # a new process: the record in the cache says it
    frozen_features(built.network, images, built.preprocess, key, tmp_path / "cache", "auto", progress=False)
    assert len(calls) == 2


@pytest.mark.slow
def test_runtime_option_is_checked_and_a_features_run_agrees_across_runtimes(tmp_path, colour_folder, capsys):
    data = colour_folder(tmp_path / "c", per_class=8)
    base = ["-q", "train", str(data), "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
            "--strategy", "features", "--weights", "none", "--image-size", "32", "--backbone", "mobilenetv2_050"]
    assert main([*base, "--runtime", "onnxx"]) == 2
    assert "--runtime 'onnxx' is not known (did you mean onnx?)" in capsys.readouterr().err
    assert main([*base, "--runtime", "torch", "--name", "torch"]) == 0
    assert main([*base, "--runtime", "onnx", "--name", "onnx"]) == 0
    import json

    scores = [json.loads((tmp_path / "runs" / n / "metrics.json").read_text()) for n in ("torch", "onnx")]
    split = scores[0]["score_split"]
    assert scores[0][split]["accuracy"] == scores[1][split]["accuracy"]


@pytest.mark.slow
def test_the_last_sessions_are_kept_so_image_by_image_prediction_reads_no_graph(tmp_path, monkeypatch):
    built = _small()
    first = frozen.frozen_pass(built.network, 64, "a", "onnx", tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(frozen, "_graph", lambda *args: pytest.fail("the graph was read again"))
        assert frozen.frozen_pass(built.network, 64, "a", "onnx", tmp_path) is first
    for key in ("b", "c"):
        frozen.frozen_pass(built.network, 64, key, "onnx", tmp_path)
    assert ("a", str(tmp_path)) not in frozen._SESSIONS and len(frozen._SESSIONS) == frozen.KEEP_SESSIONS


@pytest.mark.slow
def test_a_cut_network_runs_in_onnxruntime_as_in_pytorch(tmp_path):
    """The prefix cache's frozen front (the packaged Lite0 up to its last block stage) through
    its graph gives PyTorch's activations, and a second build reads the kept graph."""
    from transferlab.models.stages import module_chain
    from transferlab.training.prefix_cache import Prefix, _run

    built = build_model(ModelSpec("tf_efficientnet_lite0", strategy="finetune", num_classes=3))
    network = built.network.eval()
    chain = module_chain(network.backbone)
    cut = [name for name, _ in chain].index("blocks.5")
    prefix = Prefix(network, chain[:cut])
    pixels = torch.randint(0, 256, (4, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    made = frozen.whole_pass(prefix, 224, frozen.EXPORT_PAYS_BACK, "auto", tmp_path / "cache")
    assert made.runtime == "onnx"
    with torch.inference_mode():
        expected = _run(chain[:cut], network.normalize(pixels)).numpy()
    got = made(pixels)
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    frozen._SESSIONS.clear()  # another process: one image is enough, the graph is kept
    assert frozen.whole_pass(prefix, 224, 1, "auto", tmp_path / "cache").runtime == "onnx"
    assert frozen.whole_pass(prefix, 224, 1, "auto", tmp_path / "elsewhere").runtime == "torch"


@pytest.mark.slow
def test_prediction_runs_the_network_in_onnxruntime_when_its_export_pays_back(tmp_path, colour_folder, monkeypatch):
    from transferlab.inference.probabilities import predict_pixels

    images = _refs(colour_folder(tmp_path / "c", per_class=3, size=40))
    built = _small()
    network, pre = built.network.eval(), built.preprocess
    cache = tmp_path / "cache"
    crops = [pre.center_crop(p) for _, pixels, _ in iter_decoded(images, pre.resize_size, pre.interpolation, 32)
             for p in pixels]
    with torch.inference_mode():
        today = torch.softmax(network.to(memory_format=torch.channels_last)(to_batch(crops)).float(), 1).numpy()
    # Fewer images than pay back an export, nothing kept: PyTorch, exactly today's probabilities.
    few, ok, _ = predict_pixels(network, images, pre, runtime="auto", cache=cache)
    assert ok.all() and np.array_equal(few, today) and not (cache / "onnx").exists()
    torch_only, _, _ = predict_pixels(network, images, pre, runtime="torch", cache=cache)
    assert np.array_equal(torch_only, today)
    # Asked for, or enough images: onnxruntime, within 1e-5, its graph kept for the next call.
    made, ok, _ = predict_pixels(network, images, pre, runtime="onnx", cache=cache)
    assert ok.all() and np.abs(made - today).max() <= 1e-5
    assert len(list((cache / "onnx").glob("net-*.onnx"))) == 1
    frozen._SESSIONS.clear()
    kept, _, _ = predict_pixels(network, images, pre, runtime="auto", cache=cache)
    assert np.array_equal(kept, made)
    monkeypatch.setattr(frozen, "EXPORT_PAYS_BACK", 4)
    frozen._SESSIONS.clear()
    assert np.array_equal(predict_pixels(network, images, pre, runtime="auto", cache=tmp_path / "other")[0], made)
    assert list((tmp_path / "other" / "onnx").glob("net-*.onnx"))
    # Another network (trained further) never meets that graph.
    with torch.no_grad():
        list(network.parameters())[-1].add_(0.5)
    moved, _, _ = predict_pixels(network, images, pre, runtime="onnx", cache=cache)
    assert len(list((cache / "onnx").glob("net-*.onnx"))) == 2 and not np.allclose(moved, made)


@pytest.mark.slow
def test_the_predict_command_and_its_runtime_option(tmp_path, colour_folder, capsys):
    data, run = _tiny_run(tmp_path, colour_folder)
    cache = tmp_path / "cache"
    capsys.readouterr()
    rows = {}
    for runtime in ("torch", "onnx"):
        assert main(["-q", "predict", str(run), str(data), "--format", "json", "--runtime", runtime,
                     "--cache-dir", str(cache)]) == 0
        import json

        rows[runtime] = json.loads(capsys.readouterr().out)["predictions"]
    assert [r["top"][0]["class"] for r in rows["torch"]] == [r["top"][0]["class"] for r in rows["onnx"]]
    assert max(abs(a["top"][0]["probability"] - b["top"][0]["probability"])
               for a, b in zip(rows["torch"], rows["onnx"])) <= 1e-5
    with pytest.raises(SystemExit) as stopped:
        main(["-q", "predict", str(run), str(data), "--runtime", "tpu"])
    assert stopped.value.code == 2
    assert "--runtime" in capsys.readouterr().err


def test_int8_features_are_cached_under_their_own_graph(tmp_path, colour_folder, monkeypatch):
    images, built, key, cache = _extractor(tmp_path, colour_folder, per_class=4)
    fp32 = frozen_features(built.network, images, built.preprocess, key, cache, "onnx", progress=False).features
    int8 = frozen_features(built.network, images, built.preprocess, key, cache, "onnx-int8", progress=False)
    assert int8.computed == len(images) and int8.features.shape == fp32.shape and np.isfinite(int8.features).all()
    assert not np.array_equal(int8.features, fp32)
    # Close to the fp32 features as a whole, not within any cache tolerance.
    cosine = (int8.features * fp32).sum(1) / (np.linalg.norm(int8.features, axis=1) * np.linalg.norm(fp32, axis=1))
    assert cosine.min() > 0.9, cosine
    import json

    record = json.loads((cache / "onnx" / f"{key}-int8.json").read_text())
    assert record["calibration_images"] == len(images)
    digest = frozen._SESSIONS[(f"{key}-int8", str(cache), None)].digest
    stems = {p.stem for p in (cache / "features").glob("*.sqlite")}
    assert stems == {frozen.runtime_key(key, "onnx"), frozen.runtime_key(key, f"onnx-int8:{digest}")}
    # Another process: the kept int8 graph and its features are read back, nothing quantized again.
    frozen._SESSIONS.clear()
    from transferlab.runtime import quantize

    monkeypatch.setattr(quantize, "quantize_int8", lambda *a: pytest.fail("quantized again"))
    again = frozen_features(built.network, images, built.preprocess, key, cache, "onnx-int8", progress=False)
    assert again.cached == len(images) and np.array_equal(again.features, int8.features)
    with pytest.raises(TransferlabError, match="onnx-int8 runs on a CPU"):
        frozen.resolve_runtime("onnx-int8", "cuda:0")


@pytest.mark.slow
def test_export_quantize_int8(tmp_path, colour_folder, capsys):
    import onnxruntime as ort

    from transferlab.inference.export import export, read_metadata

    data, run = _tiny_run(tmp_path, colour_folder)
    capsys.readouterr()
    assert main(["-q", "export", str(run), "--quantize", "int8", "--calibration", str(data)]) == 0
    said = capsys.readouterr().out
    assert "int8 written to" in said and "top class kept on" in said
    path = run / "model.int8.onnx"
    meta = read_metadata(path)
    assert meta["classes"] == sorted(p.name for p in data.iterdir()) and "int8" in meta["quantization"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    proba = session.run(None, {"pixels": np.full((2, 3, 64, 64), 128.0, np.float32)})[0]
    assert proba.shape == (2, len(meta["classes"])) and np.allclose(proba.sum(1), 1, atol=1e-3)
    assert not (run / "model.onnx").exists()  # the fp32 file stays in memory
    with pytest.raises(TransferlabError, match="--quantize int8 writes ONNX"):
        export(run, "torchscript", quantize="int8", calibration=[str(data)])
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(data), "/nowhere"))
    with pytest.raises(TransferlabError, match="--calibration"):
        export(run, quantize="int8", force=True)


@pytest.mark.slow
def test_a_session_holds_no_memory_arena():
    """With an arena alive beside it PyTorch trained 1.45x slower in the same process (a finetune
    after its prefix cache was built through onnxruntime)."""
    built = _small()
    made = frozen.frozen_pass(built.network, 64, "arena", "onnx")
    assert made.session.get_session_options().enable_cpu_mem_arena is False
