"""The training engine and the strategies: what trains, what stays frozen, schedules, early
stopping, checkpoints and resume."""

import math
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import transferlab
from transferlab.config import RunConfig
from transferlab.training.batches import PixelBatches, TensorBatches
from transferlab.data.sources import load_source
from transferlab.training.engine import Phase, Trainer, TrainSettings, apply_phase
from transferlab.models.stages import last_stages, module_chain, stage_groups
from transferlab.training.optim import build_optimizer, build_schedule
from transferlab.training.strategies import phases, resolve
from transferlab.models.factory import ModelSpec, build_model
from transferlab.training.fit import fit_network


RGB = ("red", "green", "blue")


@pytest.fixture
def setup(tmp_path, colour_folder):
    """Factory: a resolved config, a network built for it, and train/val sets of a colour task."""
    def make(root=None, **options):
        root = root or tmp_path
        data = load_source(colour_folder(root / "data", RGB, 12, 40)).images
        cfg = resolve(RunConfig.from_dict({"backbone": "mobilenetv2_050", "weights": "none",
                                           "image_size": 32, "batch_size": 8, **options}))
        network, pre, _ = build_model(ModelSpec.from_options(cfg.to_dict(), len(data.classes)))
        train, val = data.subset(np.arange(0, len(data), 2)), data.subset(np.arange(1, len(data), 2))
        return cfg, network, pre, train, val
    return make


def _bn_stats(module):
    return {n: b.clone() for n, b in module.named_buffers() if "running" in n}


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# -- which parameters and statistics change ---------------------------------------------------------

def test_frozen_batchnorm_statistics_do_not_move_while_the_head_trains(setup):
    cfg, net, pre, train, val = setup(strategy="frozen", epochs=2)
    before_bn, before = _bn_stats(net.backbone), _params(net)
    fit_network(net, cfg, pre, train, val, progress=False)
    after_bn, after = _bn_stats(net.backbone), _params(net)
    assert all(torch.equal(before_bn[n], after_bn[n]) for n in before_bn)
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith("backbone."))
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])


def test_in_phase_two_only_the_unfrozen_stages_and_the_head_change(setup):
    cfg, net, pre, train, val = setup(strategy="finetune", unfreeze="2", head_epochs=1,
                                       epochs=2, monitor="val_accuracy", patience=10)
    unfrozen = {"backbone." + n for n in last_stages(net.backbone, 2)}
    assert unfrozen and len(unfrozen) < len([n for n, _ in net.backbone.named_parameters()])
    before_bn, before = _bn_stats(net.backbone), _params(net)
    result, _, _ = fit_network(net, cfg, pre, train, val, progress=False)
    assert [r["phase"] for r in result.history] == ["head", "finetune", "finetune"]
    after = _params(net)
    for name in before:
        if name.startswith("backbone.") and name not in unfrozen:
            assert torch.equal(before[name], after[name]), f"{name} is frozen but changed"
    assert any(not torch.equal(before[n], after[n]) for n in unfrozen)
    # BatchNorm statistics stay frozen in phase 2 unless asked
    assert all(torch.equal(v, _bn_stats(net.backbone)[n]) for n, v in before_bn.items())


def test_asking_for_batchnorm_updates_moves_only_the_unfrozen_statistics(setup):
    cfg, net, pre, train, val = setup(strategy="finetune", unfreeze="1", head_epochs=0,
                                       epochs=1, bn_update=True)
    unfrozen_modules = {"backbone." + n.rpartition(".")[0] for n in last_stages(net.backbone, 1)}
    before = _bn_stats(net)
    fit_network(net, cfg, pre, train, val, progress=False)
    after = _bn_stats(net)
    moved = {n.rpartition(".")[0] for n in before if not torch.equal(before[n], after[n])}
    assert moved and moved <= unfrozen_modules


