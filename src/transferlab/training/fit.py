"""Training a network on pixels (frozen, finetune, reinit, bilinear, scratch): decode the images
once, augment, cache the frozen prefix where it can be cut, and run the strategy's phases in the
engine."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from ..common.paths import cache_root
from ..config import RunConfig
from ..data.augment import AugmentOptions, build_augment, build_batch_mix
from ..data.types import ImageSet
from ..errors import TransferlabError
from ..models.network import Network
from ..models.preprocess import Preprocess
from . import prefix_cache
from .batches import PixelBatches, channel_stats
from .callbacks import Callback
from .ema import EMA
from .lr_find import LRSweep, sweep_phase
from .resizing import ProgressiveResizing, SizedBatches
from .distributed import current
from .engine import FitResult, Trainer, TrainSettings
from .strategies import phases

log = logging.getLogger("transferlab")


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def fingerprint(*sets: ImageSet | None) -> str:
    """Changes when any image or label of the given splits does: a resumed run must see the same data."""
    digest = hashlib.sha1()
    for s in sets:
        if s is not None:
            for ref, label in zip(s.images, s.labels):
                digest.update(f"{ref.key}={label};".encode())
        digest.update(b"|")
    return digest.hexdigest()


def train_settings(cfg: RunConfig, device: str = "cpu", class_weights: list[float] | None = None,
                   channels_last: bool = True) -> TrainSettings:
    return TrainSettings(
        optimizer=cfg.optimizer, weight_decay=cfg.weight_decay, momentum=cfg.momentum, nesterov=cfg.nesterov,
        schedule=cfg.schedule, milestones=cfg.milestone_list(), gamma=cfg.gamma,
        label_smoothing=cfg.label_smoothing, class_weights=class_weights, monitor=cfg.monitor,
        patience=cfg.patience, min_delta=cfg.min_delta, seed=cfg.seed, device=device, amp=cfg.amp,
        channels_last=channels_last, accumulate=cfg.accumulate, clip_grad=cfg.clip_grad)


def tool_callbacks(cfg: RunConfig) -> list[Callback]:
    """The training tools a configuration switches on, as callbacks."""
    return [EMA(cfg.ema)] if cfg.ema else []


def check_sizes(cfg: RunConfig, pre: Preprocess) -> tuple[int, ...]:
    """--sizes, checked against the network's input size (before any image is decoded)."""
    sizes = cfg.size_list()
    if sizes and sizes[-1] != pre.input_size:
        raise TransferlabError(f"--sizes {cfg.sizes} must end at the network's input size, {pre.input_size} px: "
                               f"end the list with {pre.input_size} (or give --image-size {sizes[-1]})")
    return sizes


