"""HTML reports: self-contained, escaped, and rendered with their images by a real browser."""

import base64
import io
import re
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from transferlab.report.html import GalleryItem, write_comparison_report, write_run_report

MAGENTA = (255, 0, 255)
CYAN = (0, 255, 255)
CYAN_MPL = "#00ffff"
ODD_CLASS = "a<b>&c"
ODD_PATH = "held out/<img>&1.jpg"
DATA_PNG = "data:image/png;base64,"
CHROMIUM_TIMEOUT_S = 120


# ---------------------------------------------------------------------------- synthetic inputs

def classes() -> list[str]:
    return ["cat", "dog", ODD_CLASS]


def split_metrics(accuracy: float) -> dict:
    names = classes()
    per_class = {c: {"precision": 0.8, "recall": 0.75, "f1": 0.77, "support": 4} for c in names}
    return {"n": 12, "accuracy": accuracy, "log_loss": 0.61, "balanced_accuracy": accuracy - 0.01,
            "per_class": per_class, "confusion_matrix": [[3, 1, 0], [0, 4, 0], [1, 1, 2]]}


def run_metrics() -> dict:
    return {"score_split": "test", "strategy": "finetune", "val": split_metrics(0.8),
            "test": {**split_metrics(0.75), "accuracy_ci": [0.4677, 0.9111], "balanced_accuracy_ci": [0.5, 0.9]},
            "fit": {"best_epoch": 3, "best_val_loss": 0.52, "classifier": "mlp head", "lrs": [0.1, 0.01]},
            "seconds": 12.5, "skipped": ["broken<1>.jpg"],
            "splits": {"train": {"images": 40, "from": "train/"},
                       "val": {"images": 12, "readable": 12, "from": "10% of train/"},
                       "test": {"images": 13, "readable": 12, "from": "test/"}}}


def config() -> dict:
    return {"data": "shared/data/pets", "strategy": "finetune", "backbone": "resnet18",
            "epochs": 4, "lr": 0.001, "image_size": None}


def history() -> list[dict]:
    return [{"phase": "head" if e <= 2 else "finetune", "epoch": e, "train_loss": 1.0 / e,
             "train_accuracy": 1 - 0.5 / e, "val_loss": 1.1 / e, "val_accuracy": 0.9 - 0.5 / e}
            for e in range(1, 5)]


def gallery() -> list[GalleryItem]:
    """A solid magenta image the browser test looks for, and a noisy one in another shape."""
    magenta = np.zeros((200, 320, 3), np.uint8)
    magenta[...] = MAGENTA
    noise = np.random.default_rng(0).integers(0, 256, (90, 60, 3), dtype=np.uint8)
    return [GalleryItem(magenta, ODD_CLASS, "dog", 0.93, ODD_PATH),
            GalleryItem(noise, "cat", ODD_CLASS, 0.61, "val/cat/2.png")]


