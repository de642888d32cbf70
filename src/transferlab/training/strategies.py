"""A strategy's options resolved from its recipe, and the phases the engine runs for it: the
phase plans the registry (strategy_registry.py) names, built for a network."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from ..config import RunConfig
from ..errors import TransferlabError
from ..models.heads import parse_head
from ..models.backbones import registered, scratch_backbones, trains_from_scratch
from ..models.registry import DEFAULT_BACKBONE
from ..models.stages import last_stages
from ..strategy_registry import REGISTRY, strategy
from .engine import Phase

# What a strategy uses for every option left at None (the registry's recipes).
RECIPES: dict[str, dict] = {name: kind.recipe for name, kind in REGISTRY.items()}


# Strategies that are searches over classifiers rather than one way of fitting one (auto): their
# estimator registers itself here (selection/auto.py), so that ImageClassifier(strategy="auto")
# runs it without this layer importing the one above it.
_META: dict[str, type] = {}


def register_meta(strategy: str, estimator: type) -> None:
    _META[strategy] = estimator


def meta_estimator(name: str) -> type | None:
    if strategy(name).searches and name not in _META:
        raise TransferlabError(f"--strategy {name} is a search over classifiers: import transferlab (not only "
                               "transferlab.classifier) so its estimator is registered")
    return _META.get(name)


def resolve(config: RunConfig) -> RunConfig:
    """The configuration with every None replaced by the strategy's choice."""
    kind = strategy(config.strategy)
    recipe = dict(kind.recipe)
    recipe.setdefault("backbone", DEFAULT_BACKBONE)
    backbone = config.backbone or recipe["backbone"]
    if kind.phases == "everything" and not trains_from_scratch(backbone):
        raise TransferlabError(f"--strategy scratch trains a small network from random weights: use "
                               f"--backbone {' or '.join(scratch_backbones())} (got '{backbone}')")
    if kind.phases != "everything" and trains_from_scratch(backbone):
        raise TransferlabError(f"--backbone {backbone} has no pretrained weights: use it with "
                               "--strategy scratch")
    if config.backbone2 and not kind.bilinear_network:
        raise TransferlabError("--backbone2 is for --strategy bilinear (an asymmetric bilinear head)")
    if trains_from_scratch(config.backbone2):
        raise TransferlabError(f"--backbone2 {config.backbone2} has no pretrained weights: use a timm backbone")
    if registered(backbone) is not None:
        recipe["head"] = registered(backbone).default_head
    values = {}
    for key, value in config.to_dict().items():
        values[key] = recipe.get(key) if value is None and key in recipe else value
    # auto picks its backbones itself unless the user named one
    values["backbone"] = config.backbone if kind.searches else backbone
    if values["lr"] == "find" and kind.searches:
        raise TransferlabError("--lr find sweeps one strategy's rate, but auto chooses among several: give "
                               "--strategy finetune (or frozen, reinit, bilinear, scratch)")
    if values["lr"] == "find" and kind.cached_features and parse_head(values["head"])[0] == "linear":
        raise TransferlabError("--lr find: --strategy features fits its linear head by logistic regression, "
                               "which has no learning rate; use --head mlp, or another strategy")
    if values["weight_decay"] is None:
        values["weight_decay"] = 0.01 if values["optimizer"] in ("adamw", "adam") else 5e-4
    if values["optimizer"] == "adam" and config.weight_decay is None:
        values["weight_decay"] = 0.0  # Adam's decay is an L2 penalty that fights its scaling
    # Each value is the user's (checked when the configuration was made) or the recipe's.
    return replace(config, **values)


def _names_under(network: nn.Module, prefix: str) -> list[str]:
    return [n for n, _ in network.named_parameters() if n.startswith(prefix)]


def _batchnorms(network: nn.Module, params: list[str]) -> tuple[str, ...]:
    owners = {p.rpartition(".")[0] for p in params}
    return tuple(name for name, m in network.named_modules()
                 if name in owners and isinstance(m, nn.modules.batchnorm._BatchNorm))


