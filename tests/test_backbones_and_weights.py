"""Backbones come from timm by name, weights from an explicit source, preprocessing from the weights."""

import glob

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_model_data_config

from transferlab import TransferlabError, list_backbones
from transferlab.data.decode import decode
from transferlab.models.backbones import check_backbone, create_backbone, feature_dim
from transferlab.models.network import Normalize, to_batch
from transferlab.models.weights import PACKAGED, assign_state_dict, packaged_file, read_checkpoint

# ImageNet-1k indices of the two hymenoptera classes.
IMAGENET_ANT, IMAGENET_BEE = 310, 309


def test_backbones_are_listed_with_wildcards():
    names = list_backbones("resnet5*")
    assert "resnet50" in names and all(n.startswith("resnet5") for n in names)
    assert "tf_efficientnet_lite0" in list_backbones("*LITE0*")  # case-insensitive
    assert list_backbones("no_such_net_*") == []


def test_a_typo_in_a_backbone_name_gets_the_closest_names():
    with pytest.raises(TransferlabError) as err:
        check_backbone("resnet5O")
    assert "unknown backbone 'resnet5O'" in str(err.value)
    assert "resnet50" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PACKAGED))
def test_packaged_weights_load_by_position_and_classify_imagenet_photos(hymenoptera, name):
    """Each offline checkpoint lands in its timm architecture tensor by tensor, and the result
    recognises the ImageNet ant and bee photos as ants and bees (its own 1000-class head, at its
    own input size)."""
    model = timm.create_model(name, pretrained=False)
    state = read_checkpoint(packaged_file(name))
    assert assign_state_dict(model, state, "packaged", allow_by_position=True).startswith("by position")
    for (_, source), (_, target) in zip(state.items(), model.state_dict().items()):
        assert torch.equal(source, target)
    model.eval()
    pre = resolve_model_data_config(model)
    assert pre["mean"] == (0.5, 0.5, 0.5) and pre["std"] == (0.5, 0.5, 0.5)
    transform = create_transform(**pre)
    files = sorted(glob.glob(str(hymenoptera / "val" / "*" / "*.jpg")))[::5]
    labels = torch.tensor([IMAGENET_ANT if "/ants/" in f else IMAGENET_BEE for f in files])
    with torch.inference_mode():
        logits = model(torch.stack([transform(Image.open(f).convert("RGB")) for f in files]))
    top5 = (logits.topk(5).indices == labels[:, None]).any(1).float().mean().item()
    assert top5 >= 0.9, (name, top5)


def test_preprocessing_comes_from_the_weights_and_matches_timms_own_transform(hymenoptera):
    """Our decode + crop + in-network normalisation gives the very tensor timm's eval transform
    gives: training and prediction cannot disagree on preprocessing."""
    backbone, pre, info = create_backbone("tf_efficientnet_lite0", "auto")
    assert info.source == "packaged"
    assert (pre.input_size, pre.resize_size, pre.interpolation) == (224, 256, "bicubic")
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)
    reference = create_transform(**resolve_model_data_config(timm.create_model("tf_efficientnet_lite0")))
    normalize = Normalize(pre.mean, pre.std)
    for path in sorted(glob.glob(str(hymenoptera / "train" / "bees" / "*.jpg")))[:5]:
        ours = normalize(to_batch([pre.center_crop(decode(path, pre.resize_size, pre.interpolation))]))
        theirs = reference(Image.open(path).convert("RGB"))
        assert torch.allclose(ours[0], theirs, atol=1e-5)


def test_image_size_option_changes_input_and_resize_sizes():
    _, pre, _ = create_backbone("tf_efficientnet_lite0", "none", image_size=160)
    assert pre.input_size == 160 and pre.resize_size == int(160 / 0.875)


@pytest.mark.parametrize("name", [pytest.param("vgg16", marks=pytest.mark.slow), "resnet50", "resnetv2_50",
                                  "mobilenetv2_100"])
def test_other_backbones_build_with_random_weights_and_give_pooled_features(name):
    backbone, pre, info = create_backbone(name, "none")
    assert info.source == "none"
    with torch.inference_mode():
        out = backbone(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, feature_dim(backbone))


def test_random_weights_are_the_same_for_the_same_seed():
    a, _, _ = create_backbone("mobilenetv2_100", "none", seed=3)
    b, _, _ = create_backbone("mobilenetv2_100", "none", seed=3)
    c, _, _ = create_backbone("mobilenetv2_100", "none", seed=4)
    wa, wb, wc = (m.conv_stem.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_offline_without_weights_says_what_was_tried_and_how_to_fix():
    with pytest.raises(TransferlabError) as err:
        create_backbone("resnet18", "auto")
    message = str(err.value)
    assert "resnet18" in message and "packaged" in message and "hub" in message
    assert "--weights FILE" in message and "\n" not in message


def test_weights_from_a_safetensors_file_load_by_name(tmp_path):
    source = timm.create_model("mobilenetv2_100", pretrained=False)
    path = tmp_path / "mnv2.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    backbone, _, info = create_backbone("mobilenetv2_100", str(path), seed=99)
    assert info.source == "file" and "by name" in info.description
    assert torch.equal(backbone.conv_stem.weight, source.conv_stem.weight)


def test_weights_from_a_headless_state_dict_file_load(tmp_path):
    """A checkpoint without the classifier (saved from a feature extractor) is accepted."""
    source = timm.create_model("mobilenetv2_100", pretrained=False)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier.")}
    path = tmp_path / "mnv2.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    backbone, _, _ = create_backbone("mobilenetv2_100", str(path), seed=99)
    assert torch.equal(backbone.conv_stem.weight, source.conv_stem.weight)


def test_weights_that_do_not_fit_are_refused_not_partly_loaded(tmp_path):
    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    with pytest.raises(TransferlabError) as err:
        create_backbone("mobilenetv2_100", str(path))
    assert "do not fit" in str(err.value) and str(path) in str(err.value)


def test_a_pickled_checkpoint_that_runs_code_is_refused(tmp_path):
    """torch.load(weights_only=True): a checkpoint holding arbitrary objects is not executed."""
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(TransferlabError) as err:
        create_backbone("mobilenetv2_100", str(path))
    assert "cannot read weights file" in str(err.value)


class _Payload:
    pass


def test_a_weights_value_that_is_neither_a_source_nor_a_file_is_explained(tmp_path):
    with pytest.raises(TransferlabError) as err:
        create_backbone("mobilenetv2_100", str(tmp_path / "nope.safetensors"))
    assert "auto, hub or none" in str(err.value)
