"""The frozen pass of a network (pixels in, pooled features out, no gradient) in PyTorch or in
onnxruntime. On a CPU onnxruntime runs the same EfficientNet-Lite 3-4 times faster than PyTorch
eager, so `--runtime auto` uses it there. The graph is exported once per extractor and kept in
the cache folder beside the features (`onnx/<key>.json`, naming the graph file by its digest); it
is checked against PyTorch when made and by its SHA-256 whenever it is read, and a file that
fails either is made again, never trusted."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..common.atomic import write_bytes, write_json
from ..config import RUNTIMES
from ..errors import TransferlabError
from ..models.network import Network
from ..models.same_padding import freeze_same_padding
from .onnx_graph import exporters, quiet_known_warnings

log = logging.getLogger("transferlab")

GRAPH_FORMAT = 1  # bump when the exported graph changes, so older files are made again
# Largest difference from PyTorch a graph may show, relative to the largest feature: fp32 kernels
# that sum in another order differ by about 1e-6 of it.
TOLERANCE = 1e-4
INPUT, OUTPUT = "pixels", "features"
KEEP_SESSIONS = 2
_SESSIONS: dict[tuple[str, str], "OnnxPass"] = {}  # the passes last made in this process, oldest first
_FAILED: dict[str, str] = {}  # extractor key -> why its graph could not be made, in this process
# Exporting and checking a whole network's graph costs about what PyTorch takes to run it over 90
# images (Lite0 on 2 cores: 1.2 s against 72 images/s); onnxruntime saves at least 60% of each
# image's forward (2.5-3.5x), so below 90 / 0.6 images a pass whose graph is not kept stays in PyTorch.
EXPORT_IN_FORWARDS = 90
EXPORT_PAYS_BACK = round(EXPORT_IN_FORWARDS / 0.6)


def onnx_missing() -> str | None:
    """The first package the onnxruntime pass needs that is not installed, else None."""
    for name in ("onnxruntime", "onnx", "onnxscript"):
        if importlib.util.find_spec(name) is None:
            return name
    return None


def resolve_runtime(runtime: str, device: str) -> str:
    """'torch', 'onnx' or 'onnx-int8' for a frozen pass on `device`. `auto` is onnx on a CPU where
    the packages are installed (one line otherwise) and torch on an accelerator, where PyTorch is
    the fast one; onnx-int8 (the int8 graph for features, fp32 for whole networks) is a CPU's."""
    if runtime not in RUNTIMES:
        raise TransferlabError(f"--runtime '{runtime}' is not known: choose one of {', '.join(RUNTIMES)}")
    if runtime == "onnx-int8" and str(device) != "cpu":
        raise TransferlabError(f"--runtime onnx-int8 runs on a CPU, not on {device}: give --runtime auto or "
                               "--device cpu")
    if runtime == "torch" or (runtime == "auto" and str(device) != "cpu"):
        return "torch"
    missing = onnx_missing()
    if missing and runtime != "auto":
        raise TransferlabError(f"--runtime {runtime}: the '{missing}' package is missing: pip install onnx "
                               "onnxruntime onnxscript, or give --runtime torch")
    if missing:
        say_once(f"runtime: '{missing}' is not installed: frozen passes run in PyTorch (pip install onnx "
                 "onnxruntime onnxscript for the faster onnxruntime pass)")
        return "torch"
    return "onnx-int8" if runtime == "onnx-int8" else "onnx"


class TorchPass:
    """The frozen pass in PyTorch: eval mode, inference mode, channels_last, on `device`."""

    runtime = "torch"
    speedup = 1.0  # against PyTorch

    def __init__(self, network: Network, device: str = "cpu", whole: bool = False):
        self.network, self.device = network, device
        self.run = network if whole else network.features

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        return self.run(batch).float().cpu().numpy()


class OnnxPass:
    """The frozen pass as an onnxruntime session on the CPU."""

    runtime = "onnx"

    def __init__(self, session, speedup: float):
        self.session = session
        self.speedup = speedup  # PyTorch's seconds per batch over this pass's, measured when exported

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        # torch's conversion of the channels_last uint8 batch is twice numpy's (2.3 against 5 ms for 32 images)
        pixels = batch.cpu().float().contiguous().numpy()
        return self.session.run(None, {INPUT: pixels})[0]


