"""`transferlab layers`: what --layer accepts and what --unfreeze counts, read from one dummy forward."""

import pytest

from transferlab.cli import main


def run(capsys, *argv):
    code = main(["layers", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_vgg16_keras_names_with_their_output_shapes(capsys):
    code, out, _ = run(capsys, "vgg16", "--filter", "block5*")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(rows) == {"features.25", "features.27", "features.29", "features.30"}
    assert "512x14x14" in rows["features.29"] and rows["features.29"].endswith("block5_conv3")
    assert "512x7x7" in rows["features.30"] and rows["features.30"].endswith("block5_pool")


@pytest.mark.slow
def test_stages_and_what_unfreeze_trains(capsys):
    code, out, _ = run(capsys, "tf_efficientnet_lite0", "--input-size", "96", "--filter", "blocks.?",
                       "--unfreeze", "2")
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [r[0] for r in rows] == [f"blocks.{i}" for i in range(7)]
    assert rows[5][2:] == ["192x3x3", "1,652,640", "stage-2", "yes"]
    assert rows[6][2:] == ["320x3x3", "605,440", "stage-1", "yes"]
    assert rows[4][-1] == "stage-3"  # not trained with --unfreeze 2


@pytest.mark.slow
def test_resnet50_keras_block_outputs(capsys):
    _, out, _ = run(capsys, "resnet50", "--filter", "conv5_block3_out")
    (row,) = out.splitlines()[1:]
    assert row.split()[:3] == ["layer4.2", "Bottleneck", "2048x7x7"]


@pytest.mark.parametrize("argv, message", [
    (["resnet5"], "unknown backbone 'resnet5': did you mean resnet50"),
    (["resnet50", "--filter", "zzz"], "--filter 'zzz' matches no layer"),
    (["resnet50", "--unfreeze", "two"], "--unfreeze two is not a number"),
])
def test_bad_input_is_one_line_that_says_what_to_do(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1