def test_a_frozen_prefix_keeps_no_activations_for_backward(setup, tmp_path):
    """With the backbone frozen, autograd saves only what the head needs."""
    cfg, net, pre, train, val = setup(strategy="frozen")
    apply_phase(net, phases(cfg, net)[0])
    x = next(PixelBatches(train, pre, 8).batches(0))[0]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        net(x).sum().backward()
    assert 0 < len(saved) <= 4, saved
    cfg, net, pre, train, val = setup(tmp_path / "b", strategy="finetune", unfreeze="all")
    apply_phase(net, phases(cfg, net)[-1])
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        net(x).sum().backward()
    assert len(saved) > 50  # the whole network trains: the hook itself works


def test_reinit_gives_the_last_stages_fresh_weights_and_keeps_the_rest(tmp_path, colour_folder):
    data = load_source(colour_folder(tmp_path / "data", RGB, 12, 40)).images
    base = resolve(RunConfig.from_dict({"backbone": "tf_efficientnet_lite0", "image_size": 32, "strategy": "frozen"}))
    pretrained, _, info = build_model(ModelSpec.from_options(base.to_dict(), 3))
    assert info.source == "packaged"
    cfg = resolve(RunConfig.from_dict({"backbone": "tf_efficientnet_lite0", "image_size": 32,
                                       "strategy": "reinit", "reinit": 2}))
    fresh, _, _ = build_model(ModelSpec.from_options(cfg.to_dict(), len(data.classes)))
    reinit = {"backbone." + n for n in last_stages(fresh.backbone, 2)}
    old, new = _params(pretrained), _params(fresh)
    for name in old:
        if name.startswith("backbone."):
            assert torch.equal(old[name], new[name]) == (name not in reinit), name
    (ph,) = phases(cfg, fresh)
    trained = {n for names, _ in ph.groups for n in names}
    assert trained == reinit | {n for n in new if n.startswith("head.")}
    assert ph.bn_update  # fresh BatchNorm layers learn their statistics


# -- stages, chain, schedules, optimizers -------------------------------------------------------------

@pytest.mark.parametrize("name, count", [("tf_efficientnet_lite0", 8), ("resnet50", 5),
                                         pytest.param("vgg16", 14, marks=pytest.mark.slow)])
def test_stages_follow_timms_groups_and_cover_every_parameter(name, count):
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=0)
    groups = stage_groups(model)
    assert len(groups) == count
    assert sorted(n for g in groups for n in g) == sorted(n for n, _ in model.named_parameters())
    assert last_stages(model, "all") == [n for g in groups for n in g]


def test_the_module_chain_reproduces_cnn_backbones_and_refuses_a_vit():
    import timm

    for name in ("tf_efficientnet_lite0", "resnet50", "mobilenetv2_100"):
        assert module_chain(timm.create_model(name, pretrained=False, num_classes=0)) is not None, name
    assert module_chain(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                                          img_size=64)) is None


def test_the_step_schedule_drops_the_rate_at_its_milestones():
    p = nn.Parameter(torch.zeros(2, 2))
    opt = build_optimizer([([("w", p)], 0.1)], "sgd", 5e-4)
    sched = build_schedule(opt, "step", steps_per_epoch=4, epochs=60, milestones=(25, 50), gamma=0.1)
    rates = []
    for _ in range(60 * 4):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[0] == pytest.approx(0.1) and rates[24 * 4] == pytest.approx(0.1)
    assert rates[25 * 4] == pytest.approx(0.01) and rates[50 * 4] == pytest.approx(0.001)


def test_cosine_warms_up_then_decays_and_onecycle_peaks_in_between():
    p = nn.Parameter(torch.zeros(2, 2))
    opt = build_optimizer([([("w", p)], 1.0)], "adamw", 0.01)
    sched = build_schedule(opt, "cosine", steps_per_epoch=10, epochs=10, warmup_epochs=1)
    rates = []
    for _ in range(100):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[10] > rates[50] > rates[99] and rates[99] < 0.01
    opt = build_optimizer([([("w", p)], 1.0)], "sgd", 0.0)
    sched = build_schedule(opt, "onecycle", steps_per_epoch=10, epochs=10)
    rates = []
    for _ in range(100):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    peak = int(np.argmax(rates))
    assert 10 < peak < 90 and rates[peak] == pytest.approx(1.0, rel=0.05) and rates[0] < 0.1


