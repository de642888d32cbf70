"""Training a network on pixels (frozen, finetune, reinit, scratch): build it, decode the images
once, augment, and run the strategy's phases in the engine."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig
from .data.augment import AugmentOptions, build_augment, build_batch_mix
from .data.loader import PixelBatches, channel_stats
from .data.sources import ImageSet
from . import prefix_cache
from .distributed import current
from .engine import FitResult, Trainer, TrainSettings
from .features import default_cache_dir
from .models.backbones import create_backbone, feature_dim
from .models.heads import build_head
from .models.network import Network
from .models.preprocess import Preprocess
from .models.tapped import bilinear_network
from .report.tensorboard import epoch_writer
from .models.weights import WeightsInfo
from .strategies import phases, reinit_last_stages

log = logging.getLogger("transferlab")


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build_network(cfg: RunConfig, num_classes: int) -> tuple[Network, Preprocess, WeightsInfo]:
    backbone, pre, info = create_backbone(cfg.backbone, cfg.weights, cfg.image_size, cfg.seed)
    if cfg.strategy == "reinit":
        reinit_last_stages(backbone, cfg.backbone, cfg.reinit, cfg.seed)
    if cfg.strategy == "bilinear":
        net2 = renorm2 = None
        if cfg.backbone2:
            net2, pre2, info2 = create_backbone(cfg.backbone2, cfg.weights2, pre.input_size, cfg.seed)
            renorm2 = (pre.mean, pre.std, pre2.mean, pre2.std)
            log.info(f"second backbone {cfg.backbone2}: {info2.description}")
        return bilinear_network(cfg, backbone, net2, renorm2, pre.mean, pre.std, num_classes), pre, info
    torch.manual_seed(cfg.seed)
    head = build_head(cfg.head, feature_dim(backbone), num_classes, cfg.dropout)
    return Network(backbone, head, pre.mean, pre.std), pre, info


def fingerprint(*sets: ImageSet | None) -> str:
    """Changes when any image or label of the given splits does: a resumed run must see the same data."""
    digest = hashlib.sha1()
    for s in sets:
        if s is not None:
            for ref, label in zip(s.images, s.labels):
                digest.update(f"{ref.key}={label};".encode())
        digest.update(b"|")
    return digest.hexdigest()


def fit_network(network: Network, cfg: RunConfig, pre: Preprocess, train: ImageSet, val: ImageSet | None,
                checkpoint_dir: Path | None = None, resume: dict | None = None, progress: bool = True,
                reserve_images: int = 0, started: float | None = None) -> tuple[FitResult, Preprocess, str]:
    """Train with the strategy's phases. Returns the result, the (possibly featurewise)
    preprocessing, and which path ran (cached prefix or pixels).

    With cfg.budget (minutes, counted from `started`), epochs end early enough that the run,
    including scoring `reserve_images` afterwards, finishes within the budget plus one epoch.
    """
    started = started or time.perf_counter()
    if cfg.featurewise_norm:
        mean, std = channel_stats(train, pre)
        network.normalize.set_stats(mean, std)
        pre = replace(pre, mean=mean, std=std)
        log.info(f"featurewise normalisation: mean {np.round(mean, 3).tolist()} std {np.round(std, 3).tolist()}")
    aug = AugmentOptions(preset=cfg.augment, scale_min=cfg.scale_min, width_shift=cfg.width_shift,
                         height_shift=cfg.height_shift, rotation=cfg.rotation, zoom=cfg.zoom,
                         hflip=cfg.hflip, magnitude=cfg.magnitude, mixup=cfg.mixup, cutmix=cfg.cutmix)
    augment = build_augment(aug, pre.input_size)
    mix = build_batch_mix(aug, len(train.classes))
    strategy_phases = phases(cfg, network)
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    plan = prefix_cache.plan(network, strategy_phases, pre, len(train), len(val) if val is not None else 0,
                             cfg.cache_views, cfg.cache_memory_mb, cache_root,
                             enabled=cfg.prefix_cache, mixing=mix is not None)
    log.info(f"training path: {plan.describe()}")
    device = resolve_device(cfg.device)
    world = current()
    # --batch-size is the global batch: each of N ranks takes 1/N of it, so a recipe's learning
    # rate means the same on one process and on several.
    batch_size = -(-cfg.batch_size // world.size)
    if world.size > 1:
        log.info(f"data-parallel on {world.size} ranks: {batch_size} images per rank and step")
    cache = board = None
    try:
        if plan.use:
            network.to(device)
            cache = prefix_cache.PrefixCache(plan, cache_root)
            batch = max(cfg.batch_size, 64)
            train_src = prefix_cache.CachedActivations(
                cache.build(network, train, pre, augment, plan.views, cfg.seed, batch, "train", progress),
                train.labels, batch_size, shuffle=True, balanced=cfg.balance == "sampler", world=world)
            val_src = prefix_cache.CachedActivations(
                cache.build(network, val, pre, None, 1, cfg.seed, batch, "val", progress),
                val.labels, 256, shuffle=False, world=world) if val is not None else None
            forward = prefix_cache.suffix_forward(network, plan)
        else:
            train_src = PixelBatches(train, pre, batch_size, augment, shuffle=True,
                                     balanced=cfg.balance == "sampler", world=world)
            val_src = PixelBatches(val, pre, batch_size, world=world) if val is not None else None
            forward = prefix_cache.split_forward(network, plan)
        deadline = None
        if cfg.budget is not None:
            reserve = reserve_images * _seconds_per_image(network, val or train, pre, device)
            deadline = started + cfg.budget * 60 - reserve
        class_weights = None
        if cfg.balance == "weights":
            counts = np.bincount(train.labels, minlength=len(train.classes))
            class_weights = (len(train.labels) / (len(counts) * np.maximum(counts, 1))).tolist()
        settings = TrainSettings(
            optimizer=cfg.optimizer, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
            nesterov=cfg.nesterov, schedule=cfg.schedule, milestones=cfg.milestone_list(), gamma=cfg.gamma,
            label_smoothing=cfg.label_smoothing, class_weights=class_weights, monitor=cfg.monitor,
            patience=cfg.patience, min_delta=cfg.min_delta, seed=cfg.seed, device=device,
            amp=cfg.amp, channels_last=True)
        if cfg.compile:
            network.compile()
        board = epoch_writer(checkpoint_dir, cfg.tensorboard)
        trainer = Trainer(network, settings, checkpoint_dir, progress, mix, fingerprint(train, val),
                          on_epoch=board, forward=forward, deadline=deadline)
        result = trainer.fit(strategy_phases, train_src, val_src, resume)
    finally:
        if cache is not None:
            cache.close()
        if board is not None:
            board.close()
    network.to("cpu").eval()
    return result, pre, plan.describe()


def _seconds_per_image(network: Network, images: ImageSet, pre: Preprocess, device: str) -> float:
    """Inference time per image through the whole network, measured on one batch."""
    x, _ = next(PixelBatches(images.subset(np.arange(min(16, len(images)))), pre, 16).batches(0))
    network.eval().to(device)
    with torch.inference_mode():
        network(x.to(device))  # the first call pays one-off costs
        start = time.perf_counter()
        network(x.to(device))
    return (time.perf_counter() - start) / len(x)


def head_only_settings(cfg: RunConfig) -> TrainSettings:
    """Settings for training a head on cached features (the `features` strategy's MLP head)."""
    return TrainSettings(optimizer=cfg.optimizer, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                         schedule=cfg.schedule, label_smoothing=cfg.label_smoothing,
                         monitor=cfg.monitor, patience=cfg.patience, min_delta=cfg.min_delta,
                         seed=cfg.seed, device="cpu", channels_last=False)

