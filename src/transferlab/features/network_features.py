"""A network's pooled features of images through the feature cache: a single backbone's, or a
feature ensemble's, each member cached on its own (a member at its own input size shares its
features with single runs of it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from ..data.types import ImageRef
from ..models.ensemble import FeatureEnsemble
from ..models.network import Network
from ..models.preprocess import Preprocess
from ..models.weights import WeightsInfo
from .extract import Extracted, device_decoding, extractor_key, frozen_features


def network_features(network: Network, backbone: str, weights: WeightsInfo, pre: Preprocess,
                     images: list[ImageRef], desc: str, device: str, cache: Path | None, runtime: str,
                     views: int, batch_size: int, progress: bool, stores: dict) -> Extracted:
    """Features of the readable `images` (rows in order; `.ok` marks them), from `cache` where
    they are and computed (then kept) where not. `stores` keeps open feature stores between calls."""
    def member(name: str, identity: str, net: Network, what: str, pooling: str | None) -> Extracted:
        key = extractor_key(name, identity, pre, views, pooling, device_decoding(device, pre))
        return frozen_features(net, images, pre, key, cache, runtime, device, stores, batch_size=batch_size,
                               progress=progress, desc=what)

    body = network.backbone
    if not isinstance(body, FeatureEnsemble):
        return member(backbone, weights.identity, network, desc, getattr(body, "pooling", None))
    identities = weights.members or (weights.identity,)
    parts = [member(name, identities[k], Network(body.part(k), nn.Identity(), pre.mean, pre.std, pre.input_size),
                    f"{desc} ({name})" if len(body.names) > 1 else desc, getattr(body.members[k], "pooling", None))
             for k, name in enumerate(body.names)]
    ok = np.logical_and.reduce([p.ok for p in parts])
    # Every member decodes the same files, so they fail on the same ones; rows of the readable.
    features = np.concatenate([p.features[ok[p.ok]] for p in parts], 1)
    return Extracted(features, ok, parts[0].failures, computed=sum(p.computed for p in parts),
                     cached=sum(p.cached for p in parts), forward_seconds=sum(p.forward_seconds for p in parts),
                     torch_seconds=sum(p.torch_seconds for p in parts))