def write_curves(path) -> None:
    """A small matplotlib curve plot on a pure cyan band, a colour the browser test can find."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 2.5), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    epochs = [r["epoch"] for r in history()]
    ax.axvspan(1.5, 3.5, color=CYAN_MPL, alpha=1.0, linewidth=0)
    ax.plot(epochs, [r["train_loss"] for r in history()], color="black")
    fig.savefig(path, format="png")


@pytest.fixture
def run_dir(tmp_path):
    path = tmp_path / "runs" / "pets-finetune"
    path.mkdir(parents=True)
    write_curves(path / "curves.png")
    return path


@pytest.fixture
def full_report(run_dir):
    return write_run_report(run_dir, config(), run_metrics(), history(), gallery())


# ---------------------------------------------------------------------------- page inspection

class Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path) -> Tags:
    tags = Tags()
    tags.feed(path.read_text(encoding="utf-8"))
    return tags


def embedded_images(tags: Tags) -> list[Image.Image]:
    images = []
    for tag, attrs in tags.tags:
        if tag == "img":
            assert attrs["src"].startswith(DATA_PNG)
            raw = base64.b64decode(attrs["src"][len(DATA_PNG):], validate=True)
            images.append(Image.open(io.BytesIO(raw)))
    return images


def assert_self_contained(text: str) -> None:
    for external in ('src="http', "src='http", 'href="http', "<link", "<script", "url(", "@import"):
        assert external not in text, external


# ---------------------------------------------------------------------------- run report

def test_run_report_is_one_self_contained_file(full_report, run_dir):
    assert full_report == run_dir / "report.html"
    assert sorted(p.name for p in run_dir.iterdir()) == ["curves.png", "report.html"]  # no temp file
    text = full_report.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert text.count(DATA_PNG) == 4  # curves, confusion matrix, two thumbnails
    images = embedded_images(parse(full_report))
    assert [im.format for im in images] == ["PNG"] * 4
    assert images[0].size == Image.open(run_dir / "curves.png").size
    assert images[1].width > 300  # the confusion matrix is a real figure
    assert images[2].size == (160, 100) and images[3].size == (60, 90)  # shrunk, never enlarged


def test_run_report_escapes_names_and_paths(full_report):
    text = full_report.read_text(encoding="utf-8")
    assert ODD_CLASS not in text and "<img>&1" not in text and "broken<1>" not in text
    assert "a&lt;b&gt;&amp;c" in text
    assert "held out/&lt;img&gt;&amp;1.jpg" in text
    page = "".join(parse(full_report).text)
    assert page.count(ODD_CLASS) >= 3  # per-class row, two gallery captions


def test_run_report_content(full_report):
    page = " ".join(" ".join(parse(full_report).text).split())
    assert "pets-finetune" in page and "finetune" in page and "resnet18" in page
    assert "test accuracy 0.7500 (95% CI 0.468–0.911)" in page
    assert "test 13 (12 readable) test/ 0.7500 (0.468–0.911) 0.7400 (0.500–0.900)" in page  # the split row
    assert "val 12 10% of train/ 0.8000 0.7900" in page  # a run written before intervals: the score alone
    assert "true a<b>&c / predicted dog (93%)" in page
    assert "broken<1>.jpg" in page  # skipped files listed
    assert "best_epoch" in page and "best_val_loss" in page and "0.52" in page
    assert "mlp head" in page and "lrs" not in page  # only scalar fit entries
    assert "13 (12 readable)" in page and "10% of train/" in page
    assert "lr 0.001" in page and "image_size —" in page  # the config table


def test_run_without_epochs_or_mistakes_still_renders(tmp_path):
    metrics = {"score_split": "val", "val": split_metrics(1.0)}
    report = write_run_report(tmp_path, {"strategy": "features"}, metrics, [], [])
    text = report.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert text.count(DATA_PNG) == 1  # only the confusion matrix: no curves.png was written
    page = " ".join(" ".join(parse(report).text).split())
    assert "trained no epochs" in page and "No misclassified images" in page
    assert "val accuracy 1.0000" in page


def test_many_classes_render(tmp_path):
    names = [f"class {i}" for i in range(25)]
    m = {"n": 250, "accuracy": 0.5, "log_loss": 1.2, "balanced_accuracy": 0.5, "top5_accuracy": 0.9,
         "per_class": {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 10} for c in names},
         "confusion_matrix": (np.eye(25, dtype=int) * 5 + 0).tolist()}
    report = write_run_report(tmp_path, {}, {"score_split": "test", "test": m}, [], [])
    assert report.read_text(encoding="utf-8").count(DATA_PNG) == 1


def test_rewriting_replaces_the_report(full_report, run_dir):
    write_run_report(run_dir, config(), run_metrics(), [], [])
    assert "No misclassified images" in full_report.read_text(encoding="utf-8")
    assert sorted(p.name for p in run_dir.iterdir()) == ["curves.png", "report.html"]


# ---------------------------------------------------------------------------- comparison report

def comparison_rows() -> list[dict]:
    return [
        {"lr": 0.01, "test_accuracy_mean": 0.912345, "seeds": 2, "status": "ok", "error": "",
         "best": True, "runs": ["runs/lr-0.01/seed-0", "runs/lr-0.01/seed-1"]},
        {"lr": 0.1, "test_accuracy_mean": 0.8, "seeds": 1, "status": "ok", "error": "",
         "best": False, "runs": ["runs/lr-0.1/seed-0"]},
        {"lr": 1.0, "test_accuracy_mean": float("nan"), "seeds": 0, "status": "failed",
         "error": "loss became <nan> & training stopped", "best": False, "runs": []},
    ]


def test_comparison_report(tmp_path):
    chart = tmp_path / "comparison.png"
    Image.new("RGB", (200, 100), CYAN).save(chart)
    columns = ["lr", "test_accuracy_mean", "seeds", "status"]
    report = write_comparison_report(tmp_path, "Comparison on <pets>", columns, comparison_rows(), chart)
    assert report == tmp_path / "report.html"
    text = report.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert text.count(DATA_PNG) == 1 and "<pets>" not in text
    tags = parse(report)
    hrefs = [a["href"] for t, a in tags.tags if t == "a"]
    assert hrefs == ["runs/lr-0.01/seed-0/report.html", "runs/lr-0.01/seed-1/report.html",
                     "runs/lr-0.1/seed-0/report.html"]
    rows = [a.get("class", "") for t, a in tags.tags if t == "tr"][1:]  # after the header
    assert rows == ["best", "", "failed"]
    headers = re.findall(r"<th>(.*?)</th>", text)
    assert headers[:4] == columns
    page = " ".join(" ".join(tags.text).split())
    assert "0.9123" in page and "0.912345" not in page
    assert "1.0 — 0 failed" in page  # integral float and NaN cells
    assert "failed loss became <nan> & training stopped" in page


def test_comparison_report_without_chart(tmp_path):
    rows = comparison_rows()[2:]
    report = write_comparison_report(tmp_path / "new", "all failed", ["lr", "status"], rows, None)
    text = report.read_text(encoding="utf-8")
    assert DATA_PNG not in text and "failed" in text


# ---------------------------------------------------------------------------- in a real browser

def screenshot(chromium: str, page, out, profile, height: int) -> np.ndarray:
    command = [chromium, "--headless", "--no-sandbox", "--disable-background-networking",
               "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
               "--no-first-run", f"--user-data-dir={profile}", f"--window-size=1200,{height}",
               f"--screenshot={out}", page.resolve().as_uri()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"chromium took over {CHROMIUM_TIMEOUT_S} s:\n{error.stderr}")
    if done.returncode != 0 or not out.is_file():
        pytest.fail(f"chromium failed (exit {done.returncode}):\n{done.stderr[-5000:]}")
    with Image.open(out) as img:
        return np.asarray(img.convert("RGB"))


def solid_block(rgb: np.ndarray, colour: tuple) -> tuple[int, int]:
    """Height and width of the bounding box of `colour`, after checking the box is filled with it."""
    mask = (rgb == np.array(colour, np.uint8)).all(axis=2)
    assert mask.any(), f"colour {colour} is nowhere in the screenshot"
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = mask[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
    assert box.mean() > 0.95, f"colour {colour} is scattered, not one block"
    return box.shape


@pytest.mark.slow
def test_chromium_renders_run_report_with_images(chromium, full_report, tmp_path):
    rgb = screenshot(chromium, full_report, tmp_path / "shot.png", tmp_path / "profile", 4000)
    assert rgb.shape[:2] == (4000, 1200)
    non_white = (rgb < 245).any(axis=2).mean()
    assert non_white > 0.03, "the page looks blank"
    assert len(np.unique(rgb[::3, ::3].reshape(-1, 3), axis=0)) > 200  # text, figures, photos
    h, w = solid_block(rgb, MAGENTA)  # the gallery thumbnail, 160 x 100 CSS pixels
    assert 95 <= h <= 105 and 155 <= w <= 165
    h, w = solid_block(rgb, CYAN)  # the band in curves.png: the curves image loaded too
    assert h > 80 and w > 80
    blues = (rgb[..., 2] > 150) & (rgb[..., 0] < 120) & (rgb[..., 1] < 170)
    assert blues.sum() > 2000  # dark cells of the confusion matrix
