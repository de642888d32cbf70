"""How well `audit --labels` finds labels that are known to be wrong.

For each noise rate, that share of each class of the data's train/ folder is moved to another
class drawn at random (seeded), in a copy of the data made of symbolic links (test/ and val/ linked
as they are); then `transferlab audit COPY --labels` runs on it. Prints, per rate: the images
moved (N), the images flagged, precision and recall among the top N flags (the flags ranked most
suspect first), and precision and recall of all the flags. With --retrain, also the test accuracy
of `train --strategy features` on the clean data, on the noisy copy, and on the noisy copy with
`--exclude` of the top N flags.

    python benchmarks/label_noise.py ../shared/data/cars43 [--rates 0.05,0.1] [--seed 0] [--retrain]

The copy lives at a fixed place in the temporary folder (one per data set, rate and seed), so a
second run finds its features in the feature cache (whose keys hold the image's path).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from transferlab.api import train
from transferlab.audit import audit
from transferlab.common.atomic import write_text
from transferlab.data.sources import IMAGE_EXTENSIONS


def noisy_copy(root: Path, rate: float, seed: int, dest: Path) -> set[str]:
    """`root` linked into `dest` with `rate` of each class of train/ moved to another class;
    returns the moved images' paths in the copy."""
    train = root / "train"
    if not train.is_dir():
        raise SystemExit(f"{root} has no train/ folder: the noise goes into train/ only")
    shutil.rmtree(dest, ignore_errors=True)
    rng = np.random.default_rng(seed)
    classes = sorted(d.name for d in train.iterdir() if d.is_dir())
    moved = set()
    for split in sorted(d for d in root.iterdir() if d.is_dir()):
        for label in classes:
            files = sorted(p for p in (split / label).glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            chosen = set()
            if split.name == "train":
                count = int(round(rate * len(files)))
                chosen = {int(i) for i in rng.choice(len(files), count, replace=False)}
            for k, path in enumerate(files):
                target = label
                if k in chosen:
                    target = str(rng.choice([c for c in classes if c != label]))
                link = dest / split.name / target / (path.name if target == label else f"moved-{label}-{path.name}")
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(path.resolve(), link)
                if k in chosen:
                    moved.add(os.path.abspath(link))
    return moved


def retrain(data: Path, out: Path, exclude: Path | None = None) -> float:
    run = train(str(data), strategy="features", out=str(out), progress=False,
                **({"exclude": str(exclude)} if exclude else {}))
    return run.metrics["test"]["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a folder with train/ (and test/ or val/) class folders")
    parser.add_argument("--rates", default="0.05,0.1", help="shares of each train class moved (default 0.05,0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain", action="store_true", help="also train --strategy features three ways")
    parser.add_argument("--keep", action="store_true", help="keep the noisy copies and audits")
    args = parser.parse_args()
    root = Path(args.data).resolve()
    base = Path(tempfile.gettempdir()) / "transferlab-label-noise"
    clean = retrain(root, base / "runs") if args.retrain else None
    print(f"{'data':<14}{'rate':>6}{'moved':>7}{'flagged':>9}{'top-N prec':>12}{'top-N rec':>11}"
          f"{'all prec':>10}{'all rec':>9}{'seconds':>9}" + ("  test accuracy: clean / noisy / excluded"
                                                          if args.retrain else ""))
    for rate in (float(r) for r in args.rates.split(",")):
        copy = base / f"{root.name}-{rate:g}-seed{args.seed}"
        moved = noisy_copy(root, rate, args.seed, copy / root.name)
        started = time.perf_counter()
        result = audit(copy / root.name, near=False, labels=True, out=copy / "audit", progress=False)
        seconds = time.perf_counter() - started
        issues = result["label_issues"].issues
        n = len(moved)
        top = issues[:n]
        hits_top = sum(i.path in moved for i in top)
        hits_all = sum(i.path in moved for i in issues)
        line = (f"{root.name:<14}{rate:>6g}{n:>7}{len(issues):>9}{hits_top / max(len(top), 1):>12.2f}"
                f"{hits_top / max(n, 1):>11.2f}{hits_all / max(len(issues), 1):>10.2f}{hits_all / max(n, 1):>9.2f}"
                f"{seconds:>9.1f}")
        if args.retrain:
            flags = write_text(copy / "top-n.csv", "path\n" + "".join(f"{i.path}\n" for i in top))
            line += (f"  {clean:.4f} / {retrain(copy / root.name, copy / 'runs'):.4f} / "
                     f"{retrain(copy / root.name, copy / 'runs', flags):.4f}")
        print(line, flush=True)
        if not args.keep:
            shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    main()
