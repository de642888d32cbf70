"""Fine-tuning on a laptop CPU: a plain PyTorch loop against transferlab, same data, same process.

(a) the two-phase fine-tune a user writes by hand: torchvision ImageFolder + DataLoader (2 workers),
    RandomResizedCrop + flip, the packaged EfficientNet-Lite0 in channels_last, phase 1 the head
    only, phase 2 the whole network at a tenth of the rate; trained on train/, scored on val/.
(b) transferlab `finetune` with default settings; (c) transferlab `frozen`. Both hold val/ out as
    their test split (their own validation split is cut from train/, so they train on fewer
    images than (a)).

Prints wall time per epoch, total wall time, accuracy on val/, and the ratios to (a).

    python benchmarks/cpu_speed.py [--data ../shared/data/hymenoptera] [--head-epochs 5 --epochs 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import timm
import torch
from torch import nn
from torchvision import datasets, transforms

import transferlab
from transferlab.models.weights import packaged_file, assign_state_dict, read_checkpoint


def plain_pytorch(data: Path, head_epochs: int, epochs: int) -> dict:
    torch.manual_seed(0)
    norm = transforms.Normalize((0.5,) * 3, (0.5,) * 3)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224, interpolation=transforms.InterpolationMode.BICUBIC),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])
    eval_tf = transforms.Compose([transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
                                  transforms.CenterCrop(224), transforms.ToTensor(), norm])
    train = torch.utils.data.DataLoader(datasets.ImageFolder(data / "train", train_tf), batch_size=32,
                                        shuffle=True, num_workers=2, persistent_workers=True)
    val = torch.utils.data.DataLoader(datasets.ImageFolder(data / "val", eval_tf), batch_size=32,
                                      num_workers=2, persistent_workers=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assign_state_dict(model, read_checkpoint(packaged_file("tf_efficientnet_lite0")), "packaged", allow_by_position=True)
    model.reset_classifier(2)
    model = model.to(memory_format=torch.channels_last)
    loss_fn = nn.CrossEntropyLoss()
    epoch_times, accuracy = [], 0.0
    for phase, n_epochs in (("head", head_epochs), ("all", epochs)):
        for name, p in model.named_parameters():
            p.requires_grad = phase == "all" or name.startswith("classifier")
        lr = 1e-3 if phase == "head" else 1e-4
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
        for _ in range(n_epochs):
            start = time.perf_counter()
            model.train()
            for x, y in train:
                loss = loss_fn(model(x.contiguous(memory_format=torch.channels_last)), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            correct = total = 0
            with torch.inference_mode():
                for x, y in val:
                    correct += int((model(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y).sum())
                    total += len(y)
            accuracy = correct / total
            epoch_times.append(time.perf_counter() - start)
            print(f"  (a) {phase} epoch {len(epoch_times):2d}: {epoch_times[-1]:6.1f} s, val/ accuracy {accuracy:.4f}",
                  flush=True)
    return {"epoch_times": epoch_times, "accuracy": accuracy}


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=here.parent / "shared" / "data" / "hymenoptera")
    parser.add_argument("--head-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; data {args.data}")
    results = {}
    start = time.perf_counter()
    a = plain_pytorch(args.data, args.head_epochs, args.epochs)
    results["(a) plain PyTorch, whole network"] = (time.perf_counter() - start, a["epoch_times"], a["accuracy"], "")
    with tempfile.TemporaryDirectory() as tmp:
        for label, strategy in (("(b) transferlab finetune", "finetune"), ("(c) transferlab frozen", "frozen")):
            start = time.perf_counter()
            run = transferlab.train(args.data, strategy=strategy, out=tmp, cache_dir=f"{tmp}/cache",
                                    progress=False, **({"head_epochs": args.head_epochs, "epochs": args.epochs}
                                                       if strategy == "finetune" else {}))
            total = time.perf_counter() - start
            times = [r["seconds"] for r in run.classifier.history_]
            results[label] = (total, times, run.score, run.metrics["fit"]["path"])
    ref_total, _, ref_acc, _ = results["(a) plain PyTorch, whole network"]
    print(f"\n{'':34s} {'epochs':>6s} {'s/epoch':>8s} {'total s':>8s} {'val/ acc':>8s} {'time ratio':>10s} {'acc - (a)':>9s}")
    for label, (total, times, acc, path) in results.items():
        print(f"{label:34s} {len(times):6d} {sum(times) / len(times):8.1f} {total:8.1f} {acc:8.4f} "
              f"{total / ref_total:10.2f} {acc - ref_acc:+9.4f}")
        if path:
            print(f"{'':34s} path: {path}")
    print("\ns/epoch for transferlab counts training and validation on cached activations; its total "
          "includes decoding, building the cache and scoring the held-out split.")


if __name__ == "__main__":
    main()
