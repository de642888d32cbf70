"""Export a trained run to ONNX or TorchScript for deployment without transferlab.

The exported graph takes float32 RGB pixels in 0..255, shape (N, 3, S, S) with S the run's
input size (resize the shorter side to `resize_size`, centre-crop S x S, as in the metadata), and
returns class *probabilities* (softmax included): a deployment then needs neither the mean and std
(normalisation is inside the graph) nor a softmax of its own. The batch axis is dynamic.

Every export is run before it is kept (onnxruntime for ONNX, torch.jit.load for TorchScript) and
compared with the PyTorch network; a file that disagrees is deleted, never left in place.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..common.atomic import check_writable, replacing
from ..common.run_files import claim_output
from ..data.cache import iter_decoded
from ..data.types import ImageRef
from ..errors import TransferlabError
from ..models import saved
from ..models.network import to_batch
from ..models.same_padding import freeze_same_padding
from ..runtime.onnx_graph import onnx_model, quiet_known_warnings, require
from ..trust.unknown import load_detector

log = logging.getLogger("transferlab")

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "pixels", "probabilities"
INPUT_RANGE = "0..255 RGB, normalised inside"
METADATA_FILE = "transferlab.json"  # the TorchScript extra file
EXPORT_FORMAT = 1


UNKNOWN_OUTPUTS = ("unknown_score", "unknown")


class Probabilities(nn.Module):
    """The network followed by softmax: what the exported file computes; with the run's
    unknown-image detector, also each image's distance to its nearest training image and whether
    it is beyond the run's threshold (the decision `predict --reject` makes)."""

    def __init__(self, network: nn.Module, unknown: nn.Module | None = None):
        super().__init__()
        self.network = network
        self.unknown = unknown

    def forward(self, pixels: torch.Tensor):
        proba = torch.softmax(self.network(pixels).float(), dim=1)
        if self.unknown is None:
            return proba
        distance, beyond = self.unknown(pixels)
        return proba, distance, beyond


