"""Naming the layer to tap: module names, stage aliases (`stage-1` is the last stage) and, for
VGG and ResNet, the Keras layer names people know (`block5_conv3`, `conv5_block3_out`); and
cutting a backbone so that it runs only up to the tapped layers."""

from __future__ import annotations

import difflib
import re

from torch import nn

from ..errors import TransferlabError
from .stages import module_chain, reproduces, stage_groups

_STAGE = re.compile(r"^stage-(\d+)$")


def keras_aliases(backbone: nn.Module) -> dict[str, str]:
    """Keras layer name -> timm module name, for the VGG and ResNet families.

    A Keras Conv2D includes its ReLU, so `blockB_convK` maps to the activation after the timm
    convolution (after its BatchNorm in the _bn variants). Keras's ResNet50V2 puts each stage's
    stride in its last block and timm's in its first: the same name has the same channels but, for
    conv2..conv4, twice the spatial size in timm.
    """
    kind = type(backbone).__name__
    aliases: dict[str, str] = {}
    if kind == "VGG":
        block, conv, pending = 1, 0, None
        for name, module in backbone.features.named_children():
            if isinstance(module, nn.Conv2d):
                conv += 1
                pending = f"block{block}_conv{conv}"
            elif isinstance(module, nn.MaxPool2d):
                aliases[f"block{block}_pool"] = f"features.{name}"
                block, conv, pending = block + 1, 0, None
                continue
            if pending:
                aliases[pending] = f"features.{name}"
    elif kind == "ResNet":
        aliases.update(conv1_relu="act1", pool1_pool="maxpool")
        for s in range(1, 5):
            for b, _ in enumerate(getattr(backbone, f"layer{s}")):
                aliases[f"conv{s + 1}_block{b + 1}_out"] = f"layer{s}.{b}"
    elif kind == "ResNetV2":
        for s, stage in enumerate(backbone.stages):
            for b, _ in enumerate(stage.blocks):
                aliases[f"conv{s + 2}_block{b + 1}_out"] = f"stages.{s}.blocks.{b}"
        aliases["post_relu"] = "norm"
    return aliases


def stage_output(backbone: nn.Module, k: int) -> str:
    """The module whose output ends the k-th last stage: the largest module holding only that
    stage's parameters and its last parameter."""
    groups = stage_groups(backbone)
    if not 1 <= k <= len(groups):
        raise TransferlabError(f"--layer stage-{k}: this backbone has stages stage-1 .. stage-{len(groups)}")
    group = set(groups[-k])
    last = groups[-k][-1].rpartition(".")[0]
    parts = last.split(".")
    for depth in range(1, len(parts) + 1):
        candidate = ".".join(parts[:depth])
        owned = {n for n, _ in backbone.get_submodule(candidate).named_parameters(prefix=candidate)}
        if owned <= group:
            return candidate
    return last


def resolve_layer(backbone: nn.Module, layer: str, option: str = "--layer") -> str:
    """A module name, a stage alias or a Keras name -> the timm module name; unknown names get
    the closest suggestions."""
    layer = layer.strip()
    modules = {n for n, _ in backbone.named_modules() if n}
    if layer in modules:
        return layer
    match = _STAGE.match(layer)
    if match:
        return stage_output(backbone, int(match.group(1)))
    aliases = keras_aliases(backbone)
    if layer in aliases:
        return aliases[layer]
    close = difflib.get_close_matches(layer, sorted(modules | set(aliases)), n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise TransferlabError(f"{option} '{layer}' is not a layer of this backbone: {hint}`transferlab layers "
                           f"BACKBONE` lists them (stage-1 is the last stage)")


def tap_chain(backbone: nn.Module, taps: list[str],
              option: str = "--layer") -> tuple[list[tuple[str, nn.Module]], list[str]]:
    """The backbone as a chain of modules up to the last tap, in which every tap ends an element,
    and the names of those elements. Containers are opened only as far as a tap needs, and every
    opening is checked numerically, so a tap inside a block with a skip connection is refused,
    not silently wrong."""
    chain = module_chain(backbone)
    if chain is None:
        raise TransferlabError(f"{option}: this backbone's forward is not a chain of layers that can be "
                               "cut (its blocks are joined by more than a sequence): use a CNN backbone")
    ends = []
    for tap in taps:
        while (end := _element_ending(chain, tap)) is None:
            i, (outer, module) = next((i, e) for i, e in enumerate(chain) if tap.startswith(e[0] + "."))
            opened = chain[:i] + [(f"{outer}.{n}", m) for n, m in module.named_children()] + chain[i + 1:]
            if not reproduces(backbone, opened):
                raise TransferlabError(
                    f"{option} '{tap}' lies inside '{outer}', whose output is more than a sequence of its "
                    f"layers (a skip connection): tap '{outer}' or a layer outside it")
            chain = opened
        ends.append(end)
    last = max(i for i, (n, _) in enumerate(chain) if n in ends)
    return chain[:last + 1], ends


def _element_ending(chain: list[tuple[str, nn.Module]], tap: str) -> str | None:
    """The chain element whose output is the tap's: the tap itself, or the last element inside it
    (a container the chain has opened)."""
    names = [n for n, _ in chain]
    if tap in names:
        return tap
    inside = [n for n in names if n.startswith(tap + ".")]
    return inside[-1] if inside else None


def prune_after(backbone: nn.Module, chain: list[tuple[str, nn.Module]]) -> None:
    """Replace every module the cut chain does not use by an Identity, so its weights are neither
    kept, trained nor saved; the names of the kept parameters do not change."""
    kept = {n for n, _ in chain}
    replaced: list[str] = []
    for name, _ in list(backbone.named_modules()):
        if not name or any(name.startswith(r + ".") for r in replaced):
            continue
        if any(name == k or name.startswith(k + ".") or k.startswith(name + ".") for k in kept):
            continue
        parent, _, child = name.rpartition(".")
        owner = backbone.get_submodule(parent) if parent else backbone
        setattr(owner, child, nn.Identity())
        replaced.append(name)
