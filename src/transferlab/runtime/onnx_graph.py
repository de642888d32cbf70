"""A PyTorch module written as an ONNX graph with a dynamic batch axis: the one exporter that both
`transferlab export` and the onnxruntime frozen pass go through."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import warnings

import torch
from torch import nn

from ..errors import TransferlabError

log = logging.getLogger("transferlab")

# The torch.export-based exporter implements opset 18 and up; asking for 17 makes it try (and,
# for Pad, fail) a down-conversion and keep 18 anyway. The legacy fallback writes 17.
DYNAMO_OPSET, LEGACY_OPSET = 18, 17
INSTALL_HINT = "pip install onnx onnxruntime onnxscript"


def require(name: str, what: str = "export"):
    """The module `name`, or one line saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise TransferlabError(f"{what}: the '{name}' package is missing: {INSTALL_HINT}") from None


@contextlib.contextmanager
def quiet_known_warnings():
    """Silence warnings whose cause is known and checked: the legacy paths' deprecation notices,
    and tracer warnings about shape comparisons (the spatial size is fixed by the export, and a
    batch-size dependence would fail the check run at other batch sizes)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", message=r".*(legacy TorchScript-based ONNX|is deprecated|"
                                                  r"feature will be removed).*")
        # The ONNX graph passes log every deduplicated constant at INFO: noise in an app's log.
        loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def onnx_model(module: nn.Module, example: torch.Tensor, input_name: str, output_name: str, what: str = "export",
               legacy_first: bool = False):
    """(the ModelProto of `module` traced on `example`, batch axis dynamic; which exporter made it).

    The torch.export-based exporter (the default since torch 2.9) proves the batch axis symbolic
    instead of trusting a trace; if it cannot capture a model, the legacy TorchScript-based one is
    tried. The caller's check run judges either result. `legacy_first` tries them the other way.
    """
    makers = list(exporters(what))
    makers = makers[::-1] if legacy_first else makers
    try:
        return makers[0](module, example, input_name, output_name)
    except Exception as err:  # noqa: BLE001 - any capture failure: try the other exporter
        log.warning("%s: the %s ONNX exporter failed (%s: %s); trying the %s one", what, makers[0].__doc__,
                    type(err).__name__, str(err).splitlines()[0][:200], makers[1].__doc__)
        return makers[1](module, example, input_name, output_name)


def exporters(what: str = "export"):
    """The two ways to make the graph, torch.export-based first; each (module, example, input name,
    output name) -> (ModelProto, which exporter). The legacy one is 20 times faster (0.3 s against
    6 s for EfficientNet-Lite0, its graph as fast to run) but traces rather than proves, so whoever
    uses it checks the result (a module left in training mode, for one, exports wrong)."""
    onnx = require("onnx", what)

    def dynamo(module, example, input_name, output_name):
        """torch.export-based"""
        return _dynamo(module, example, input_name, output_name, what)

    def legacy(module, example, input_name, output_name):
        """legacy TorchScript-based"""
        return _legacy(onnx, module, example, input_name, output_name)

    return dynamo, legacy


def _dynamo(module, example, input_name, output_name, what):
    require("onnxscript", what)
    with quiet_known_warnings():
        program = torch.onnx.export(
            module, (example,), None, dynamo=True, opset_version=DYNAMO_OPSET, verbose=False,
            input_names=[input_name], output_names=_names(output_name),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    return program.model_proto, f"torch.onnx dynamo (opset {DYNAMO_OPSET})"


def _legacy(onnx, module, example, input_name, output_name):
    buffer = io.BytesIO()
    with quiet_known_warnings():
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=LEGACY_OPSET,
                          input_names=[input_name], output_names=_names(output_name),
                          dynamic_axes={input_name: {0: "batch"}, **{n: {0: "batch"} for n in _names(output_name)}})
    return onnx.load_from_string(buffer.getvalue()), f"torch.onnx legacy (opset {LEGACY_OPSET})"


def _names(output_name) -> list[str]:
    """One output's name, or several outputs' (a module returning a tuple)."""
    return [output_name] if isinstance(output_name, str) else list(output_name)
