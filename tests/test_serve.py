"""`transferlab serve RUN`: a real server on a free localhost port answers like `transferlab
predict`, refuses bad uploads with a 4xx and goes on serving, batches concurrent requests, serves
the ONNX export, stops on Ctrl-C in one line, and its page classifies and explains a photo in a
real browser."""

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from browser import Browser
from PIL import Image

import transferlab

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def run(small_set, tmp_path_factory):
    """A features run of the packaged backbone on twenty real ants and bees."""
    root = tmp_path_factory.mktemp("serve")
    return transferlab.train(small_set, strategy="features", out=root / "runs", name="ants-bees",
                             progress=False).path


@pytest.fixture(scope="module")
def photos(hymenoptera, tmp_path_factory) -> list[Path]:
    """Photos the run never saw, of several sizes, and one PNG with transparency."""
    root = tmp_path_factory.mktemp("photos")
    files = [f for cls in ("ants", "bees") for f in sorted((hymenoptera / "val" / cls).glob("*.jpg"))[:3]]
    with Image.open(files[0]) as img:
        rgba = img.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    rgba.save(root / "transparent.png")
    return files + [root / "transparent.png"]


class Server:
    def __init__(self, run: Path, *options: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "transferlab", "-q", "serve", str(run), "--port", "0", "--no-access-log",
             *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        self.log: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT_S
        self.url = None
        while self.url is None:
            line = self.process.stdout.readline()
            self.log.append(line)
            found = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
            if found:
                self.url = found[1]
            elif (not line and self.process.poll() is not None) or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the server did not start:\n" + "".join(self.log))
        self.client = httpx.Client(base_url=self.url, timeout=60)
        while True:
            try:
                if self.client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise AssertionError("the server never answered /health:\n" + "".join(self.log))
            time.sleep(0.2)

    def stop(self) -> str:
        """Ctrl-C, as a terminal sends it (SIGINT to the server's whole process group): the log."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        rest = self.process.stdout.read()
        self.process.stdout.close()
        return "".join(self.log) + rest


@pytest.fixture(scope="module")
def server(run):
    s = Server(run, "--max-files", "4", "--max-mb", "2", "--max-pixels", "1000000")
    yield s
    s.client.close()
    s.stop()


def files_part(paths):
    return [("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]


def by_name(predictions):
    return {p["name"]: {t["class"]: t["probability"] for t in p["top"]} for p in predictions}


def expected(run, photos, tta=False):
    result = transferlab.predict(run, [str(p) for p in photos], top_k=2, tta=tta, progress=False)
    return {Path(p["path"]).name: {t["class"]: t["probability"] for t in p["top"]} for p in result["predictions"]}


def assert_close(got: dict, want: dict, tolerance: float):
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].keys() == want[name].keys(), name
        for cls, p in want[name].items():
            assert abs(got[name][cls] - p) <= tolerance, (name, cls, got[name][cls], p)


def test_predictions_equal_transferlab_predict(server, run, photos):
    want = expected(run, photos)
    reply = server.client.post("/predict", files=files_part(photos[:4]), params={"top_k": 2})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [p["name"] for p in body["predictions"]] == [p.name for p in photos[:4]]
    assert all(len(p["top"]) == 2 and set(p["probabilities"]) == {"ants", "bees"} for p in body["predictions"])
    got = by_name(body["predictions"])
    # the rest as base64 JSON, and one image as a raw image/* body
    images = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in photos[4:6]]
    reply = server.client.post("/predict", json={"images": images, "top_k": 2})
    assert reply.status_code == 200, reply.text
    got.update(by_name(reply.json()["predictions"]))
    reply = server.client.post("/predict?top_k=2", content=photos[6].read_bytes(), headers={"content-type": "image/png"})
    assert reply.status_code == 200, reply.text
    got[photos[6].name] = by_name(reply.json()["predictions"])["image"]
    assert_close(got, want, 1e-5)
    want_tta = expected(run, photos[:2], tta=True)
    reply = server.client.post("/predict", files=files_part(photos[:2]), data={"top_k": "2", "tta": "true"})
    assert reply.status_code == 200 and reply.json()["tta"] is True
    assert_close(by_name(reply.json()["predictions"]), want_tta, 1e-5)
    assert want_tta != want  # the views were averaged, not just the centre crop


def test_bad_uploads_get_a_4xx_naming_the_problem_and_the_server_goes_on(server, photos, tmp_path):
    good = photos[0].read_bytes()
    big = io.BytesIO()
    Image.new("RGB", (1200, 1000), (200, 30, 30)).save(big, format="PNG")  # 1.2 MP > --max-pixels 1000000
    cases = [
        (dict(files=[("file", ("notes.txt", b"just some text", "text/plain"))]), 422, "'notes.txt': not an image"),
        (dict(files=[("file", ("cut.jpg", good[: len(good) // 2], "image/jpeg"))]), 422, "'cut.jpg': truncated"),
        (dict(files=[("file", ("empty.jpg", b"", "image/jpeg"))]), 422, "'empty.jpg' is empty"),
        (dict(files=[("file", ("huge.png", big.getvalue(), "image/png"))]), 413, "'huge.png': decompression bomb"),
        (dict(files=[("file", ("junk.bin", os.urandom(3 * 2**20), "image/jpeg"))]), 413, "--max-mb"),
        (dict(files=files_part(photos[:5])), 413, "5 images in one request: at most 4 (the server's --max-files)"),
        (dict(files=files_part(photos[:7])), 413, "7 images in one request: at most 4 (the server's --max-files)"),
        (dict(files=[("file", (f"{k}.jpg", b"x")) for k in range(40)]), 413, "40 images in one request: at most"),
        (dict(files=files_part(photos[:1]), params={"topk": 2}), 400, "unknown parameter 'topk' (did you mean 'top_k'?)"),
        (dict(files=files_part(photos[:1]), params={"top_k": 0}), 400, "top_k=0 must be at least 1"),
        (dict(files=files_part(photos[:1]), params=[("top_k", 1), ("top_k", 2)]), 400, "top_k is given twice"),
        (dict(files=files_part(photos[:1]), data={"top_k": ["1", "2"]}), 400, "top_k is given twice"),
        (dict(files=files_part(photos[:1]), data={"tta": "true"}, params={"tta": "false"}), 400,
         "tta is given twice"),
        (dict(content=b'{"images": [], "top_k": 1, "top_k": 2}', headers={"content-type": "application/json"}),
         400, "top_k is given twice"),
        (dict(files=files_part(photos[:1]), params={"tta": "maybe"}), 400, "tta='maybe' is not a boolean"),
        (dict(json={"images": ["%%% not base64"]}), 400, "images[0]: not valid base64"),
        (dict(json={"images": 5}), 400, "\"images\" must be a list of base64 strings or of {\"name\", \"data\"} "
                                        "objects, not a number"),
        (dict(json={"images": {}}), 400, "\"images\" must be a list of base64 strings"),
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "content type 'text/plain'"),
        (dict(data={"top_k": "1"}), 400, "no image in the request"),
        (dict(content=b"no parts here", headers={"content-type": "multipart/form-data; boundary=x"}), 400,
         "the multipart body could not be read"),
    ]
    for request, status, message in cases:
        reply = server.client.post("/predict", **request)
        assert reply.status_code == status, (message, reply.status_code, reply.text)
        body = reply.json()
        assert body["status"] == status and message in body["error"], (message, body)
        assert "\n" not in body["error"]
    assert server.client.get("/predict").status_code == 405
    assert server.client.get("/nowhere").json()["error"].startswith("no such endpoint: /nowhere")
    reply = server.client.post("/predict", files=files_part(photos[:1]))
    assert reply.status_code == 200 and reply.json()["predictions"][0]["top"][0]["class"] in ("ants", "bees")
    health = server.client.get("/health").json()
    assert health["status"] == "ok" and health["errors"] >= len(cases)


def test_top_k_is_clamped_to_the_classes_in_predict_and_serve(server, run, photos, capsys):
    from transferlab.cli import main

    reply = server.client.post("/predict", files=files_part(photos[:1]), params={"top_k": 10000})
    assert reply.status_code == 200, reply.text
    assert [len(p["top"]) for p in reply.json()["predictions"]] == [2]  # both classes, as a pipeline's top_k
    reply = server.client.post("/predict", files=files_part(photos[:1]), params={"top_k": -3})
    assert reply.status_code == 400 and reply.json()["error"].startswith("top_k=-3 must be at least 1")
    assert main(["-q", "predict", str(run), str(photos[0]), "--top-k", "50", "--format", "json"]) == 0
    assert [len(p["top"]) for p in json.loads(capsys.readouterr().out)["predictions"]] == [2]
    assert main(["-q", "predict", str(run), str(photos[0]), "--top-k", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --top-k 0 must be at least 1") and err.count("\n") == 1, err


def test_concurrent_requests_are_batched_and_answered_alike(server, photos):
    single = {p.name: server.client.post("/predict", files=files_part([p])).json()["predictions"][0]["probabilities"]
              for p in photos[:4]}
    before = server.client.get("/health").json()

    def ask(path):
        with httpx.Client(base_url=server.url, timeout=60) as client:
            return path.name, client.post("/predict", files=files_part([path])).json()["predictions"][0]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, photos[:4] * 4))
    for name, prediction in answers:
        for cls, p in single[name].items():
            assert abs(prediction["probabilities"][cls] - p) <= 1e-5
    after = server.client.get("/health").json()
    images, batches = after["images"] - before["images"], after["batches"] - before["batches"]
    assert images == 16
    assert batches < images  # some requests shared a forward pass


def test_explain_returns_a_gradcam_png_of_the_predicted_or_asked_class(server, photos):
    data = photos[3].read_bytes()
    predicted = server.client.post("/predict", files=[("file", ("b.jpg", data))]).json()["predictions"][0]["top"][0]
    reply = server.client.post("/explain", files=[("file", ("b.jpg", data))])
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
    assert reply.headers["x-class"] == predicted["class"]
    assert abs(float(reply.headers["x-probability"]) - predicted["probability"]) < 1e-5
    with Image.open(io.BytesIO(reply.content)) as img:
        assert img.size == (224, 224) and img.mode == "RGB"
    other = "ants" if predicted["class"] == "bees" else "bees"
    reply = server.client.post("/explain", files=[("file", ("b.jpg", data))], params={"class": other})
    assert reply.status_code == 200 and reply.headers["x-class"] == other
    reply = server.client.post("/explain", files=[("file", ("b.jpg", data))], params={"class": "wasps"})
    assert reply.status_code == 400 and "'wasps' is not a class" in reply.json()["error"]
    reply = server.client.post("/explain", files=files_part(photos[:2]))
    assert reply.status_code == 400 and "one image" in reply.json()["error"]


def test_metadata_describes_the_run(server, run):
    meta = server.client.get("/metadata").json()
    metrics = json.loads((run / "metrics.json").read_text())
    assert meta["classes"] == ["ants", "bees"] and meta["input_size"] == 224
    assert meta["backbone"] == "tf_efficientnet_lite0" and meta["strategy"] == "features"
    assert meta["score"]["accuracy"] == metrics["test"]["accuracy"] and meta["score"]["split"] == "test"
    assert meta["transferlab_version"] == transferlab.__version__ and meta["engine"] == "onnx"
    assert meta["limits"] == {"max_files": 4, "max_bytes": 2 * 2**20, "max_pixels": 1_000_000}
    page = server.client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "http" not in re.sub(r"http-equiv", "", page.text)  # nothing fetched from elsewhere
    for asset in ("/static/app.js", "/static/style.css"):
        reply = server.client.get(asset)
        assert reply.status_code == 200 and "https://" not in reply.text


NOT_MULTIPART = dict(content=b"no parts here", headers={"content-type": "multipart/form-data; boundary=x"})


def assert_stopped_by_ctrl_c(server: Server, log: str, line: str):
    """Ctrl-C is how a server is stopped: exit 0 and one line saying so, and no parser noise
    from the bad multipart body it was sent."""
    assert server.process.returncode == 0, log
    assert [s for s in log.splitlines() if s.startswith("serve: stopped")] == [line], log
    assert "interrupted" not in log and "Traceback" not in log and "boundary" not in log.lower(), log


@pytest.mark.slow
def test_ctrl_c_stops_the_server_in_one_line(run, photos):
    alone = Server(run)
    try:
        assert alone.client.post("/predict", **NOT_MULTIPART).status_code == 400
        assert alone.client.post("/predict", files=files_part(photos[:1])).status_code == 200
    finally:
        alone.client.close()
        log = alone.stop()
    assert_stopped_by_ctrl_c(alone, log, "serve: stopped (2 requests served)")


@pytest.mark.slow
def test_onnx_serving_in_two_workers_agrees_with_pytorch_and_stops_on_ctrl_c(server, run, photos):
    onnx = Server(run, "--onnx", "--workers", "2")
    try:
        assert (run / "model.onnx").is_file()  # exported (and checked) once, before the workers start
        pids = set()
        for part in (photos[:4], photos[4:], photos[:2], photos[2:4], photos[4:6], photos[6:]):
            want = by_name(server.client.post("/predict", files=files_part(part)).json()["predictions"])
            with httpx.Client(base_url=onnx.url, timeout=60) as fresh:  # a new connection each time
                reply = fresh.post("/predict", files=files_part(part))
                assert reply.status_code == 200 and reply.json()["engine"] == "onnx"
                assert_close(by_name(reply.json()["predictions"]), want, 1e-4)
                pids.add(fresh.get("/health").json()["pid"])
        for _ in range(40):  # the kernel hands each new connection to either worker
            if len(pids) == 2:
                break
            with httpx.Client(base_url=onnx.url, timeout=60) as fresh:
                pids.add(fresh.get("/health").json()["pid"])
        assert len(pids) == 2  # both workers answered, each with its own model
        assert onnx.client.get("/metadata").json()["engine"] == "onnx"
        assert onnx.client.post("/explain", files=files_part(photos[:1])).status_code == 200
        assert onnx.client.post("/predict", **NOT_MULTIPART).status_code == 400
    finally:
        onnx.client.close()
        log = onnx.stop()
    assert_stopped_by_ctrl_c(onnx, log, "serve: stopped (2 workers)")


def test_bad_options_fail_in_one_line_before_loading(run, tmp_path, capsys):
    from transferlab.cli import main

    for argv, message in [([str(tmp_path / "missing")], "is not a folder"),
                          ([str(tmp_path)], "has no model.json"),
                          ([str(run), "--workers", "0"], "--workers 0 must be at least 1"),
                          ([str(run), "--port", "70000"], "--port 70000 is not a port"),
                          ([str(run), "--max-files", "0"], "--max-files 0 is outside 1..64")]:
        assert main(["-q", "serve", *argv]) != 0
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["-q", "serve", str(run), "--port", str(busy.getsockname()[1])]) != 0
        err = capsys.readouterr().err.strip()
        assert "cannot listen on 127.0.0.1" in err and "another --port" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_the_page_classifies_and_explains_a_photo_in_chromium(chromium, server, hymenoptera, tmp_path):
    photo = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[0]
    answer = server.client.post("/predict", files=files_part([photo])).json()["predictions"][0]
    predicted = answer["top"][0]["class"]
    # A run of 20 photos finds many new ones unlike all of its own: the page then says so first.
    expected = (f"unknown (distance {answer['unknown_score']:.3f}); closest: {predicted}" if answer.get("unknown")
                else predicted)
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.open(server.url + "/")
        browser.wait_for("document.querySelector('#run-name')?.textContent === 'ants-bees'")
        assert "test accuracy" in browser.evaluate("document.querySelector('#run-summary').textContent")
        browser.upload("#files", photo)
        shown = browser.wait_for("document.querySelector('.result .top1')?.textContent")
        assert shown == expected
        bars = browser.evaluate("document.querySelectorAll('.result .bars li').length")
        assert bars == 2
        share = browser.evaluate("document.querySelector('.result .fill').offsetWidth"
                                 " / document.querySelector('.result .track').offsetWidth")
        assert abs(share - answer["top"][0]["probability"]) < 0.02  # the bar is drawn to scale
        size = browser.wait_for("(() => { const h = document.querySelector('.result .heatmap');"
                                " return h && h.complete && h.naturalWidth ? [h.naturalWidth, h.naturalHeight]"
                                " : null; })()")
        assert size == [224, 224]
        assert browser.evaluate("document.querySelector('.result .heatmap').src").startswith("blob:")
        assert browser.evaluate("document.querySelector('.result .error').textContent") == ""
        shot = browser.screenshot(ARTIFACTS / "serve-page.png")
    finally:
        browser.close()
    with Image.open(shot) as img:
        rgb = np.asarray(img.convert("RGB"))
    assert rgb.shape[1] == 1200 and len(np.unique(rgb[::4, ::4].reshape(-1, 3), axis=0)) > 200
    shutil.copy(shot, tmp_path / shot.name)


def test_a_fitted_classifier_is_served_in_process_without_reloading(run, photos):
    from starlette.testclient import TestClient

    from transferlab.serving.app import create_app

    clf = transferlab.ImageClassifier.load(run)
    want = {p.name: row for p, row in zip(photos[:3], clf.predict_proba([str(p) for p in photos[:3]]))}
    with TestClient(create_app(clf)) as client:
        assert client.get("/metadata").json()["run"] == "ImageClassifier"
        reply = client.post("/predict", files=[("file", (f"{k}.jpg", b"x")) for k in range(20)])
        assert reply.status_code == 413  # the default limit, counted past Starlette's own
        assert reply.json()["error"].startswith("20 images in one request: at most 16 (the server's --max-files)")
        for _ in range(2):
            reply = client.post("/predict", files=files_part(photos[:3]))
            assert reply.status_code == 200
            for p in reply.json()["predictions"]:
                got = [p["probabilities"][c] for c in clf.class_names()]
                assert np.abs(np.array(got) - want[p["name"]]).max() <= 1e-5