def export(run: str | os.PathLike, format: str = "onnx", out: str | os.PathLike | None = None,
           check_images: list | None = None, force: bool = False, quantize: str | None = None,
           calibration: list | None = None) -> dict:
    """Export `run`'s network (with softmax) to `run/model.onnx` or `run/model.pt` (TorchScript).

    `quantize="int8"`: the ONNX file, once checked, is statically quantized (runtime/quantize.py)
    with its activation ranges calibrated on up to 256 of `calibration` (image paths, folders or
    globs; default the run's own data when its folder is still there) and written to
    `run/model.int8.onnx`; its largest probability difference from PyTorch and its top-1
    agreement on the calibration images are reported (int8 is not within the fp32 tolerance).

    `out` is the file to write (a folder gets the default file name); a file that exists there is
    replaced only with `force`, and a run's own files never. `check_images` (paths or
    ImageRefs) are preprocessed as for prediction and, with random pixel batches, run through both
    the exported file and the PyTorch network. Returns {path, format, max_abs_diff,
    inputs_checked, metadata, exporter}.
    """
    fmt = str(format).strip().lower()
    if fmt not in FORMATS:
        raise TransferlabError(f"export: format '{format}' is not supported: choose one of "
                               f"{', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise TransferlabError(f"export: --quantize '{quantize}' is not supported: int8 is the one there is")
    if quantize and fmt != "onnx":
        raise TransferlabError("export: --quantize int8 writes ONNX: drop --format torchscript")
    run = Path(run)
    calibration_files = _calibration_files(run, calibration) if quantize else []
    target = _target_path(run, fmt, out, quantize)
    named = out is not None  # a path the user chose: never replaced unless asked
    if named:
        claim_output(target, force)
    model = saved.load(run)
    detector = load_detector(run)
    check_writable(target.parent)  # before the minutes of exporting
    metadata = export_metadata(model, detector)
    # Batch 2 to trace, other batch sizes to check: a batch size baked into the graph shows up.
    example = _random_pixels(2, model.preprocess.input_size, seed=1)
    freeze_same_padding(model.network.eval(), example)  # the file only ever sees this input size
    unknown = None
    if detector is not None:
        unknown = detector.module()
        freeze_same_padding(unknown, example)
    module = Probabilities(model.network, unknown).eval()
    checks = _check_batches(model.preprocess, check_images)
    checked = sum(len(x) for x in checks)
    with replacing(target, overwrite=force or not named) as tmp:
        if fmt == "onnx":
            data, exporter = _onnx_bytes(module, example, metadata)
            tmp.write_bytes(data)
            run_file = _onnx_runner(tmp)
        else:
            _write_torchscript(module, example, metadata, tmp)
            exporter = "torch.jit.trace"
            run_file = _torchscript_runner(tmp)
        agreement = None
        diff = _max_abs_diff(module, run_file, checks)
        if quantize and diff <= TOLERANCE:  # the fp32 graph checked first, then quantized
            data, diff, agreement, checked = _quantized(module, data, model.preprocess, calibration_files, checks,
                                                        metadata)
            tmp.write_bytes(data)
            if not diff <= 1.0:  # NaN, or not probabilities at all
                raise TransferlabError(f"export: the int8 file gives no probabilities (largest difference "
                                       f"{diff:.3g}); nothing was written: export without --quantize")
        elif not diff <= TOLERANCE:  # also catches NaN
            raise TransferlabError(
                f"export: the {fmt} file disagrees with the PyTorch network (largest probability "
                f"difference {diff:.3g} > {TOLERANCE:g}); nothing was written: report this with the "
                f"backbone '{metadata['backbone']}'")
    log.info("exported %s (%s, max |diff| %.2g over %d inputs)", target, exporter, diff, checked)
    return {"path": target, "format": fmt, "max_abs_diff": float(diff), "inputs_checked": checked,
            "metadata": metadata, "exporter": exporter, "quantize": quantize, "top1_agreement": agreement}


def export_metadata(model: saved.SavedModel, detector=None) -> dict:
    """What a deployment needs to feed the exported file and read its outputs."""
    pre = model.preprocess
    unknown = {} if detector is None else {
        "outputs": [OUTPUT_NAME, *UNKNOWN_OUTPUTS],
        "unknown_score": "1 - cosine similarity to the nearest training image (packaged Lite0 features)",
        "unknown": f"unknown_score > unknown_threshold: of no class the model knows (keeps {detector.keep:.0%} "
                   "of known images)",
        "unknown_threshold": detector.threshold}
    return {
        "transferlab_export_format": EXPORT_FORMAT,
        "classes": list(model.classes),
        "input_size": pre.input_size,
        "resize_size": pre.resize_size,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "interpolation": pre.interpolation,
        "crop_pct": pre.crop_pct,
        "input_range": INPUT_RANGE,
        "input_name": INPUT_NAME,
        "input_shape": ["batch", 3, pre.input_size, pre.input_size],
        "output_name": OUTPUT_NAME,
        "output": "probabilities (softmax over classes, in the order of 'classes')",
        "backbone": model.spec.backbone,
        "strategy": model.spec.strategy,
        "transferlab_version": __version__,
        **unknown,
    }


def read_metadata(path: str | os.PathLike) -> dict:
    """The transferlab metadata of an exported ONNX or TorchScript file, values decoded."""
    path = Path(path)
    if not path.is_file():
        raise TransferlabError(f"'{path}' does not exist: pass a file written by transferlab export")
    if zipfile.is_zipfile(path):
        # A TorchScript file is a zip archive; reading the extra file avoids loading the model.
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
            if not names:
                raise TransferlabError(f"'{path}' has no transferlab metadata: it was not written by "
                                       "transferlab export")
            return json.loads(archive.read(names[0]))
    onnx = require("onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise TransferlabError(f"'{path}' is neither an ONNX nor a TorchScript file "
                               f"({type(err).__name__}): pass a file written by transferlab export") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "transferlab_export_format" not in props:
        raise TransferlabError(f"'{path}' has no transferlab metadata: it was not written by "
                               "transferlab export")
    return {k: _json_or_text(v) for k, v in props.items()}


def image_pixels(images: list, preprocess) -> torch.Tensor:
    """Float32 (N, 3, S, S) input of the exported file for image paths or ImageRefs, prepared
    exactly as prediction prepares them (decode, resize the shorter side, centre-crop)."""
    refs = [im if isinstance(im, ImageRef) else ImageRef.from_file(im) for im in images]
    crops = []
    for _, pixels, failed in iter_decoded(refs, preprocess.resize_size, preprocess.interpolation, 32):
        if failed:
            raise TransferlabError(f"check image {failed[0]}: pass readable images")
        crops += [preprocess.center_crop(p) for p in pixels]
    s = preprocess.input_size
    if not crops:
        return torch.zeros(0, 3, s, s)
    return to_batch(crops).float().contiguous()


# -- helpers ---------------------------------------------------------------------------------

def _target_path(run: Path, fmt: str, out, quantize: str | None = None) -> Path:
    name = FORMATS[fmt].replace(".onnx", f".{quantize}.onnx") if quantize else FORMATS[fmt]
    if out is None:
        return run / name
    out = Path(out)
    return out / name if out.is_dir() else out


def _calibration_files(run: Path, calibration: list | None) -> list[Path]:
    """Up to CALIBRATION_IMAGES image files (a seeded draw) to calibrate an int8 export on."""
    from ..data.sources import gather_files
    from ..runtime.quantize import CALIBRATION_IMAGES

    if not calibration:
        data = _run_data(run)
        if data is None:
            raise TransferlabError("export --quantize int8 needs images to calibrate on: give --calibration with "
                                   "a few hundred training images (files, folders or globs)")
        calibration = [str(data)]
    files = gather_files([str(c) for c in calibration])
    rng = np.random.default_rng(0)
    return [files[i] for i in sorted(rng.choice(len(files), min(CALIBRATION_IMAGES, len(files)), replace=False))]


def _run_data(run: Path) -> Path | None:
    """The image folder the run was trained on, when it is still there."""
    import yaml

    try:
        data = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("data")
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return Path(data) if isinstance(data, str) and Path(data).is_dir() else None


def _quantized(module: nn.Module, fp32: bytes, preprocess, files: list[Path], checks: list[torch.Tensor],
               metadata: dict) -> tuple[bytes, float, float, int]:
    """(the int8 file's bytes, its largest probability difference from PyTorch, the share of the
    calibration images whose top class it keeps, inputs checked)."""
    from ..runtime.quantize import quantize_int8

    pixels = image_pixels(files, preprocess)
    onnx = require("onnx")
    model = onnx.load_from_string(quantize_int8(fp32, pixels.numpy(), INPUT_NAME))
    del model.metadata_props[:]
    for key, value in {**metadata, "quantization": f"int8 static (QDQ), calibrated on {len(pixels)} images"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    data = model.SerializeToString()
    ort = require("onnxruntime")
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    run_file = lambda x: _single(session.run(None, {INPUT_NAME: x.numpy()}))  # noqa: E731
    diff = _max_abs_diff(module, run_file, [*checks, pixels])
    with torch.inference_mode():
        agreement = float((_outputs(module(pixels))[0].argmax(1) == _outputs(run_file(pixels))[0].argmax(1)).mean())
    return data, diff, agreement, sum(len(x) for x in checks) + len(pixels)


def _random_pixels(n: int, size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=gen).float()


def _check_batches(preprocess, check_images) -> list[torch.Tensor]:
    size = preprocess.input_size
    # Saturated images too: the extremes are where a wrong scale or clipping shows first.
    batches = [_random_pixels(3, size, seed=2), torch.full((1, 3, size, size), 255.0)]
    if check_images:
        real = image_pixels(list(check_images), preprocess)
        if len(real):
            batches.append(real)
    return batches


def _max_abs_diff(module: nn.Module, run_file, batches: list[torch.Tensor]) -> float:
    """The largest difference between the file's outputs and PyTorch's (every output: a file with
    the unknown-image outputs is checked on its distances too; its decisions may differ only
    where the distance is within the tolerance of the threshold)."""
    worst = 0.0
    with torch.inference_mode():
        for x in batches:
            expected = _outputs(module(x))
            got = _outputs(run_file(x))
            if len(got) != len(expected) or any(g.shape != e.shape for g, e in zip(got, expected)):
                return float("inf")
            for g, e in zip(got, expected):
                if e.dtype == bool:
                    continue  # the decision: follows from the distance, checked just before
                worst = max(worst, float(np.abs(g.astype(np.float64) - e).max(initial=0.0)))
    return worst


def _outputs(result) -> list[np.ndarray]:
    items = result if isinstance(result, (tuple, list)) else [result]
    return [np.asarray(r.numpy() if isinstance(r, torch.Tensor) else r) for r in items]


def _json_or_text(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value


def _onnx_bytes(module: nn.Module, example: torch.Tensor, metadata: dict) -> tuple[bytes, str]:
    """The serialised ModelProto with the deployment's metadata, and which exporter made it."""
    outputs = [OUTPUT_NAME, *UNKNOWN_OUTPUTS] if getattr(module, "unknown", None) is not None else OUTPUT_NAME
    model, exporter = onnx_model(module, example, INPUT_NAME, outputs)
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    model.doc_string = (f"transferlab {__version__}: {metadata['backbone']} ({metadata['strategy']}); "
                        f"input {INPUT_RANGE}; output class probabilities")
    # Weights stay inside the one file (no external .data beside it): fine below protobuf's 2 GB.
    return model.SerializeToString(), exporter


def _onnx_runner(path: Path):
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: _single(session.run(None, {name: x.numpy()}))


def _write_torchscript(module: nn.Module, example: torch.Tensor, metadata: dict, path: Path) -> None:
    # Tracing, not scripting: timm backbones are not all scriptable, and the check run below
    # catches any input-dependent path the trace froze.
    with quiet_known_warnings(), torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(module, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(metadata)})


def _torchscript_runner(path: Path):
    with quiet_known_warnings():
        loaded = torch.jit.load(str(path), map_location="cpu")
    loaded.eval()
    return lambda x: _single(_outputs(loaded(x)))


def _single(outputs: list):
    """The one output of a file without the unknown-image outputs, else all of them."""
    return outputs[0] if len(outputs) == 1 else outputs