def fit_network(network: Network, cfg: RunConfig, pre: Preprocess, train: ImageSet, val: ImageSet | None,
                progress: bool = True, callbacks: Sequence[Callback] = (), sweep: LRSweep | None = None
                ) -> tuple[FitResult, Preprocess, prefix_cache.Plan]:
    """Train with the strategy's phases. Returns the result, the (possibly featurewise)
    preprocessing, and the plan that ran (cached prefix or pixels, and the cache's build time).
    With `sweep`, run the learning-rate sweep instead: the first phase that trains, no
    validation (the caller passes a copy of the network)."""
    if cfg.featurewise_norm:
        mean, std = channel_stats(train, pre)
        network.normalize.set_stats(mean, std)
        pre = replace(pre, mean=mean, std=std)
        log.info(f"featurewise normalisation: mean {np.round(mean, 3).tolist()} std {np.round(std, 3).tolist()}")
    aug = AugmentOptions(preset=cfg.augment, scale_min=cfg.scale_min, width_shift=cfg.width_shift,
                         height_shift=cfg.height_shift, rotation=cfg.rotation, zoom=cfg.zoom,
                         hflip=cfg.hflip, magnitude=cfg.magnitude, mixup=cfg.mixup, cutmix=cfg.cutmix)
    sizes = check_sizes(cfg, pre) or (pre.input_size,)
    mix = build_batch_mix(aug, len(train.classes))
    world = current()
    # --batch-size is the global batch: each of N ranks takes 1/N of it, so a recipe's learning
    # rate means the same on one process and on several.
    batch_size = -(-cfg.batch_size // world.size)
    strategy_phases = phases(cfg, network)
    if sweep is not None:
        first = next(p for p in strategy_phases if p.epochs)
        steps_per_epoch = math.ceil(math.ceil(len(train) / batch_size) / cfg.accumulate)
        strategy_phases, val, sizes = [sweep_phase(first, steps_per_epoch, sweep.steps)], None, sizes[-1:]
    cache_dir = cache_root(cfg.cache_dir)
    smaller = sum((s / pre.input_size) ** 2 for s in sizes[:-1])
    plan = prefix_cache.plan(network, strategy_phases, pre, len(train), len(val) if val is not None else 0,
                             cfg.cache_views, cfg.cache_memory_mb, cache_dir,
                             enabled=cfg.prefix_cache, mixing=mix is not None, train_scale=1 + smaller)
    log.info(f"training path: {plan.describe()}" + (f"; progressive sizes {', '.join(map(str, sizes))} px"
                                                   if len(sizes) > 1 else ""))
    device = resolve_device(cfg.device)
    if world.size > 1:
        log.info(f"data-parallel on {world.size} ranks: {batch_size} images per rank and step")
    cache = None
    try:
        sources = {}
        if plan.use:
            network.to(device)
            building = time.perf_counter()
            cache = prefix_cache.PrefixCache(plan, cache_dir)
            graphs = cache_dir if cfg.feature_cache else None  # the front's graph, kept beside the features
            batch = max(cfg.batch_size, 64)
            for size in sizes:
                at = replace(pre, input_size=size)
                name = "train" if size == pre.input_size else f"train {size} px"
                sources[size] = prefix_cache.CachedActivations(
                    cache.build(network, train, at, build_augment(aug, size), plan.views, cfg.seed, batch, name,
                                progress, cfg.runtime, graphs),
                    train.labels, batch_size, shuffle=True, balanced=cfg.balance == "sampler", world=world)
            val_src = prefix_cache.CachedActivations(
                cache.build(network, val, pre, None, 1, cfg.seed, batch, "val", progress, cfg.runtime, graphs),
                val.labels, 256, shuffle=False, world=world) if val is not None else None
            forward = prefix_cache.suffix_forward(network, plan)
            plan.build_seconds = time.perf_counter() - building
        else:
            for size in sizes:
                sources[size] = PixelBatches(train, replace(pre, input_size=size), batch_size,
                                             build_augment(aug, size), shuffle=True,
                                             balanced=cfg.balance == "sampler", world=world)
            val_src = PixelBatches(val, pre, batch_size, world=world) if val is not None else None
            forward = prefix_cache.split_forward(network, plan)
        train_src = sources[pre.input_size] if len(sizes) == 1 else SizedBatches(sources)
        class_weights = None
        if cfg.balance == "weights":
            counts = np.bincount(train.labels, minlength=len(train.classes))
            class_weights = (len(train.labels) / (len(counts) * np.maximum(counts, 1))).tolist()
        if cfg.compile:
            network.compile()
        tools = [sweep] if sweep is not None else tool_callbacks(cfg) + (
            [ProgressiveResizing(sizes)] if len(sizes) > 1 else [])
        trainer = Trainer(network, train_settings(cfg, device, class_weights), callbacks=[*tools, *callbacks],
                          progress=progress, mix=mix, fingerprint=fingerprint(train, val), forward=forward)
        result = trainer.fit(strategy_phases, train_src, val_src)
    finally:
        if cache is not None:
            cache.close()
    network.to("cpu").eval()
    return result, pre, plan
