"""Doing less work on a CPU without changing the result: the frozen front of the network runs once
per cached view, and a time budget picks how many epochs fit."""

import time

import numpy as np
import pytest
import torch
from torch import nn

import transferlab
from transferlab.training import prefix_cache
from transferlab.config import RunConfig
from transferlab.data.augment import AugmentOptions, build_augment
from transferlab.training.batches import PixelBatches
from transferlab.data.sources import load_source
from transferlab.training.engine import apply_phase, epoch_seed
from transferlab.training.strategies import phases, resolve
from transferlab.models.factory import ModelSpec, build_model

RGB = ("red", "green", "blue")


def test_cached_prefix_and_pixels_give_the_same_first_step_loss_and_gradients(hymenoptera, tmp_path):
    """Same batch, same augmented view: the loss and every gradient agree within fp16 storage."""
    data = load_source(hymenoptera).images
    batch = data.subset(np.r_[0:6, len(data) - 6:len(data)])
    cfg = resolve(RunConfig.from_dict({"strategy": "finetune", "unfreeze": "1", "image_size": 96,
                                       "dropout": 0.0}))
    net, pre, _ = build_model(ModelSpec.from_options(cfg.to_dict(), 2))
    tune = phases(cfg, net)[-1]
    apply_phase(net, tune)
    plan = prefix_cache.plan(net, [tune], pre, len(batch), 0, 1, 512, tmp_path)
    assert plan.use and plan.chain[plan.cut][0] == "blocks.6"
    augment = build_augment(AugmentOptions(), pre.input_size)
    cache = prefix_cache.PrefixCache(plan, tmp_path)
    store = cache.build(net, batch, pre, augment, 1, seed=7, batch_size=12, name="train", progress=False)
    apply_phase(net, tune)  # building put the network in eval mode; training modes again
    # the same view, from pixels: the cache seeds each view pass this way
    torch.manual_seed(epoch_seed(7, 100_000, 0))
    x, y = next(PixelBatches(batch, pre, 12, augment).batches(0))
    trainable = [p for p in net.parameters() if p.requires_grad]

    def loss_and_grads(forward, inputs):
        net.zero_grad()
        loss = nn.functional.cross_entropy(forward(inputs), y)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in trainable]

    x = x.contiguous(memory_format=torch.channels_last)
    loss_pixels, grads_pixels = loss_and_grads(net, x)
    # 1. the cache holds this very view: the prefix output, rounded to fp16
    with torch.no_grad():
        h32 = prefix_cache._run(plan.chain[:plan.cut], net.normalize(x))
    stored = torch.from_numpy(store[:, 0]).float()
    assert torch.allclose(stored, h32, rtol=1e-3, atol=1e-3 * h32.abs().max())
    # 2. cutting the network there changes nothing: same loss and gradients in float32
    loss_cut, grads_cut = loss_and_grads(prefix_cache.suffix_forward(net, plan), h32)
    assert loss_cut == pytest.approx(loss_pixels, rel=1e-5)
    for a, b in zip(grads_pixels, grads_cut):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * a.abs().max())
    # 3. and from the fp16 cache itself, the same step within fp16 rounding
    loss_cached, grads_cached = loss_and_grads(prefix_cache.suffix_forward(net, plan), stored)
    assert loss_cached == pytest.approx(loss_pixels, rel=1e-3)
    for a, b in zip(grads_pixels, grads_cached):
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999
    cache.close()


FAST = dict(backbone="mobilenetv2_050", weights="none", image_size=32, batch_size=8, strategy="finetune",
            head_epochs=2, epochs=3, unfreeze="2", patience=10, progress=False)


def test_the_frozen_strategy_caches_pooled_features(colour_folder, tmp_path):
    run = transferlab.train(colour_folder(tmp_path / "data", RGB, 10, 40), out=tmp_path / "runs",
                            **{**FAST, "strategy": "frozen", "epochs": 3})
    assert run.metrics["fit"]["path"].startswith("cached prefix up to the pooled features")


@pytest.mark.slow
def test_a_cache_beyond_the_memory_budget_goes_to_disk_and_trains_the_same(colour_folder, tmp_path):
    data = colour_folder(tmp_path / "data", RGB, 10, 40)
    in_memory = transferlab.train(data, out=tmp_path / "runs", name="memory", **FAST)
    on_disk = transferlab.train(data, out=tmp_path / "runs", name="disk", cache_memory_mb=0,
                                cache_dir=tmp_path / "cache", **FAST)
    assert "in memory" in in_memory.metrics["fit"]["path"] and "on disk" in on_disk.metrics["fit"]["path"]
    a = transferlab.ImageClassifier.load(in_memory.path).network_.state_dict()
    b = transferlab.ImageClassifier.load(on_disk.path).network_.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list((tmp_path / "cache").glob("prefix-*")) == []  # the temporary cache is gone


def test_mixup_falls_back_to_pixels_and_says_why(colour_folder, tmp_path):
    run = transferlab.train(colour_folder(tmp_path / "data", RGB, 10, 40), out=tmp_path / "runs",
                            mixup=0.2, **FAST)
    assert run.metrics["fit"]["path"].startswith("pixels (mixup/cutmix")


@pytest.mark.slow
def test_a_budgeted_run_ends_within_its_budget_plus_one_epoch(colour_folder, tmp_path):
    data = colour_folder(tmp_path / "data", RGB, 40, 48)
    budget_minutes = 0.25
    started = time.perf_counter()
    run = transferlab.train(data, out=tmp_path / "runs", budget=budget_minutes, prefix_cache=False,
                            **{**FAST, "image_size": 48, "head_epochs": 1000, "epochs": 1000, "patience": 1000})
    elapsed = time.perf_counter() - started
    history = run.classifier.history_
    longest_epoch = max(r["seconds"] for r in history)
    assert 2 < len(history) < 2000
    assert {r["phase"] for r in history} == {"head", "finetune"}  # both phases got their share
    assert elapsed <= budget_minutes * 60 + longest_epoch + 1.0, (elapsed, longest_epoch)
    assert elapsed >= budget_minutes * 60 * 0.6  # it used the time it was given
