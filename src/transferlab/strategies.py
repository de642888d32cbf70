"""Each strategy as data: its default recipe, and the list of phases the engine runs."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .config import DEFAULT_BACKBONE, RunConfig
from .engine import Phase
from .errors import TransferlabError
from .models.stages import last_stages, stage_groups

# What a strategy uses for every option left at None. The recipes are the usual best practice
# for small data: a warm head before unfreezing, a small backbone rate, cosine decay.
RECIPES: dict[str, dict] = {
    "features": dict(head="linear", dropout=0.5, epochs=100, patience=10, lr=1e-3, optimizer="adamw",
                     augment="none", featurewise_norm=False, head_epochs=0, warmup_epochs=0.0),
    "frozen": dict(head="linear", dropout=0.2, epochs=15, patience=5, lr=1e-3, optimizer="adamw",
                   augment="standard", featurewise_norm=False, head_epochs=0, warmup_epochs=0.0),
    "finetune": dict(head="linear", dropout=0.2, epochs=10, head_epochs=5, patience=5, lr=1e-3,
                     optimizer="adamw", augment="standard", featurewise_norm=False, warmup_epochs=1.0),
    "reinit": dict(head="linear", dropout=0.2, epochs=15, patience=5, lr=1e-3, optimizer="adamw",
                   augment="standard", featurewise_norm=False, head_epochs=0, warmup_epochs=0.0),
    "bilinear": dict(head="linear", dropout=0.5, epochs=10, head_epochs=5, patience=5, lr=1e-3,
                     optimizer="adamw", augment="standard", featurewise_norm=False, warmup_epochs=1.0),
    "scratch": dict(backbone="basenet", image_size=32, dropout=0.5, epochs=30, patience=10, lr=0.02,
                    optimizer="sgd", augment="classic", featurewise_norm=True, head_epochs=0,
                    warmup_epochs=0.0),
}


def resolve(config: RunConfig) -> RunConfig:
    """The configuration with every None replaced by the strategy's choice."""
    from .models.scratch import SCRATCH_MODELS, default_head

    recipe = dict(RECIPES[config.strategy])
    recipe.setdefault("backbone", DEFAULT_BACKBONE)
    backbone = config.backbone or recipe["backbone"]
    is_scratch = backbone in SCRATCH_MODELS
    if config.strategy == "scratch" and not is_scratch:
        raise TransferlabError(f"--strategy scratch trains a small network from random weights: use "
                               f"--backbone {' or '.join(SCRATCH_MODELS)} (got '{backbone}')")
    if config.backbone2 and config.strategy != "bilinear":
        raise TransferlabError("--backbone2 is for --strategy bilinear (an asymmetric bilinear head)")
    if config.backbone2 in SCRATCH_MODELS:
        raise TransferlabError(f"--backbone2 {config.backbone2} has no pretrained weights: use a timm backbone")
    if is_scratch and config.strategy != "scratch":
        raise TransferlabError(f"--backbone {backbone} has no pretrained weights: use it with "
                               "--strategy scratch")
    if is_scratch:
        recipe["head"] = default_head(backbone)
    values = {}
    for key, value in config.to_dict().items():
        values[key] = recipe.get(key) if value is None and key in recipe else value
    values["backbone"] = backbone
    if values["weight_decay"] is None:
        values["weight_decay"] = 0.01 if values["optimizer"] in ("adamw", "adam") else 5e-4
    if values["optimizer"] == "adam" and config.weight_decay is None:
        values["weight_decay"] = 0.0  # Adam's decay is an L2 penalty that fights its scaling
    return replace(config, **values).validate()


def _names_under(network: nn.Module, prefix: str) -> list[str]:
    return [n for n, _ in network.named_parameters() if n.startswith(prefix)]


def _batchnorms(network: nn.Module, params: list[str]) -> tuple[str, ...]:
    owners = {p.rpartition(".")[0] for p in params}
    return tuple(name for name, m in network.named_modules()
                 if name in owners and isinstance(m, nn.modules.batchnorm._BatchNorm))


def phases(config: RunConfig, network: nn.Module) -> list[Phase]:
    """The phases of a strategy for a network built for it (config already resolved)."""
    head = _names_under(network, "head.")
    lr = config.lr
    s = config.strategy
    if s == "frozen":
        return [Phase("head", config.epochs, [(head, lr)])]
    if s == "finetune":
        unfrozen = ["backbone." + n for n in last_stages(network.backbone, config.unfreeze)]
        result = [Phase("head", config.head_epochs, [(head, lr)])] if config.head_epochs else []
        bn = _batchnorms(network, unfrozen) if config.bn_update else ()
        result.append(Phase("finetune", config.epochs, [(head, lr), (unfrozen, lr * config.backbone_lr_mult)],
                            bn, config.warmup_epochs))
        return result
    if s == "bilinear":
        # Phase 1 trains the bilinear head on the frozen cut network; phase 2 also the last
        # stages below each tap, at the backbone's reduced rate.
        unfrozen = ["backbone." + n for n in network.backbone.last_stages(config.unfreeze)]
        bn = _batchnorms(network, unfrozen) if config.bn_update else ()
        result = [Phase("head", config.head_epochs, [(head, lr)])] if config.head_epochs else []
        return result + [Phase("finetune", config.epochs, [(head, lr), (unfrozen, lr * config.backbone_lr_mult)],
                      bn, config.warmup_epochs)]
    if s == "reinit":
        fresh = ["backbone." + n for n in last_stages(network.backbone, config.reinit)]
        # Fresh BatchNorm layers have no statistics worth keeping: they must learn them.
        return [Phase("reinit", config.epochs, [(head, lr), (fresh, lr)], _batchnorms(network, fresh),
                      config.warmup_epochs)]
    if s == "scratch":
        everything = [n for n, _ in network.named_parameters()]
        return [Phase("scratch", config.epochs, [(everything, lr)], _batchnorms(network, everything),
                      config.warmup_epochs)]
    raise ValueError(f"strategy {s} has no phases")  # features fits without the engine's phases


def reinit_last_stages(backbone: nn.Module, name: str, count: int, seed: int) -> list[str]:
    """Give the last `count` stages fresh weights (timm's own initialisation, same shapes);
    returns the parameter names that changed."""
    import timm

    groups = stage_groups(backbone)
    if count > len(groups):
        raise TransferlabError(f"--reinit {count}: '{name}' has only {len(groups)} stages")
    names = last_stages(backbone, count)
    modules = {n.rpartition(".")[0] for n in names}
    torch.manual_seed(seed)
    fresh = timm.create_model(name, pretrained=False, num_classes=0).state_dict()
    state = backbone.state_dict()
    for key in state:
        if key.rpartition(".")[0] in modules:
            state[key] = fresh[key]
    backbone.load_state_dict(state)
    return names
