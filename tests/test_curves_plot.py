"""Training-curve figures: written atomically, not blank, phases marked, smoothing drawn."""

import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from transferlab.report import curves
from transferlab.report.curves import plot_curves, smooth_ema


def history(with_val: bool = True, epochs: int = 12, switch: int = 5) -> list[dict]:
    """A two-phase run: 'head' for the first `switch` epochs, then 'finetune'."""
    rng = np.random.default_rng(0)
    rows = []
    for epoch in range(1, epochs + 1):
        loss = 1.4 * math.exp(-epoch / 4) + 0.1 + rng.normal(0, 0.04)
        row = {"phase": "head" if epoch <= switch else "finetune", "epoch": epoch,
               "train_loss": loss, "train_accuracy": 1 - loss / 2}
        if with_val:
            row["val_loss"] = loss + 0.2
            row["val_accuracy"] = 0.9 - loss / 2 if epoch != 3 else float("nan")
        rows.append(row)
    return rows


def pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def is_blueish(rgb):
    return (rgb[..., 2] > 150) & (rgb[..., 0] < 100)


def is_reddish(rgb):
    return (rgb[..., 0] > 180) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)


def test_two_phase_history_with_val(tmp_path):
    out = plot_curves(history(), tmp_path / "curves.png")
    assert out == tmp_path / "curves.png" and out.is_file()
    rgb = pixels(out)
    h, w, _ = rgb.shape
    assert w > h > 300  # two panels side by side
    non_white = (rgb < 240).any(axis=2).mean()
    assert 0.01 < non_white < 0.5
    colours = {tuple(c) for c in rgb.reshape(-1, 3)[::7]}
    assert len(colours) > 20
    assert is_blueish(rgb).sum() > 200 and is_reddish(rgb).sum() > 200  # train and val lines
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temp file left


def test_history_without_val(tmp_path):
    rows = history(with_val=False)
    assert "val_loss" not in rows[0]
    out = plot_curves(rows, tmp_path / "sub" / "curves.png")
    rgb = pixels(out)
    assert is_blueish(rgb).sum() > 200
    assert is_reddish(rgb).sum() == 0  # no val line
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]


def lines_of(fig):
    return [[ln for ln in ax.get_lines()] for ax in fig.axes]


def test_figure_contents():
    fig = curves._figure(history(), smooth=0.0)
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Accuracy"]
    for ax in fig.axes:
        labels = ax.get_legend_handles_labels()[1]
        assert labels == ["train", "val"]
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert len(dashed) == 1 and list(dashed[0].get_xdata()) == [6, 6]  # phase change at epoch 6
        texts = [t.get_text() for t in ax.texts]
        assert "finetune" in texts and "head" in texts
        colours = {ln.get_color() for ln in ax.get_lines() if ln.get_linestyle() != "--"}
        assert len(colours) == 2
    # A NaN value is skipped: the val line has one point fewer than the train line.
    train, val = fig.axes[1].get_lines()[:2]
    assert len(train.get_xdata()) == 12 and len(val.get_xdata()) == 11


@pytest.mark.slow
def test_smoothing_draws_more_lines(tmp_path):
    plain = curves._figure(history(), smooth=0.0)
    smoothed = curves._figure(history(), smooth=0.6)
    for ax_plain, ax_smooth in zip(plain.axes, smoothed.axes):
        n_plain = len(ax_plain.get_lines())
        assert len(ax_smooth.get_lines()) == n_plain + 2  # an EMA line per series, raw kept faint
        faint = [ln for ln in ax_smooth.get_lines() if (ln.get_alpha() or 1.0) < 0.5]
        assert len(faint) == 2
    a = pixels(plot_curves(history(), tmp_path / "a.png"))
    b = pixels(plot_curves(history(), tmp_path / "b.png", smooth=0.6))
    assert a.shape == b.shape and (a != b).any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


def test_smooth_ema_matches_tensorboard():
    values = [1.0, 0.0, 1.0, 0.0]
    assert smooth_ema(values, 0.0) == values
    out = smooth_ema(values, 0.5)
    assert out[0] == pytest.approx(1.0)  # debiased: starts at the first value, not half of it
    assert out[1] == pytest.approx((0.25 + 0.0) / 0.75)
    assert all(0.0 <= v <= 1.0 for v in out)
    assert smooth_ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])


def test_bad_smoothing_is_refused(tmp_path):
    from transferlab.errors import TransferlabError

    with pytest.raises(TransferlabError):
        plot_curves(history(), tmp_path / "c.png", smooth=1.0)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError):
        plot_curves(history(), tmp_path / "curves.png")
    assert list(tmp_path.iterdir()) == []


def test_overwrites_existing_file(tmp_path):
    target = tmp_path / "curves.png"
    target.write_bytes(b"old")
    plot_curves(history(), target)
    assert pixels(target).size > 0


def test_importing_the_module_does_not_import_matplotlib():
    code = ("import sys; import transferlab.report.curves; "
            "print(any(m.startswith('matplotlib') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_pyplot(tmp_path):
    code = ("import sys, pathlib; from transferlab.report.curves import plot_curves; "
            "plot_curves([{'phase': 'a', 'epoch': 1, 'train_loss': 1.0, 'train_accuracy': 0.5}], "
            "pathlib.Path(sys.argv[1]) / 'c.png'); print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"
    assert (tmp_path / "c.png").is_file()
