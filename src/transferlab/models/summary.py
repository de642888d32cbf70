"""`transferlab layers`: every named module of a backbone with its type, output shape (from one
dummy forward with hooks), parameters, the stage `--unfreeze N` counts it in, and its Keras name."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from .stages import stage_groups
from .taps import keras_aliases


@dataclass
class LayerRow:
    name: str
    kind: str
    shape: str
    params: int
    stage: str       # "stage-K" when all its parameters lie in the K-th last stage
    trainable: bool  # trains in finetune's phase 2 with the given --unfreeze
    alias: str


def layer_rows(backbone: nn.Module, input_size: int, unfreeze: int | str = 1) -> list[LayerRow]:
    shapes: dict[str, str] = {}

    def record(name):
        def hook(_module, _inputs, output):
            shapes[name] = _shape(output)
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in backbone.named_modules() if n]
    backbone.eval()
    try:
        with torch.no_grad():
            backbone(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in handles:
            h.remove()
    groups = stage_groups(backbone)
    stage_of = {p: len(groups) - i for i, g in enumerate(groups) for p in g}
    trains = set(range(1, len(groups) + 1)) if unfreeze == "all" else set(range(1, int(unfreeze) + 1))
    aliases = {module: keras for keras, module in keras_aliases(backbone).items()}
    rows = []
    for name, module in backbone.named_modules():
        if not name:
            continue
        params = [p for p, _ in module.named_parameters(prefix=name)]
        in_stages = {stage_of[p] for p in params if p in stage_of}
        rows.append(LayerRow(
            name, type(module).__name__, shapes.get(name, "-"), sum(t.numel() for t in module.parameters()),
            f"stage-{min(in_stages)}" if len(in_stages) == 1 else "",
            bool(params) and all(stage_of.get(p) in trains for p in params), aliases.get(name, "")))
    return rows


def _shape(output) -> str:
    if isinstance(output, torch.Tensor):
        return "x".join(str(d) for d in output.shape[1:])
    if isinstance(output, (tuple, list)):
        return ", ".join(_shape(o) for o in output)
    return "-"


def format_rows(rows: list[LayerRow], pattern: str | None = None) -> str:
    """A fixed-width table; `pattern` (shell wildcard on the name, type or Keras name) filters it."""
    if pattern:
        p = pattern.lower()
        wanted = lambda r: any(fnmatch.fnmatchcase(v.lower(), p) for v in (r.name, r.kind, r.alias))  # noqa: E731
        rows = [r for r in rows if wanted(r)]
    header = ("layer", "type", "output (CxHxW)", "params", "stage", "trains", "keras name")
    table = [header] + [(r.name, r.kind, r.shape, f"{r.params:,}", r.stage, "yes" if r.trainable else "",
                         r.alias) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table)
