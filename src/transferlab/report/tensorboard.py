"""TensorBoard event files, one scalar per metric per epoch, when a run asks for them."""

from __future__ import annotations

from pathlib import Path
from ..errors import TransferlabError

# history column -> TensorBoard tag: train and val of a metric share one chart
TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_accuracy": "accuracy/train",
        "val_accuracy": "accuracy/val", "lr": "learning_rate"}


class EpochWriter:
    """Callable with each epoch's history row; writes to run_dir/tensorboard."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TransferlabError("--tensorboard needs the tensorboard package: "
                                   "pip install 'transferlab[tensorboard]'") from None
        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def __call__(self, row: dict) -> None:
        for key, tag in TAGS.items():
            if isinstance(row.get(key), (int, float)):
                self._writer.add_scalar(tag, row[key], row["epoch"])
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def epoch_writer(run_dir: Path | None, enabled: bool) -> EpochWriter | None:
    return EpochWriter(run_dir) if enabled and run_dir is not None else None