@pytest.mark.parametrize("name", ["adamw", "sgd", "adam", "rmsprop"])
def test_every_optimizer_trains_and_biases_get_no_weight_decay(name):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = build_optimizer([(list(model.named_parameters()), 0.05)], name, 0.1)
    decays = {tuple(g["params"][0].shape): g["weight_decay"] for g in opt.param_groups}
    assert decays[(2, 4)] == 0.1 and decays[(2,)] == 0.0
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    first = nn.functional.cross_entropy(model(x), y).item()
    for _ in range(50):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert nn.functional.cross_entropy(model(x), y).item() < first


def test_each_phase_gets_its_own_learning_rates(setup):
    cfg, net, pre, train, val = setup(strategy="finetune", lr=0.01, backbone_lr_mult=0.1)
    head_phase, tune = phases(cfg, net)
    assert [lr for _, lr in head_phase.groups] == [0.01]
    assert [lr for _, lr in tune.groups] == [0.01, pytest.approx(0.001)]
    assert tune.warmup_epochs == 1.0


# -- early stopping, sampling --------------------------------------------------------------------------

def test_early_stopping_restores_the_best_weights_and_records_their_epoch():
    """Random labels: validation loss gets worse as the head memorises; training stops after
    `patience` bad epochs and the weights are those of the best epoch."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 16), torch.randint(0, 2, (64,))
    xv, yv = torch.randn(64, 16), torch.randint(0, 2, (64,))
    model = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 2))
    trainer = Trainer(model, TrainSettings(patience=3, seed=0, channels_last=False, schedule="constant"),
                      progress=False)
    phase = Phase("head", 200, [([n for n, _ in model.named_parameters()], 0.01)])
    result = trainer.fit([phase], TensorBatches(x, y, 16, shuffle=True), TensorBatches(xv, yv, 64))
    losses = [r["val_loss"] for r in result.history]
    assert len(result.history) < 200
    assert result.best_epoch == int(np.argmin(losses)) + 1 == len(losses) - 3
    assert trainer.evaluate(TensorBatches(xv, yv, 64))[0] == pytest.approx(min(losses), rel=1e-5)


def test_the_balanced_sampler_draws_every_class_equally_often(tmp_path, colour_folder):
    data = load_source(colour_folder(tmp_path / "data", RGB, 4, 40)).images
    rare = data.subset(np.r_[np.flatnonzero(data.labels == 0), np.flatnonzero(data.labels == 1)[:1],
                             np.flatnonzero(data.labels == 2)[:2]])
    from transferlab.models.preprocess import Preprocess

    batches = PixelBatches(rare, Preprocess(32, 1.0, "bilinear", (0.5,) * 3, (0.5,) * 3), 8, balanced=True)
    drawn = np.concatenate([rare.labels[batches.order(seed)] for seed in range(300)])
    share = np.bincount(drawn) / len(drawn)
    assert np.allclose(share, 1 / 3, atol=0.03), share
    assert not np.array_equal(batches.order(1), batches.order(2))


# -- runs: checkpoint, resume, curves ------------------------------------------------------------------

FAST = dict(backbone="mobilenetv2_050", weights="none", image_size=32, batch_size=8, strategy="finetune",
            head_epochs=2, epochs=3, unfreeze="2", patience=10, progress=False)


def test_a_trained_run_writes_history_curves_and_no_leftover_checkpoint(tmp_path, colour_folder):
    run = transferlab.train(colour_folder(tmp_path / "data", RGB, 12, 40), out=tmp_path / "runs", name="r", **FAST)
    names = sorted(p.name for p in run.path.iterdir())
    assert names == ["config.yaml", "curves.png", "history.csv", "metrics.json", "model.json", "model.safetensors",
                     "report.html", "unknown.json", "unknown.safetensors"]
    assert run.metrics["fit"]["phases"] == ["head", "finetune"]
    assert len(run.classifier.history_) == 5
    saved = RunConfig.from_yaml(run.path / "config.yaml")
    assert saved.optimizer == "adamw" and saved.head == "linear" and saved.epochs == 3  # resolved values
    reloaded = transferlab.ImageClassifier.load(run.path)
    images = [str(p) for p in sorted((tmp_path / "data" / "red").glob("*.png"))[:4]]
    assert np.allclose(reloaded.predict_proba(images), run.classifier.predict_proba(images), atol=1e-5)


CHILD = """
import os, signal, sys
import transferlab
from transferlab.training import prefix_cache
from transferlab.training import batches as loader

