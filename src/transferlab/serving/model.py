"""The model behind the server: a run loaded once, its images prepared exactly as `predict`
prepares files, class probabilities from PyTorch or the run's verified ONNX export, and Grad-CAM."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import __version__
from ..data.decode import decode
from ..errors import TransferlabError
from ..explain.activations import open_target
from ..explain.gradcam import default_layer, gradcam_with_probabilities
from ..explain.images import overlay
from ..common.paths import cache_root
from ..inference.probabilities import tta_decode_size, tta_views
from ..trust.unknown import load_detector
from ..models import saved
from ..runtime.frozen import EXPORT_PAYS_BACK, resolve_runtime, whole_pass

log = logging.getLogger("transferlab")


@dataclass
class Explained:
    png: bytes
    class_name: str
    probability: float
    layer: str


class ServedModel:
    """One run in memory for the life of the server; `probabilities` is called from one thread."""

    def __init__(self, source, onnx: bool = False, threads: int | None = None, runtime: str = "auto"):
        """`source`: a run directory, or a fitted ImageClassifier (served as it is in memory).
        `onnx`: the run's own export (RUN/model.onnx); else the network runs where `runtime`
        says (runtime/frozen.py: auto is onnxruntime on a CPU, its graph kept in the cache folder)."""
        resolve_runtime(runtime, "cpu")  # an unknown name is refused before the run loads
        cache = cache_root(None)
        if hasattr(source, "network_"):
            cache = cache_root(source.config_.cache_dir)
            if onnx:
                raise TransferlabError("ONNX serving needs a saved run: save the classifier (clf.save(folder)) "
                                       "and serve the folder with onnx=True")
            self.run, self.name, self.metrics = None, type(source).__name__, {}
            classes, self.preprocess, self.spec = source.class_names(), source.preprocess_, source.spec_
            network = source.network_
            self.detector = getattr(source, "unknown_", None)
        else:
            self.run = Path(source)
            loaded = saved.load(self.run)  # checks every file of the run, naming a missing or damaged one
            self.name, self.metrics = self.run.name, _read_metrics(self.run)
            classes, self.preprocess, self.spec = loaded.classes, loaded.preprocess, loaded.spec
            network = loaded.network
            self.detector = load_detector(self.run)
        self.classes = [str(c) for c in classes]
        self.network = network.eval().to(memory_format=torch.channels_last)
        self.threads = threads
        self.engine = "pytorch"
        self._session = self._pass = None
        # The unknown-image detector (an image's distance to its nearest training image), run as
        # `predict --reject` runs it; from the export's own outputs under --onnx.
        self.unknown = self.detector.module() if self.detector is not None and not onnx else None
        if onnx:
            self._session, self.onnx_file = _onnx_session(self.run, self.classes, threads, self.detector)
            self._input = self._session.get_inputs()[0].name
            self.engine = "onnx"
        else:
            # A server answers for long: its graph pays back its export whatever the images.
            made = whole_pass(self.network, self.preprocess.input_size, EXPORT_PAYS_BACK, runtime, cache, "cpu", threads)
            if made.runtime == "onnx":
                self._pass, self.engine = made, "onnx"
        self.layer = default_layer(self.network, self.preprocess.input_size)

    def prepare_thread(self) -> None:
        """Run once on the thread that will call `probabilities`: PyTorch's thread count is set
        per calling thread (OpenMP), and the default there, all cores, ran Lite0 at half speed on
        a 2-core machine next to the decoding threads."""
        if self.threads:
            torch.set_num_threads(self.threads)

    # -- preparing images ----------------------------------------------------------------------

    def views(self, data: bytes, tta: bool, max_pixels: int) -> np.ndarray:
        """(V, S, S, 3) uint8: the eval view, or the TTA views, of one encoded image.
        Raises UnreadableImage."""
        pre = self.preprocess
        if tta:
            pixels = decode(data, tta_decode_size(pre), pre.interpolation, max_pixels=max_pixels)
            return np.stack(tta_views(pixels, pre))
        pixels = decode(data, pre.resize_size, pre.interpolation, max_pixels=max_pixels)
        return pre.center_crop(pixels)[None]

    # -- running the network ---------------------------------------------------------------------

    def probabilities(self, views: np.ndarray) -> np.ndarray:
        """Softmax probabilities (N, classes) float32 of (N, S, S, 3) uint8 views; with an
        unknown-image detector, one more column: each view's distance to its nearest training
        image (`split` parts them)."""
        if self._session is not None:
            x = np.ascontiguousarray(views.transpose(0, 3, 1, 2), dtype=np.float32)
            outputs = self._session.run(None, {self._input: x})
            return outputs[0] if self.detector is None else np.concatenate([outputs[0], outputs[1][:, None]], 1)
        x = torch.from_numpy(views).permute(0, 3, 1, 2)  # NHWC viewed as NCHW: channels_last
        with torch.inference_mode():
            if self._pass is not None:
                proba = torch.softmax(torch.from_numpy(self._pass(x)), 1).numpy()
            else:
                proba = torch.softmax(self.network(x).float(), 1).numpy()
            if self.unknown is None:
                return proba
            distance = self.unknown(x)[0].numpy()
        return np.concatenate([proba, distance[:, None].astype(proba.dtype)], 1)

    def split(self, row: np.ndarray) -> tuple[np.ndarray, float | None]:
        """(class probabilities, distance to the nearest training image or None) of one image's
        row of `probabilities`."""
        if self.detector is None:
            return row, None
        return row[:len(self.classes)], float(row[len(self.classes)])

    def explain(self, data: bytes, class_name: str | None, layer: str | None, alpha: float,
                max_pixels: int) -> Explained:
        """A Grad-CAM overlay PNG of the eval view (always PyTorch: it needs gradients)."""
        target = None
        if class_name is not None:
            if class_name not in self.classes:
                raise TransferlabError(f"class '{class_name}' is not a class of this run: choose one of "
                                       f"{', '.join(self.classes[:20])}")
            target = self.classes.index(class_name)
        name = layer or self.layer
        open_target(self.network, name)  # an unknown layer is refused by name
        view = self.views(data, False, max_pixels)[0]
        heat, cls, probabilities = gradcam_with_probabilities(self.network, view, name, target)
        buffer = io.BytesIO()
        Image.fromarray(overlay(view, heat, alpha)).save(buffer, format="PNG")
        return Explained(buffer.getvalue(), self.classes[cls], float(probabilities[cls]), name)

    # -- describing it -------------------------------------------------------------------------

    def metadata(self) -> dict:
        pre = self.preprocess
        test = self.metrics.get(self.metrics.get("score_split", "test")) or {}
        return {
            "run": self.name,
            "classes": self.classes,
            "input_size": pre.input_size,
            "resize": pre.resize,
            "backbone": self.spec.backbone,
            "strategy": self.spec.strategy,
            "engine": self.engine,
            "explain_layer": self.layer,
            "transferlab_version": __version__,
            "score": {"split": self.metrics.get("score_split"), "accuracy": test.get("accuracy"),
                      "log_loss": test.get("log_loss"), "images": test.get("n")},
            "unknown_threshold": None if self.detector is None else self.detector.threshold,
        }


def _read_metrics(run: Path) -> dict:
    path = run / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a model saved by ImageClassifier.save has no metrics: served without a score


def _onnx_session(run: Path, classes: list[str], threads: int | None, detector=None):
    """An onnxruntime session of RUN/model.onnx, exported (and so verified) first when missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise TransferlabError("--onnx needs onnxruntime: pip install onnx onnxruntime onnxscript") from None
    from ..inference.export import FORMATS, export, read_metadata

    path = run / FORMATS["onnx"]
    if not path.is_file():
        log.info("serve: %s has no ONNX export yet; exporting it (checked against PyTorch)", run)
        export(run, "onnx")
    elif read_metadata(path).get("classes") != classes:
        raise TransferlabError(f"'{path}' does not belong to this run (other classes): delete it and run "
                               f"`transferlab export {run} --format onnx`")
    elif detector is not None and read_metadata(path).get("unknown_threshold") != detector.threshold:
        raise TransferlabError(f"'{path}' was exported without this run's unknown-image detector: delete it and "
                               f"run `transferlab export {run} --format onnx`")
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False  # as runtime/frozen.py's sessions: Grad-CAM trains no slower beside it
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), path
