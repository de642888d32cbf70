"""The one place networks are built: a ModelSpec (everything that decides a network's structure
and starting weights) goes in, the network, its preprocessing and its weights' origin come out.
Training, loading a saved run, the audit's features, explain and `layers` all build through
`build_model`, so a saved network is rebuilt exactly as it was trained."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping, NamedTuple

import torch
from torch import nn

from ..errors import TransferlabError
from .backbones import create_backbone, feature_dim
from .bilinear import BilinearFeatures, BilinearHead
from .ensemble import FeatureEnsemble, MemberNetworks, WeightedProbabilities
from .heads import build_head, parse_branch_dropout
from .network import Network
from .preprocess import Preprocess
from .stages import last_stages, stage_groups
from .tapped import default_feature_layer, tap
from .weights import WeightsInfo
from ..strategy_registry import strategy

log = logging.getLogger("transferlab")

@dataclass(frozen=True)
class ModelSpec:
    backbone: str
    num_classes: int | None = None   # None: no head, the network returns the pooled features
    strategy: str = "features"
    weights: str = "auto"
    image_size: int | None = None
    head: str = "linear"
    dropout: float = 0.0
    reinit: int = 1                  # reinit: how many last stages get fresh weights
    layer: str | None = None         # bilinear: the tapped layer(s)
    backbone2: str | None = None
    weights2: str = "auto"
    branch_dropout: tuple[float, float] = (0.0, 0.0)
    bilinear_reduce: int | None = None
    sketch_dim: int | None = None
    feature_views: int = 1           # features: 2 averages each image's features with its mirror's
    pooling: str = "avg"             # features: avg, or bilinear (second-order pooling of `layer`)
    resize: str = "crop"             # how images become the square input (specs saved before it cropped)
    seed: int = 0
    # strategy "ensemble": the members' own specs and preprocessing ({"spec":, "preprocess":}), and
    # the weight of each member's probabilities
    members: tuple = ()
    member_weights: tuple = ()
    # {"scale": [...], "bias": [...], ...}: the calibration fitted after training (trust/calibration.py),
    # applied to the logits inside the network; None before it is fitted
    calibration: dict | None = None

    @property
    def backbones(self) -> list[str]:
        """The backbone names: several for a feature ensemble (`a,b`)."""
        return [b.strip() for b in self.backbone.split(",") if b.strip()]

    @classmethod
    def from_options(cls, options: Mapping, num_classes: int | None) -> "ModelSpec":
        """From run options (a resolved RunConfig's dict, or the `params` of an older model.json)."""
        values = {f.name: options[f.name] for f in fields(cls) if options.get(f.name) is not None}
        values["branch_dropout"] = parse_branch_dropout(options.get("branch_dropout", "0")) or (0.0, 0.0)
        values["dropout"] = float(values.get("dropout", 0.0))
        return cls(**{**values, "num_classes": num_classes})

    @classmethod
    def from_dict(cls, values: Mapping) -> "ModelSpec":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        return cls(**{**values, "branch_dropout": tuple(values.get("branch_dropout", (0.0, 0.0))),
                      "members": tuple(values.get("members", ())),
                      "member_weights": tuple(values.get("member_weights", ()))})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["branch_dropout"] = list(self.branch_dropout)
        return d


class BuiltModel(NamedTuple):
    network: Network
    preprocess: Preprocess
    weights: WeightsInfo


def build_model(spec: ModelSpec, load_weights: bool = True) -> BuiltModel:
    """The network `spec` describes. load_weights=False builds the structure only (random
    weights, no re-initialisation), for saved weights to fill."""
    built = _build(spec, load_weights)
    built.network.calibrate.set(spec.calibration)
    return built


def _build(spec: ModelSpec, load_weights: bool) -> BuiltModel:
    if spec.strategy == "ensemble":
        return _probability_ensemble(spec, load_weights)
    weights = spec.weights if load_weights else "none"
    if len(spec.backbones) > 1 or spec.feature_views > 1:
        backbone, pre, info = _ensemble(spec, weights)
    else:
        backbone, pre, info = create_backbone(spec.backbone, weights, spec.image_size, spec.seed)
        backbone = _pooled(spec, backbone)
    pre = replace(pre, resize=spec.resize)
    kind = strategy(spec.strategy)
    if kind.reinitialises and load_weights:
        reinit_last_stages(backbone, spec.backbone, spec.reinit, spec.seed)
    if kind.bilinear_network:
        return BuiltModel(_bilinear_network(spec, backbone, pre, load_weights), pre, info)
    torch.manual_seed(spec.seed)
    head = (build_head(spec.head, feature_dim(backbone), spec.num_classes, spec.dropout)
            if spec.num_classes else nn.Identity())
    return BuiltModel(Network(backbone, head, pre.mean, pre.std, pre.input_size), pre, info)


def _ensemble(spec: ModelSpec, weights: str) -> tuple[FeatureEnsemble, Preprocess, WeightsInfo]:
    """The members side by side, at one input: --image-size, else the largest native size of
    the members (the others run at it too), with that member's resize and crop."""
    built = [create_backbone(name, weights, spec.image_size, spec.seed) for name in spec.backbones]
    built = [(_pooled(spec, member), pre, info) for member, pre, info in built]

    def native_size(member) -> int:
        return int((getattr(member[0], "pretrained_cfg", None) or {}).get("input_size", (0, 0, 0))[-1])

    pre = max(built, key=native_size)[1]  # the first of the largest, when sizes tie
    ensemble = FeatureEnsemble([b[0] for b in built], spec.backbones, [(p.mean, p.std) for _, p, _ in built],
                               mirror=spec.feature_views > 1)
    first = built[0][1]
    pre = replace(pre, mean=first.mean, std=first.std)  # the network normalises for the first member
    info = built[0][2] if len(built) == 1 else WeightsInfo.combined([b[2] for b in built])
    return ensemble, pre, info


def ensemble_spec(members: list[tuple["ModelSpec", Preprocess]], weights: list[float], seed: int = 0) -> "ModelSpec":
    """The spec of fitted networks whose probabilities are averaged with `weights`."""
    return ModelSpec(backbone=",".join(dict.fromkeys(s.backbone for s, _ in members)),
                     num_classes=members[0][0].num_classes, strategy="ensemble", resize=members[0][1].resize,
                     seed=seed, members=tuple({"spec": s.to_dict(), "preprocess": p.to_dict()} for s, p in members),
                     member_weights=tuple(float(w) for w in weights))


def _probability_ensemble(spec: ModelSpec, load_weights: bool) -> BuiltModel:
    """The members' networks (weights are the saved ones: each was fitted before it joined) side
    by side on one input: the largest member's size and preprocessing; the network resizes for
    the others."""
    built, pres = [], []
    for member in spec.members:
        one = build_model(ModelSpec.from_dict(member["spec"]), load_weights=False)
        built.append(one)
        pres.append(Preprocess.from_dict(member["preprocess"]))
    pre = max(pres, key=lambda p: p.input_size)
    stack = MemberNetworks([b.network for b in built], [p.input_size for p in pres], pre.input_size,
                           pre.interpolation)
    head = WeightedProbabilities(spec.member_weights, spec.num_classes)
    # The members normalise their own pixels: the outer normalisation is the identity.
    network = Network(stack, head, (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), pre.input_size)
    return BuiltModel(network, pre, WeightsInfo.combined([b.weights for b in built]))


def _pooled(spec: ModelSpec, backbone: nn.Module) -> nn.Module:
    """The backbone as the features strategy pools it: as it is, or cut at the tapped layer with
    bilinear pooling."""
    if spec.pooling != "bilinear":
        return backbone
    tapped = tap(backbone, None, spec.layer, default=default_feature_layer)
    return BilinearFeatures(tapped, tapped.out_channels(), tapped.tap_names[0])


def _bilinear_network(spec: ModelSpec, backbone: nn.Module, pre: Preprocess, load_weights: bool) -> Network:
    """The cut backbone(s) and a bilinear head."""
    net2 = renorm2 = None
    if spec.backbone2:
        net2, pre2, info2 = create_backbone(spec.backbone2, spec.weights2 if load_weights else "none",
                                            pre.input_size, spec.seed)
        if load_weights:
            log.info(f"second backbone {spec.backbone2}: {info2.description}")
        # The pixels arrive normalised for the first backbone; the second may expect others.
        renorm2 = (pre.mean, pre.std, pre2.mean, pre2.std)
    tapped = tap(backbone, net2, spec.layer, renorm2)
    torch.manual_seed(spec.seed)
    head = BilinearHead(tapped.channels(64), spec.num_classes, spec.head, spec.dropout, spec.branch_dropout,
                        spec.bilinear_reduce, spec.sketch_dim, spec.seed)
    return Network(tapped, head, pre.mean, pre.std, pre.input_size)


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
