"""Static int8 quantization of the frozen pass: faster, and what does it cost in accuracy?

The features graph of the packaged Lite0 (runtime/frozen.py's export, fp32) is quantized with
onnxruntime's static quantization (QDQ, int8 weights per channel, uint8 activations, calibrated on
--calibration train images of the set). For each data set: the raw forward of both graphs (batch
32, median of 5), then the features of train and test through each, one logistic regression
per graph (transferlab's own, C chosen by cross-validation on train), and the test accuracy of
each, with the largest difference of the int8 features from the fp32 ones.

    python benchmarks/int8.py [--data DIR ...] [--calibration 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import transferlab
from transferlab.data.cache import iter_decoded
from transferlab.data.split import split_source
from transferlab.features.logistic import fit_logistic
from transferlab.models.factory import ModelSpec, build_model
from transferlab.models.network import to_batch
from transferlab.runtime import frozen

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def crops(images, pre):
    out = []
    for _, pixels, _ in iter_decoded(images, pre.resize_size, pre.interpolation, 64):
        out += [pre.center_crop(p) for p in pixels]
    return out


def features(session, crops_) -> np.ndarray:
    rows = []
    for start in range(0, len(crops_), 32):
        x = to_batch(crops_[start:start + 32]).float().contiguous().numpy()
        rows.append(session.run(None, {frozen.INPUT: x})[0])
    return np.concatenate(rows)


def raw(session, size: int) -> float:
    x = np.random.default_rng(0).integers(0, 256, (32, 3, size, size)).astype(np.float32)
    session.run(None, {frozen.INPUT: x})
    session.run(None, {frozen.INPUT: x})
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, {frozen.INPUT: x})
        seconds.append(time.perf_counter() - start)
    return 32 / float(np.median(seconds))


def accuracy(train_x, train_y, test_x, test_y, classes: int) -> float:
    head = torch.nn.Linear(train_x.shape[1], classes)
    fit_logistic(head, train_x, train_y, None, None, classes)
    with torch.inference_mode():
        z = head(torch.from_numpy(test_x)).numpy()
    return float((z.argmax(1) == test_y).mean())


def main() -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=[str(SHARED / "cars43"), str(SHARED / "cifar10-small")])
    parser.add_argument("--calibration", type=int, default=256)
    args = parser.parse_args()
    built = build_model(ModelSpec("tf_efficientnet_lite0"))
    pre, size = built.preprocess, built.preprocess.input_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frozen.frozen_pass(built.network.eval(), size, "int8-bench", "onnx", tmp)
        record = json.loads((tmp / "onnx" / "int8-bench.json").read_text())
        fp32_path = tmp / "onnx" / record["file"]
        for data in map(Path, args.data):
            source = transferlab.load_source(data)
            splits = split_source(source)
            train, test = crops(splits.train.images, pre), crops(splits.test.images, pre)
            rng = np.random.default_rng(0)
            chosen = [train[i] for i in rng.choice(len(train), min(args.calibration, len(train)), replace=False)]

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.batches = iter([{frozen.INPUT: to_batch(chosen[s:s + 16]).float().contiguous().numpy()}
                                         for s in range(0, len(chosen), 16)])

                def get_next(self):
                    return next(self.batches, None)

            int8_path = tmp / f"{data.name}-int8.onnx"
            start = time.perf_counter()
            quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            made = time.perf_counter() - start
            sessions = {"fp32": frozen._session(fp32_path.read_bytes()),
                        "int8": frozen._session(int8_path.read_bytes())}
            speeds = {k: raw(s, size) for k, s in sessions.items()}
            print(f"{data.name}: {len(train)} train, {len(test)} test; quantized in {made:.1f} s on "
                  f"{len(chosen)} calibration images", flush=True)
            print(f"  raw forward: fp32 {speeds['fp32']:.1f}, int8 {speeds['int8']:.1f} images/s "
                  f"({speeds['int8'] / speeds['fp32']:.2f}x)", flush=True)
            feats = {k: (features(s, train), features(s, test)) for k, s in sessions.items()}
            classes = len(source.images.classes)
            scores = {k: accuracy(tr, splits.train.labels, te, splits.test.labels, classes) for k, (tr, te) in
                      feats.items()}
            diff = np.abs(feats["int8"][1] - feats["fp32"][1]).max() / np.abs(feats["fp32"][1]).max()
            print(f"  test accuracy: fp32 {scores['fp32']:.4f}, int8 {scores['int8']:.4f} "
                  f"({100 * (scores['int8'] - scores['fp32']):+.1f} points); int8 features differ by up to "
                  f"{diff:.2g} of the largest", flush=True)


if __name__ == "__main__":
    main()
