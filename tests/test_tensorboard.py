"""--tensorboard: event files with one point per epoch for each curve, beside the always-written CSV."""

import transferlab


def test_tensorboard_event_files_hold_every_epoch(colour_folder, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = colour_folder(tmp_path / "data", ("red", "blue"), 8, 32)
    run = transferlab.train(data, strategy="frozen", backbone="mobilenetv2_050", weights="none", image_size=32,
                            epochs=3, tensorboard=True, out=tmp_path / "runs", progress=False)
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "learning_rate"} <= set(events.Tags()["scalars"])
    steps = [e.step for e in events.Scalars("loss/val")]
    assert steps == [1, 2, 3]
    history = (run.path / "history.csv").read_text().splitlines()
    assert len(history) == 4  # the CSV is written either way
