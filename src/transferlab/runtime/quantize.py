"""Static int8 quantization of an ONNX graph (onnxruntime's QDQ format: int8 weights per output
channel, uint8 activations whose ranges are calibrated on real images). An option, not a
default: on 2 CPU cores it ran Lite0 2.3x faster than the fp32 graph and cost 0.6-0.8 points of
a features run's test accuracy (benchmarks/int8.py); its features are no longer within any
tolerance of PyTorch's (up to a third of the largest feature off), so they are cached under the
int8 graph's own digest."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from .onnx_graph import quiet_known_warnings

# Calibration images: enough for stable activation ranges (256 and 1000 gave the same accuracy
# within a point on cars43), few enough to take seconds.
CALIBRATION_IMAGES = 256
_CALIBRATION_BATCH = 16


class _RootFilter(logging.Filter):
    """onnxruntime's quantizer logs advice on the root logger at every call (its pre-processing
    step, biases that the exporter named as inputs): nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime/quantization" not in record.pathname.replace("\\", "/")


def quantize_int8(graph: bytes, pixels: np.ndarray, input_name: str) -> bytes:
    """The int8 QDQ graph of fp32 `graph`, its activation ranges calibrated on `pixels`
    ((N, 3, S, S) float32, 0..255, as the graph takes them)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: np.ascontiguousarray(pixels[s:s + _CALIBRATION_BATCH])}
                                 for s in range(0, len(pixels), _CALIBRATION_BATCH)])

        def get_next(self):
            return next(self.batches, None)

    import onnx

    # Probabilities stay float: quantized, they come in steps of 1/255 and no longer sum to one.
    softmax = [n.name for n in onnx.load_from_string(graph).graph.node if n.op_type == "Softmax"]
    quiet = _RootFilter()
    logging.getLogger().addFilter(quiet)
    try:
        with tempfile.TemporaryDirectory(prefix="transferlab-int8-") as tmp, quiet_known_warnings():
            source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            source.write_bytes(graph)
            quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=softmax)
            return target.read_bytes()
    finally:
        logging.getLogger().removeFilter(quiet)
