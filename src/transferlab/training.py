"""Training a network on pixels (frozen, finetune, reinit, scratch): build it, decode the images
once, augment, and run the strategy's phases in the engine."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig
from .data.augment import AugmentOptions, build_augment, build_batch_mix
from .data.loader import PixelBatches, channel_stats
from .data.sources import ImageSet
from .engine import FitResult, Trainer, TrainSettings
from .models.backbones import create_backbone, feature_dim
from .models.heads import build_head
from .models.network import Network
from .models.preprocess import Preprocess
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
                checkpoint_dir: Path | None = None, resume: dict | None = None,
                progress: bool = True) -> tuple[FitResult, Preprocess]:
    """Train with the strategy's phases; returns the result and the (possibly featurewise) preprocessing."""
    if cfg.featurewise_norm:
        mean, std = channel_stats(train, pre)
        network.normalize.set_stats(mean, std)
        pre = replace(pre, mean=mean, std=std)
        log.info(f"featurewise normalisation: mean {np.round(mean, 3).tolist()} std {np.round(std, 3).tolist()}")
    aug = AugmentOptions(preset=cfg.augment, scale_min=cfg.scale_min, width_shift=cfg.width_shift,
                         height_shift=cfg.height_shift, rotation=cfg.rotation, zoom=cfg.zoom,
                         hflip=cfg.hflip, magnitude=cfg.magnitude, mixup=cfg.mixup, cutmix=cfg.cutmix)
    augment = build_augment(aug, pre.input_size)
    train_src = PixelBatches(train, pre, cfg.batch_size, augment, shuffle=True,
                             balanced=cfg.balance == "sampler")
    val_src = PixelBatches(val, pre, cfg.batch_size) if val is not None else None
    class_weights = None
    if cfg.balance == "weights":
        counts = np.bincount(train.labels, minlength=len(train.classes))
        class_weights = (len(train.labels) / (len(counts) * np.maximum(counts, 1))).tolist()
    device = resolve_device(cfg.device)
    settings = TrainSettings(
        optimizer=cfg.optimizer, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
        nesterov=cfg.nesterov, schedule=cfg.schedule, milestones=cfg.milestone_list(), gamma=cfg.gamma,
        label_smoothing=cfg.label_smoothing, class_weights=class_weights, monitor=cfg.monitor,
        patience=cfg.patience, min_delta=cfg.min_delta, seed=cfg.seed, device=device,
        amp=cfg.amp, channels_last=True)
    if cfg.compile:
        network.compile()
    trainer = Trainer(network, settings, checkpoint_dir, progress, build_batch_mix(aug, len(train.classes)),
                      fingerprint(train, val))
    result = trainer.fit(phases(cfg, network), train_src, val_src, resume)
    network.to("cpu").eval()
    return result, pre


def head_only_settings(cfg: RunConfig) -> TrainSettings:
    """Settings for training a head on cached features (the `features` strategy's MLP head)."""
    return TrainSettings(optimizer=cfg.optimizer, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                         schedule=cfg.schedule, label_smoothing=cfg.label_smoothing,
                         monitor=cfg.monitor, patience=cfg.patience, min_delta=cfg.min_delta,
                         seed=cfg.seed, device="cpu", channels_last=False)