def runtime_key(key: str, runtime: str) -> str:
    """The feature-cache key of features computed by `runtime`. onnxruntime's features differ from
    PyTorch's by about 1e-6 of the largest (not bit for bit, the cache's precision), so they are
    kept apart; PyTorch's keep the key they always had."""
    if runtime == "torch":
        return key
    return hashlib.sha1(f"{key}:{'onnxruntime' if runtime == 'onnx' else runtime}".encode()).hexdigest()[:20]


class NotExportable(Exception):
    """This network's ONNX graph cannot be made, or computes other features than PyTorch."""


def unexportable(key: str, cache: Path | None) -> str | None:
    """Why the graph of extractor `key` could not be made before (kept so that a run does not try
    again), or None."""
    if key in _FAILED:
        return _FAILED[key]
    if cache is None:
        return None
    try:
        record = json.loads((cache / "onnx" / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("format") == GRAPH_FORMAT and record.get("torch") == torch.__version__:
        return record.get("failed")
    return None


def graph_kept(key: str, cache: Path | None) -> bool:
    """Whether a graph of `key` is in this process or has a record in `cache` (checked when read)."""
    if any(kept[:2] == (key, str(cache)) for kept in _SESSIONS):
        return True
    return cache is not None and (cache / "onnx" / f"{key}.json").is_file() and unexportable(key, cache) is None


def frozen_pass(network: Network, input_size: int, key: str, runtime: str, cache: Path | None = None,
                device: str = "cpu", whole: bool = False, threads: int | None = None):
    """A callable from an NCHW uint8 batch to its (N, F) float32 features, or with `whole` to the
    whole network's (N, classes) float32 logits, in `runtime` ('torch' or 'onnx', as resolved).
    `key` names the graph file: the extractor's (PyTorch) key, or `network_key` of a whole
    network; `cache` the cache root (None: the graph is made in memory for this process).
    `threads`: onnxruntime's, else PyTorch's count. NotExportable when the graph cannot be made
    or disagrees with PyTorch; the reason is kept so the next run does not try again."""
    network.eval()
    if runtime == "torch":
        network.to(device).to(memory_format=torch.channels_last)
        return TorchPass(network, device, whole)
    kept = (key, str(cache), threads)
    if kept in _SESSIONS:  # an API user predicting image by image: no graph read per call
        return _SESSIONS[kept]
    try:
        data, speedup = _graph(network, input_size, key, cache, whole)
        made = OnnxPass(_session(data, threads), speedup)
        # The last few only: each session holds its weights (14-30 MB) and arenas.
        while len(_SESSIONS) >= KEEP_SESSIONS:
            del _SESSIONS[next(iter(_SESSIONS))]
        _SESSIONS[kept] = made
        return made
    except NotExportable as err:
        _FAILED[key] = str(err)
        if cache is not None:
            try:
                write_json(cache / "onnx" / f"{key}.json", {"format": GRAPH_FORMAT, "torch": torch.__version__,
                                                            "failed": str(err)})
            except (OSError, TransferlabError):
                pass  # kept for this process only
        raise


def whole_pass(network: nn.Module, input_size: int, images: int, runtime: str, cache: Path | None = None,
               device: str = "cpu", threads: int | None = None):
    """`frozen_pass` of a whole module from pixels (a network's logits, a prefix's activations) for
    `images` to come: onnxruntime where `runtime` resolves to it and the graph is kept (in this
    process or in `cache`) or pays back its export (EXPORT_PAYS_BACK), else PyTorch. A module whose
    graph cannot be made runs in PyTorch (said once, where -v shows it; an error under --runtime onnx)."""
    chosen = resolve_runtime(runtime, device)
    if chosen != "torch":  # onnx-int8 quantizes features only: a whole network runs the fp32 graph
        key = network_key(network, input_size)
        if runtime != "auto" or images >= EXPORT_PAYS_BACK or graph_kept(key, cache):
            try:
                return frozen_pass(network, input_size, key, "onnx", cache, whole=True, threads=threads)
            except NotExportable as err:
                if runtime != "auto":
                    raise TransferlabError(f"--runtime {runtime}: {err}: give --runtime torch") from None
                say_once(f"runtime: {err}: this network runs in PyTorch", logging.INFO)
    return frozen_pass(network, input_size, "", "torch", device=device, whole=True)


# -- the graph file ---------------------------------------------------------------------------

def network_key(network: nn.Module, input_size: int) -> str:
    """The graph key of a whole module from pixels: a digest of its structure and every parameter
    and buffer, so a network trained further, or another run's, never meets this graph.
    About 10 ms for Lite0's 14 MB."""
    digest = hashlib.sha1(f"{GRAPH_FORMAT}:{input_size}:{network!r}".encode())
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return "net-" + digest.hexdigest()[:20]


class _Frozen(nn.Module):
    def __init__(self, network: Network, whole: bool):
        super().__init__()
        self.network, self.whole = network, whole

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (self.network(pixels) if self.whole else self.network.features(pixels)).float()


def _graph(network: Network, input_size: int, key: str, cache: Path | None, whole: bool = False
           ) -> tuple[bytes, float]:
    """(the graph's bytes, its speed against PyTorch's): read from the cache when whole and of
    this format, else exported, checked and written there.

    The record `<key>.json` names the graph file by its digest (`<key>-<sha256[:16]>.onnx`) and is
    written after it: two processes exporting the same graph at once (compare --jobs) each leave
    a record that names a whole file, never one's record beside the other's graph."""
    def make() -> tuple[bytes, dict]:
        data, exporter, diff, speedup = _export(network, input_size, whole)
        return data, {"input_size": input_size, "exporter": exporter, "max_relative_diff": diff, "speedup": speedup}

    return _kept_or_made(key, cache, make)


def _kept_or_made(key: str, cache: Path | None, make) -> tuple[bytes, float]:
    """(the graph's bytes, its speedup): the kept graph of `key` when its record names a whole
    file, else `make()` -> (bytes, the record's other fields, with the speedup), written there."""
    record = cache / "onnx" / f"{key}.json" if cache is not None else None
    if record is not None and record.is_file():
        data, why, speedup = _read(record)
        if data is not None:
            return data, speedup
        log.warning(f"onnx graph of '{record}' {why}: made again")
    data, fields = make()
    if record is not None:
        digest = hashlib.sha256(data).hexdigest()
        graph = record.with_name(f"{key}-{digest[:16]}.onnx")
        try:
            write_bytes(graph, data)
            write_json(record, {"format": GRAPH_FORMAT, "file": graph.name, "sha256": digest, "bytes": len(data),
                                **fields, "torch": torch.__version__})
        except (OSError, TransferlabError) as err:  # a read-only cache: the graph still serves this run
            log.warning(f"onnx graph not kept in '{record.parent}' ({err}): made again by the next run")
    return data, fields["speedup"]


def int8_pass(network: Network, input_size: int, key: str, cache: Path | None, calibration) -> "OnnxPass":
    """The features pass through the int8 graph of extractor `key` (runtime/quantize.py): kept in
    `cache` like the fp32 one (`<key>-int8.json`), else quantized from it with `calibration()`'s
    pixels ((N, 3, S, S) float32, drawn from the images about to be run). Its `.digest` names the
    graph, so features are cached per graph. NotExportable when the fp32 graph cannot be made."""
    kept = (f"{key}-int8", str(cache), None)
    if kept not in _SESSIONS:
        fp32, speedup = _graph(network, input_size, key, cache)

        def make() -> tuple[bytes, dict]:
            from .quantize import quantize_int8

            pixels = calibration()
            data = quantize_int8(fp32, pixels, INPUT)
            faster = _relative_speed(_session(fp32), _session(data), pixels[:32])
            log.info(f"runtime: quantized the frozen pass to int8 on {len(pixels)} images ({faster:.1f}x the fp32 "
                     "graph's speed)")
            return data, {"input_size": input_size, "calibration_images": len(pixels),
                          "speedup": round(speedup * faster, 2)}

        data, total = _kept_or_made(f"{key}-int8", cache, make)
        made = OnnxPass(_session(data), total)
        made.runtime, made.digest = "onnx-int8", hashlib.sha256(data).hexdigest()[:16]
        while len(_SESSIONS) >= KEEP_SESSIONS:
            del _SESSIONS[next(iter(_SESSIONS))]
        _SESSIONS[kept] = made
    return _SESSIONS[kept]


def _relative_speed(reference, other, pixels: np.ndarray) -> float:
    """`reference`'s seconds on `pixels` over `other`'s, each timed on its second run."""
    import time

    seconds = []
    for session in (reference, other):
        session.run(None, {INPUT: pixels})
        start = time.perf_counter()
        session.run(None, {INPUT: pixels})
        seconds.append(time.perf_counter() - start)
    return seconds[0] / max(seconds[1], 1e-9)


def _read(record_path: Path) -> tuple[bytes | None, str, float]:
    """(the graph's bytes, "", its speedup) when the record names a whole file of this format;
    else (None, why, 1.0)."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as err:
        return None, f"has no readable record ({type(err).__name__})", 1.0
    if not isinstance(record, dict) or record.get("format") != GRAPH_FORMAT or not isinstance(record.get("file"), str):
        return None, "is of another format", 1.0
    if record.get("failed"):
        return None, "was recorded as failed", 1.0
    graph = record_path.with_name(Path(record["file"]).name)
    try:
        data = graph.read_bytes()
    except OSError as err:
        return None, f"is missing its file '{graph.name}' ({type(err).__name__})", 1.0
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):  # about 20 ms for Lite0's 14 MB
        return None, f"is damaged ('{graph}': its SHA-256 is not the one recorded when it was made)", 1.0
    speedup = record.get("speedup")
    return data, "", float(speedup) if isinstance(speedup, (int, float)) and speedup > 0 else 1.0


def _export(network: Network, input_size: int, whole: bool = False) -> tuple[bytes, str, float, float]:
    """Export the features pass at `input_size`: the fast legacy exporter first, the
    torch.export-based one when the first cannot capture the network or its graph disagrees with
    PyTorch on random and saturated pixels at batch sizes other than the traced one."""
    module = _Frozen(copy.deepcopy(network).cpu(), whole).eval()
    gen = torch.Generator().manual_seed(1)
    example = torch.randint(0, 256, (2, 3, input_size, input_size), generator=gen).float()
    freeze_same_padding(module.network, example)  # the graph only ever sees this input size
    checks = [torch.randint(0, 256, (3, 3, input_size, input_size), generator=gen).float(),
              torch.full((1, 3, input_size, input_size), 255.0)]
    with torch.inference_mode():
        expected = [module(x).numpy() for x in checks]
    why = ""
    for make in reversed(exporters("runtime")):
        try:
            with quiet_known_warnings(), torch.inference_mode(False), torch.no_grad():
                model, exporter = make(module, example, INPUT, OUTPUT)
            data = model.SerializeToString()
            session = _session(data)
            worst = max(_difference(session.run(None, {INPUT: x.numpy()})[0], e) for x, e in zip(checks, expected))
        except TransferlabError:
            raise
        except Exception as err:  # noqa: BLE001 - any network this exporter cannot capture
            why = f"the ONNX export failed ({type(err).__name__}: {str(err).splitlines()[0][:160]})"
            continue
        if worst <= TOLERANCE:
            speedup = _speedup(module, session, checks[0])
            log.info(f"runtime: exported the frozen pass to ONNX ({exporter}, max relative difference {worst:.1g}, "
                     f"{speedup:.1f}x PyTorch's speed)")
            return data, exporter, worst, speedup
        why = f"the ONNX graph's features differ from PyTorch's by {worst:.2g} of the largest (more than {TOLERANCE:g})"
    raise NotExportable(why)


def _speedup(module: nn.Module, session, pixels: torch.Tensor) -> float:
    """PyTorch's seconds for a batch (channels_last, as TorchPass runs it) over onnxruntime's, each
    timed on its second run: what `auto` needs to cost the passes that stay in PyTorch."""
    import time

    batch = torch.cat([pixels] * 3).contiguous(memory_format=torch.channels_last)
    network = module.to(memory_format=torch.channels_last)  # the exporter's own copy
    array = batch.contiguous().numpy()
    seconds = []
    for run in (lambda: network(batch), lambda: session.run(None, {INPUT: array})):
        with torch.inference_mode():
            run()
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
    return round(seconds[0] / max(seconds[1], 1e-9), 2)


def _difference(got: np.ndarray, expected: np.ndarray) -> float:
    """Largest difference relative to the largest feature; inf for another shape or a non-finite value."""
    if got.shape != expected.shape or not np.isfinite(got).all():
        return float("inf")
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-6))


def _session(data: bytes, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # As many threads as PyTorch is given (every core): decoding does not run beside it on a CPU
    # (data/cache.py, iter_decoded's `overlap`).
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # No arena: with one kept alive (Lite1, 240 px) PyTorch trained 1.45x slower in the same
    # process (3.38 against 2.3 s a step: a finetune after its prefix cache, or after features
    # candidates); without it onnxruntime ran as fast (211-217 against 199-215 images/s).
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    with quiet_known_warnings():
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


_SAID: set[str] = set()


def say_once(line: str, level: int = logging.WARNING) -> None:
    """A line said once per process: a fallback repeats for every pass of a run."""
    if line not in _SAID:
        _SAID.add(line)
        log.log(level, line)