epochs_started = [0]

def dying(original):
    def batches(self, seed):
        training = getattr(self, "shuffle", False)
        if training:
            epochs_started[0] += 1
        for k, batch in enumerate(original(self, seed)):
            if training and epochs_started[0] == 4 and k == 1:
                os.kill(os.getpid(), signal.SIGKILL)   # killed mid-epoch, no clean-up of any kind
            yield batch
    return batches

loader.PixelBatches.batches = dying(loader.PixelBatches.batches)
prefix_cache.CachedActivations.batches = dying(prefix_cache.CachedActivations.batches)
transferlab.train(sys.argv[1], out=sys.argv[2], name="interrupted", **{OPTIONS})
"""


@pytest.mark.slow
@pytest.mark.parametrize("cached", [True, False], ids=["cached-prefix", "pixels"])
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path, colour_folder, cached):
    data = colour_folder(tmp_path / "data", RGB, 12, 40)
    options = {**FAST, "prefix_cache": cached}
    child = tmp_path / "child.py"
    child.write_text(CHILD.replace("{OPTIONS}", repr(options)))
    proc = subprocess.run([sys.executable, str(child), str(data), str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    interrupted = tmp_path / "runs" / "interrupted"
    assert (interrupted / "checkpoint.pt").is_file() and not (interrupted / "metrics.json").exists()
    with pytest.raises(transferlab.TransferlabError, match="has not finished"):
        transferlab.ImageClassifier.load(interrupted)
    resumed = transferlab.train(resume=interrupted, progress=False)
    assert [r["epoch"] for r in resumed.classifier.history_] == [1, 2, 3, 4, 5]
    assert resumed.metrics["fit"]["path"].startswith("cached prefix" if cached else "pixels")
    whole = transferlab.train(data, out=tmp_path / "runs", name="whole", **options)
    a, b = load_file(resumed.path / "model.safetensors"), load_file(whole.path / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (resumed.path / "checkpoint.pt").exists()
    with pytest.raises(transferlab.TransferlabError, match="already finished"):
        transferlab.train(resume=interrupted, progress=False)


@pytest.mark.slow
def test_a_run_that_fails_before_its_first_epoch_leaves_no_directory(tmp_path, monkeypatch, colour_folder):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("transferlab.training.engine.Trainer._train_epoch", broken)
    with pytest.raises(RuntimeError):
        transferlab.train(colour_folder(tmp_path / "data", RGB, 12, 40), out=tmp_path / "runs", name="x", **FAST)
    assert list((tmp_path / "runs").iterdir()) == []


# -- real data -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_finetune_reaches_the_published_accuracy_on_hymenoptera(hymenoptera, tmp_path):
    """Published reference: 0.93-0.95 (ResNet-18). A shortened recipe here; the benchmark runs
    the full one."""
    run = transferlab.train(hymenoptera, strategy="finetune", head_epochs=3, epochs=4, unfreeze="1",
                            scale_min=0.5, out=tmp_path, progress=False)
    assert run.metrics["splits"]["test"]["from"] == "val/, held out"
    assert run.metrics["test"]["accuracy"] >= 0.93, run.metrics["test"]["accuracy"]
    assert [r["phase"] for r in run.classifier.history_] == ["head"] * 3 + ["finetune"] * 4


@pytest.mark.slow
def test_basenet_learns_cifar10_small_well_above_chance(cifar10_small, tmp_path):
    run = transferlab.train(cifar10_small, strategy="scratch", epochs=10, out=tmp_path, progress=False)
    assert run.metrics["splits"]["test"]["images"] == 1000
    assert run.metrics["test"]["accuracy"] >= 0.25, run.metrics["test"]["accuracy"]  # chance: 0.10
    assert run.classifier.preprocess_.input_size == 32
    assert run.classifier.preprocess_.mean != (0.5, 0.5, 0.5)  # featurewise: the data's own mean


def test_scratch_trains_from_a_cifar_archive_with_a_class_subset(tmp_path):
    """CIFAR-10 in its official python format (built here), two classes kept, basenet-plus."""
    import pickle
    import tarfile

    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def batch(n):
        labels = rng.integers(0, 10, n)
        data = np.zeros((n, 3, 32, 32), np.uint8)
        data[labels == 3, 0] = 220  # cats are red, dogs blue, the rest noise
        data[labels == 5, 2] = 220
        data += rng.integers(0, 30, data.shape).astype(np.uint8)
        return {b"data": data.reshape(n, -1), b"labels": labels.tolist()}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(60), protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(100), protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in names]}, protocol=2))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    run = transferlab.train(archive, strategy="scratch", backbone="basenet-plus", classes="cat,dog",
                            epochs=4, batch_size=16, out=tmp_path / "runs", progress=False)
    assert run.classifier.classes_ == ["cat", "dog"]
    assert run.metrics["splits"]["test"]["from"] == "test/"
    assert run.metrics["test"]["accuracy"] >= 0.9


# -- callbacks -----------------------------------------------------------------------------------------

class Recorder(transferlab.Callback):
    """Records what each hook saw."""

    def __init__(self, stop_after: int | None = None):
        self.rows, self.phases, self.batches, self.fit_ends = [], [], 0, 0
        self.stop_after = stop_after

    def on_phase_begin(self, trainer):
        self.phases.append(trainer.phase.name)

    def on_batch_end(self, trainer, logs):
        self.batches += 1
        assert logs["images"] > 0 and 0 <= logs["accuracy"] <= 1

    def on_epoch_end(self, trainer, row):
        self.rows.append(dict(row))
        if self.stop_after and len([r for r in self.rows if r["phase"] == trainer.phase.name]) == self.stop_after:
            trainer.stop_phase = True

    def on_fit_end(self, trainer):
        self.fit_ends += 1


def test_a_custom_callback_passed_to_the_api_sees_every_epochs_metrics(tmp_path, colour_folder):
    recorder = Recorder()
    run = transferlab.train(colour_folder(tmp_path / "data", RGB, 12, 40), out=tmp_path / "runs", name="r",
                            callbacks=[recorder], **FAST)
    assert recorder.rows == run.classifier.history_ and len(recorder.rows) == 5
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch"} <= set(recorder.rows[0])
    assert recorder.phases == ["head", "finetune"] and recorder.fit_ends == 1
    assert recorder.batches == 5 * math.ceil(run.metrics["splits"]["train"]["images"] / FAST["batch_size"])


def test_a_callback_can_end_a_phase_early(tmp_path, colour_folder):
    data = load_source(colour_folder(tmp_path / "data", RGB, 12, 40)).images
    recorder = Recorder(stop_after=1)
    clf = transferlab.ImageClassifier(**FAST).fit(data, callbacks=[recorder])
    assert [r["phase"] for r in clf.history_] == ["head", "finetune"]  # one epoch each, of 2 and 3
