"""Which timm variant and normalisation does the packaged EfficientNet-Lite0 checkpoint expect?

The hymenoptera photos come from ImageNet's classes 310 (ant) and 309 (bee), so the checkpoint's
own 1000-class head can be scored on them: the right architecture variant (TF "same" padding or
PyTorch symmetric padding) and the right mean/std give the best top-1, top-5 and log loss.

    python benchmarks/packaged_weights.py [--data ../shared/data/hymenoptera]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.data import create_transform

from transferlab.models.weights import _packaged_lite0, assign_state_dict, read_checkpoint

IMAGENET = {"ants": 310, "bees": 309}
NORMALISATIONS = {"mean=std=0.5": ((0.5,) * 3, (0.5,) * 3),
                  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(here.parent / "shared" / "data" / "hymenoptera"))
    args = parser.parse_args()
    files = sorted(Path(args.data).glob("*/*/*.jpg"))
    labels = torch.tensor([IMAGENET[f.parent.name] for f in files])
    images = [Image.open(f).convert("RGB") for f in files]
    state = read_checkpoint(_packaged_lite0())
    print(f"{len(files)} ImageNet photos (ants = class 310, bees = class 309)\n")
    print(f"{'timm variant':24s} {'normalisation':14s} {'interp':8s} {'top-1':>6s} {'top-5':>6s} {'log loss':>9s}")
    torch.set_grad_enabled(False)
    for arch in ("tf_efficientnet_lite0", "efficientnet_lite0"):
        model = timm.create_model(arch, pretrained=False)
        assign_state_dict(model, state, "packaged", allow_by_position=True)
        model = model.eval().to(memory_format=torch.channels_last)
        for norm, (mean, std) in NORMALISATIONS.items():
            for interp in ("bicubic", "bilinear"):
                transform = create_transform(input_size=(3, 224, 224), interpolation=interp,
                                             crop_pct=0.875, mean=mean, std=std)
                logp = torch.cat([model(torch.stack([transform(im) for im in images[i:i + 32]])
                                        .contiguous(memory_format=torch.channels_last)).log_softmax(1)
                                  for i in range(0, len(images), 32)])
                top1 = (logp.argmax(1) == labels).float().mean().item()
                top5 = (logp.topk(5).indices == labels[:, None]).any(1).float().mean().item()
                nll = -logp[torch.arange(len(labels)), labels].mean().item()
                print(f"{arch:24s} {norm:14s} {interp:8s} {top1:6.3f} {top5:6.3f} {nll:9.3f}", flush=True)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\n({time.perf_counter() - started:.0f} s)")
