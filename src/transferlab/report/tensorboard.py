"""TensorBoard event files, one scalar per metric per epoch, when a run asks for them."""

from __future__ import annotations

from pathlib import Path

from ..errors import TransferlabError
from ..training.callbacks import Callback

# history column -> TensorBoard tag: train and val of a metric share one chart
TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_accuracy": "accuracy/train",
        "val_accuracy": "accuracy/val", "lr": "learning_rate"}


class TensorBoard(Callback):
    """Writes each epoch's history row to run_dir/tensorboard."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TransferlabError("--tensorboard needs the tensorboard package: "
                                   "pip install 'transferlab[tensorboard]'") from None
        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def on_epoch_end(self, trainer, row: dict) -> None:
        for key, tag in TAGS.items():
            if isinstance(row.get(key), (int, float)):
                self._writer.add_scalar(tag, row[key], row["epoch"])
        self._writer.flush()

    def on_fit_end(self, trainer) -> None:
        self._writer.close()
