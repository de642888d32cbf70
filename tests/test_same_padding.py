"""The tf_ variants' TF-"same" padding, worked out once per input size, gives the very outputs
and gradients of timm's dynamic padding, at every input size, and leaves the weights' names
alone (packaged weights and saved runs load as before)."""

import pytest
import timm
import torch

from transferlab.models.backbones import create_backbone
from transferlab.models.same_padding import StaticSameConv2d, fix_same_padding


@pytest.fixture(scope="module")
def lite0():
    """The packaged EfficientNet-Lite0 as transferlab builds it, and as timm alone does."""
    ours, pre, info = create_backbone("tf_efficientnet_lite0", "auto")
    assert info.source == "packaged" and pre.input_size == 224
    theirs = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    theirs.load_state_dict(ours.state_dict())
    return ours.eval(), theirs.eval()


def test_every_strided_same_convolution_is_fixed(lite0):
    ours, theirs = lite0
    fixed = [m for m in ours.modules() if isinstance(m, StaticSameConv2d)]
    assert len(fixed) == 5 and not any(type(m).__name__ == "Conv2dSame" for m in ours.modules())
    with torch.no_grad():
        ours(torch.zeros(1, 3, 224, 224))
    assert [list(m.layouts) for m in fixed] == [[(224, 224)], [(112, 112)], [(56, 56)], [(28, 28)], [(14, 14)]]
    assert all(m.layouts[hw][0] == (1, 1) for m in fixed for hw in m.layouts)  # all on the static path
    assert list(ours.state_dict()) == list(theirs.state_dict())


@pytest.mark.parametrize("size", [224, 96, 97, 225])
def test_the_outputs_are_those_of_dynamic_padding_to_the_bit(lite0, size):
    ours, theirs = lite0
    x = (torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_training_gets_the_same_gradients():
    torch.manual_seed(0)
    ours = timm.create_model("tf_efficientnet_lite0", num_classes=3)
    theirs = timm.create_model("tf_efficientnet_lite0", num_classes=3)
    theirs.load_state_dict(ours.state_dict())
    assert fix_same_padding(ours) == 5
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    for model in (ours, theirs):
        model.train()
        torch.nn.functional.cross_entropy(model(x), y).backward()
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert (a.grad - b.grad).abs().max() <= 1e-4 * b.grad.abs().max(), name  # float32 sums, reordered


def test_an_export_holds_plain_convolutions_with_the_same_outputs(lite0):
    import copy

    from transferlab.models.same_padding import freeze_same_padding

    ours, theirs = lite0
    frozen = copy.deepcopy(ours)
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    assert freeze_same_padding(frozen, x) == 5 and not any(isinstance(m, StaticSameConv2d) for m in frozen.modules())
    with torch.no_grad():
        assert torch.equal(frozen(x), theirs(x))


def test_a_network_without_same_padding_is_left_as_it_is():
    model = timm.create_model("efficientnet_lite0", num_classes=0)
    assert fix_same_padding(model) == 0