def stage_rates(stages, count: int | str, top_lr: float, decay: float) -> list[tuple[list[str], float]]:
    """(parameter names, rate) per unfrozen stage: the last stage at `top_lr`, the one below it
    at top_lr x decay, and so on (layer-wise decay, as in BEiT and timm's layer_decay); one group
    when decay is 1. `stages(k)` names the parameters of the last k stages."""
    everything = stages(count)
    if decay == 1:
        return [(everything, top_lr)]
    groups, seen, k = [], set(), 1
    while len(seen) < len(everything):
        names = [n for n in stages(k) if n not in seen]
        if names:
            groups.append((names, top_lr * decay ** (k - 1)))
        seen.update(names)
        k += 1
    return groups


def phases(config: RunConfig, network: nn.Module) -> list[Phase]:
    """The phases of a strategy for a network built for it (config already resolved): the plan
    the registry names for it."""
    lr = config.lr
    if not isinstance(lr, (int, float)):
        raise TypeError(f"phases need a learning rate, got {lr!r}: resolve --lr find first")
    plan = strategy(config.strategy).phases
    if plan is None:
        raise ValueError(f"strategy {config.strategy} has no phases")  # features fits without the engine
    return PLANS[plan](config, network, _names_under(network, "head."), lr)


def _head_only(config: RunConfig, network: nn.Module, head: list[str], lr: float) -> list[Phase]:
    return [Phase("head", config.epochs, [(head, lr)])]


def _head_then_stages(config: RunConfig, network: nn.Module, head: list[str], lr: float) -> list[Phase]:
    """Phase 1 trains the head on the frozen backbone; then the last stages train too, at the
    backbone's reduced rate (decayed further per stage with --lr-decay), in one phase or, with
    --unfreeze-schedule, in phases that unfreeze more stages each. A bilinear network unfreezes
    the stages below each tap."""
    schedule = config.unfreeze_steps()
    # An entry beyond the stages is named as the option the user gave it in.
    option = f"--unfreeze-schedule '{config.unfreeze_schedule}', entry" if schedule else "--unfreeze"
    tapped = strategy(config.strategy).bilinear_network

    def named(count):
        found = (network.backbone.last_stages(count, option) if tapped
                 else last_stages(network.backbone, count, option))
        return ["backbone." + n for n in found]

    steps = schedule or (config.unfreeze,)
    result = [Phase("head", config.head_epochs, [(head, lr)])] if config.head_epochs else []
    epochs = config.epochs if len(steps) == 1 else max(1, -(-config.epochs // len(steps)))
    for step in steps:
        groups = stage_rates(named, step, lr * config.backbone_lr_mult, config.lr_decay)
        unfrozen = [n for names, _ in groups for n in names]
        bn = _batchnorms(network, unfrozen) if config.bn_update else ()
        result.append(Phase("finetune" if len(steps) == 1 else f"unfreeze-{step}", epochs,
                            [(head, lr), *groups], bn, config.warmup_epochs))
    return result


def _fresh_stages(config: RunConfig, network: nn.Module, head: list[str], lr: float) -> list[Phase]:
    fresh = ["backbone." + n for n in last_stages(network.backbone, config.reinit, "--reinit")]
    # Fresh BatchNorm layers have no statistics worth keeping: they must learn them.
    return [Phase("reinit", config.epochs, [(head, lr), (fresh, lr)], _batchnorms(network, fresh),
                  config.warmup_epochs)]


def _everything(config: RunConfig, network: nn.Module, head: list[str], lr: float) -> list[Phase]:
    everything = [n for n, _ in network.named_parameters()]
    return [Phase("scratch", config.epochs, [(everything, lr)], _batchnorms(network, everything),
                  config.warmup_epochs)]


PLANS = {"head_only": _head_only, "head_then_stages": _head_then_stages, "fresh_stages": _fresh_stages,
         "everything": _everything}
