"""The training tools people bring from fastai, timm and Keras: the LR finder, EMA of weights,
gradual unfreezing, layer-wise rate decay, progressive resizing, gradient accumulation and
clipping, loss scaling under float16."""

import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

import transferlab
from transferlab import ImageClassifier, TransferlabError
from transferlab.config import RunConfig
from transferlab.models.factory import ModelSpec, build_model
from transferlab.models.stages import stage_groups
from transferlab.training.batches import TensorBatches
from transferlab.training.callbacks import Callback
from transferlab.training.ema import EMA
from transferlab.training.engine import Phase, Trainer, TrainSettings
from transferlab.training.optim import build_optimizer
from transferlab.training.resizing import size_for_epoch
from transferlab.training.strategies import phases, resolve

from test_engine_and_strategies import CHILD, FAST, RGB

TINY = dict(backbone="mobilenetv2_050", weights="none", image_size=32, batch_size=8, progress=False)


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _tensor_data(n=40, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def _settings(**kw):
    return TrainSettings(optimizer="sgd", weight_decay=0.0, momentum=0.0, schedule="constant",
                         channels_last=False, **kw)


def _phase(net, epochs=1, lr=0.5):
    return Phase("all", epochs, [([n for n, _ in net.named_parameters()], lr)])


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -- LR finder --------------------------------------------------------------------------------------

def test_the_lr_sweep_leaves_a_fitted_network_bit_identical_and_suggests_a_swept_rate(tmp_path, colour_folder):
    data = colour_folder(tmp_path / "data", RGB, 12, 40)
    clf = ImageClassifier(strategy="frozen", epochs=1, **TINY).fit(data)
    before = _state(clf.network_)
    result = clf.lr_find(data, start_lr=1e-6, end_lr=1.0, steps=40)
    after = clf.network_.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert 10 < len(result.rates) <= 40 and result.phase == "head"
    assert result.rates[0] == pytest.approx(1e-6) and np.all(np.diff(result.rates) > 0)
    for name, rate in result.suggestions.items():
        assert result.rates[0] <= rate <= result.rates[-1], name
    result.plot(tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_train_lr_find_sweeps_first_and_records_the_rate_in_config_yaml(tmp_path, colour_folder):
    data = colour_folder(tmp_path / "data", RGB, 12, 40)
    run = transferlab.train(data, strategy="frozen", lr="find", epochs=2, out=tmp_path / "runs", **TINY)
    config = yaml.safe_load((run.path / "config.yaml").read_text())
    found = run.metrics["fit"]["lr_find"]
    assert isinstance(config["lr"], float) and config["lr"] == found["suggestions"]["valley"]
    low, high = found["swept"]
    assert 1e-7 <= low <= config["lr"] <= high <= 10
    assert run.classifier.config_.lr == config["lr"]
    assert (run.path / "lr_find.png").is_file()


def test_lr_find_refuses_what_has_no_learning_rate_in_one_line(tmp_path):
    with pytest.raises(TransferlabError, match="logistic regression"):
        resolve(RunConfig(strategy="features", lr="find"))
    with pytest.raises(TransferlabError, match="auto chooses"):
        resolve(RunConfig(strategy="auto", lr="find"))
    proc = subprocess.run([sys.executable, "-m", "transferlab", "train", "digits", "--lr", "fast"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--lr" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_the_lr_find_command_prints_suggestions_and_writes_its_plot(tmp_path, colour_folder):
    plot = tmp_path / "sweep.png"
    data = colour_folder(tmp_path / "data", RGB, 12, 40)
    proc = subprocess.run([sys.executable, "-m", "transferlab", "lr-find", str(data), "--backbone", "mobilenetv2_050",
                           "--weights", "none", "--image-size", "32", "--steps", "30", "--plot", str(plot)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "valley" in proc.stdout and "steepest" in proc.stdout and "phase head" in proc.stdout  # finetune's
    assert plot.read_bytes()[:4] == b"\x89PNG"
    again = subprocess.run([sys.executable, "-m", "transferlab", "lr-find", "digits", "--plot", str(plot)],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert again.returncode != 0 and "--force" in again.stderr  # refused before any slow work


# -- EMA --------------------------------------------------------------------------------------------

class Recorder(Callback):
    """The network's own weights after every optimizer step."""

    def __init__(self):
        self.steps = []

    def on_phase_begin(self, trainer):
        self.steps.append(_state(trainer.network))

    def on_step_end(self, trainer, logs):
        self.steps.append(_state(trainer.network))


@pytest.mark.parametrize("validated", [False, True], ids=["no-val", "val"])
def test_ema_weights_equal_the_hand_computed_average_and_are_what_is_kept(validated):
    net, (x, y), decay = _tiny_net(), _tensor_data(), 0.4
    recorder, ema = Recorder(), EMA(decay)
    trainer = Trainer(net, _settings(), callbacks=[recorder, ema], progress=False)
    val = TensorBatches(x[:12], y[:12], 16) if validated else None
    trainer.fit([_phase(net)], TensorBatches(x, y, 8, shuffle=True), val)
    assert len(recorder.steps) == 1 + 5  # the start and 5 steps
    average = recorder.steps[0]
    for t, weights in enumerate(recorder.steps[1:], 1):
        d = min(decay, (1 + t) / (10 + t))  # the decay warms up over the first steps
        average = {k: d * average[k] + (1 - d) * weights[k] for k in average}
    own = recorder.steps[-1]
    assert not torch.allclose(own["0.weight"], average["0.weight"])  # the average is not the last weights
    for k in average:
        torch.testing.assert_close(ema.average[k], average[k], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(net.state_dict()[k], average[k], rtol=1e-6, atol=1e-7)  # what is saved
    if validated:  # evaluation and the best epoch used the average too
        with torch.no_grad():
            loss = nn.functional.cross_entropy(net(x[:12]), y[:12])
        assert trainer.history[0]["val_loss"] == pytest.approx(float(loss), rel=1e-5)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_with_ema_and_gradual_unfreezing_resumes_to_the_same_weights(
        tmp_path, colour_folder):
    """Killed in the first epoch of phase unfreeze-1: the average and the phase plan must both
    come back from the checkpoint."""
    data = colour_folder(tmp_path / "data", RGB, 12, 40)
    options = {**FAST, "unfreeze_schedule": "1,2", "ema": 0.9, "epochs": 4}
    child = tmp_path / "child.py"
    child.write_text(CHILD.replace("{OPTIONS}", repr(options)))
    proc = subprocess.run([sys.executable, str(child), str(data), str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    resumed = transferlab.train(resume=tmp_path / "runs" / "interrupted", progress=False)
    whole = transferlab.train(data, out=tmp_path / "runs", name="whole", **options)
    assert [r["phase"] for r in whole.classifier.history_] == [r["phase"] for r in resumed.classifier.history_]
    a, b = load_file(resumed.path / "model.safetensors"), load_file(whole.path / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- gradual unfreezing and layer-wise decay ---------------------------------------------------------

def _network(**options):
    cfg = resolve(RunConfig.from_dict({**{k: v for k, v in TINY.items() if k != "progress"}, **options}))
    built = build_model(ModelSpec.from_options(cfg.to_dict(), 3), load_weights=False)
    return cfg, built.network


def test_lr_decay_gives_each_unfrozen_stage_the_rate_of_the_formula():
    cfg, net = _network(strategy="finetune", unfreeze=3, lr=1e-3, backbone_lr_mult=0.1, lr_decay=0.5)
    head, tuned = phases(cfg, net)
    groups = stage_groups(net.backbone)
    assert tuned.groups[0] == (head.groups[0][0], 1e-3)
    for k in range(3):  # stage k from the top: lr x mult x decay^k
        names, rate = tuned.groups[1 + k]
        assert names == ["backbone." + n for n in groups[-1 - k]]
        assert rate == pytest.approx(1e-3 * 0.1 * 0.5 ** k)
    params = dict(net.named_parameters())
    optimizer = build_optimizer([([(n, params[n]) for n in names], rate) for names, rate in tuned.groups],
                                "adamw", 0.01)
    rates = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert rates[id(params["backbone." + groups[-3][0]])] == pytest.approx(2.5e-5)


def test_gradual_unfreezing_adds_stages_phase_by_phase_with_the_epochs_shared():
    cfg, net = _network(strategy="finetune", unfreeze_schedule="1,2,all", epochs=6, head_epochs=2)
    result = phases(cfg, net)
    assert [p.name for p in result] == ["head", "unfreeze-1", "unfreeze-2", "unfreeze-all"]
    assert [p.epochs for p in result] == [2, 2, 2, 2]
    trained = [{n for names, _ in p.groups for n in names} for p in result]
    assert trained[1] < trained[2] < trained[3]
    assert trained[3] == {n for n, _ in net.named_parameters()}


@pytest.mark.parametrize("option, value, message", [
    ("unfreeze_schedule", "2,1", "increasing"), ("lr_decay", 1.5, r"\(0, 1\]"), ("ema", 1.0, r"\[0, 1\)"),
    ("sizes", "224,160", "increasing"), ("accumulate", 0, "at least 1"), ("clip_grad", -1.0, "positive"),
])
def test_bad_training_tool_options_are_refused_naming_the_option(option, value, message):
    with pytest.raises(TransferlabError, match=message) as err:
        RunConfig(strategy="finetune", **{option: value}).validate()
    assert "--" + option.replace("_", "-") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(TransferlabError, match="finetune or bilinear"):
        RunConfig(strategy="frozen", lr_decay=0.7).validate()


# -- progressive resizing ------------------------------------------------------------------------------

class Sizes(Callback):
    order = 50

    def __init__(self):
        self.seen = []

    def on_epoch_begin(self, trainer):
        self.seen.append(trainer.train_data.size)

    def on_batch_end(self, trainer, logs):
        pass


@pytest.mark.slow
def test_progressive_resizing_trains_small_first_and_ends_at_the_full_size(tmp_path, colour_folder):
    assert [size_for_epoch((160, 224), e, 4) for e in range(4)] == [160, 160, 224, 224]
    assert size_for_epoch((160, 224), 0, 1) == 224  # a one-epoch phase trains at the full size
    data = colour_folder(tmp_path / "data", RGB, 12, 40)
    for cached in (True, False):
        sizes = Sizes()
        clf = ImageClassifier(strategy="finetune", head_epochs=2, epochs=4, sizes="16,32", prefix_cache=cached,
                              **TINY)
        clf.fit(data, callbacks=[sizes])
        assert sizes.seen == [16, 32, 16, 16, 32, 32]
        assert clf.fit_info_["path"].startswith("cached prefix" if cached else "pixels")
        assert clf.preprocess_.input_size == 32


def test_sizes_that_do_not_end_at_the_input_size_fail_before_decoding(tmp_path, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the check")

    monkeypatch.setattr("transferlab.classifier.readable", no_decoding)
    with pytest.raises(TransferlabError, match="end the list with 32"):
        ImageClassifier(strategy="frozen", sizes="16,24", **TINY).fit("digits")


# -- accumulation, clipping, loss scaling --------------------------------------------------------------

def test_accumulating_n_batches_steps_like_one_batch_n_times_larger():
    x, y = _tensor_data(n=40)
    results = []
    for batch, accumulate in ((4, 3), (12, 1)):
        net = _tiny_net()
        trainer = Trainer(net, _settings(accumulate=accumulate), progress=False)
        trainer.fit([_phase(net, epochs=2)], TensorBatches(x, y, batch, shuffle=True), None)
        results.append(_state(net))
    assert trainer.steps_per_epoch == 4  # 12 + 12 + 12 + 4 images
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-5, atol=1e-6)


def test_clip_grad_bounds_the_step():
    x, y = _tensor_data(n=8)
    net = _tiny_net()
    before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    trainer = Trainer(net, _settings(clip_grad=1e-3), progress=False)
    trainer.fit([_phase(net, lr=1.0)], TensorBatches(x, y, 8), None)
    after = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert float((after - before).norm()) <= 1e-3 * (1 + 1e-4)


def test_float16_autocast_scales_the_loss_and_bfloat16_does_not():
    x, y = _tensor_data(n=16)
    for dtype, scaled in (("fp16", True), ("bf16", False)):
        net = _tiny_net()
        trainer = Trainer(net, _settings(amp=True, amp_dtype=dtype), progress=False)
        trainer.fit([_phase(net)], TensorBatches(x, y, 8), None)
        assert trainer.scaler.is_enabled() is scaled
        assert all(torch.isfinite(p).all() for p in net.parameters())
    assert Trainer(_tiny_net(), _settings(amp=True), progress=False).autocast_dtype is None  # CPU: off by default
