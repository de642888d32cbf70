"""How well the audit's near-duplicate rule separates re-saved copies from distinct photos.

Every photo of the data set is re-saved at JPEG quality 60 and 0.7x its size into a copy folder
(the originals as train/, the copies as test/), then the audit runs on both. Prints: copies found
(of all), distinct-photo pairs wrongly reported, and the similarities behind the thresholds:
backbone cosine of each copy to its original, the highest cosine of each original to another
original, and the edge correlation of the thumbnails for copies and for all pairs of originals.

    python benchmarks/audit.py [--data ../shared/data/hymenoptera]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from transferlab.audit import audit
from transferlab.audit.images import edge_vector, inspect_all
from transferlab.audit.near import backbone_features
from transferlab.data.sources import IMAGE_EXTENSIONS, ImageRef


def resave(src: Path, dst: Path) -> None:
    image = Image.open(src).convert("RGB")
    image = image.resize((max(1, round(image.width * 0.7)), max(1, round(image.height * 0.7))),
                         Image.Resampling.BICUBIC)
    dst.parent.mkdir(parents=True, exist_ok=True)
    image.save(dst, quality=60)


def spread(values: np.ndarray) -> str:
    return (f"min {values.min():.3f}  1% {np.percentile(values, 1):.3f}  median {np.median(values):.3f}  "
            f"max {values.max():.3f}")


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(here.parent / "shared" / "data" / "hymenoptera"))
    args = parser.parse_args()
    root = Path(args.data)
    photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "data"
        originals, copies = [], []
        for k, photo in enumerate(photos):
            label = photo.parent.name
            original = work / "train" / label / f"{k}{photo.suffix}"
            original.parent.mkdir(parents=True, exist_ok=True)
            original.write_bytes(photo.read_bytes())
            copy = work / "test" / label / f"{k}.jpg"
            resave(photo, copy)
            originals.append(str(original))
            copies.append(str(copy))
        started = time.perf_counter()
        result = audit(str(work), out=Path(tmp) / "audit", progress=False)
        seconds = time.perf_counter() - started
        twin = dict(zip(originals, copies)) | dict(zip(copies, originals))
        found = sum(1 for p in result["near_duplicates"] if twin.get(p["a"]["name"]) == p["b"]["name"])
        wrong = [p for p in result["near_duplicates"] if twin.get(p["a"]["name"]) != p["b"]["name"]]
        by_features = sum(1 for p in result["near_duplicates"] if p["by"] == "features"
                          and twin.get(p["a"]["name"]) == p["b"]["name"])

        feats = backbone_features([ImageRef.from_file(f) for f in originals + copies], progress=False)
        n = len(originals)
        if not feats.ok.all():
            raise SystemExit("some images could not be read: run `transferlab audit` on the data first")
        v = feats.vectors
        copy_cos = np.einsum("ij,ij->i", v[:n], v[n:])
        among = v[:n] @ v[:n].T
        np.fill_diagonal(among, -1.0)
        edges = np.stack([edge_vector(i.thumb) for i in inspect_all([ImageRef.from_file(f) for f in originals + copies])])
        copy_edges = np.einsum("ij,ij->i", edges[:n], edges[n:])
        distinct_edges = (edges[:n] @ edges[:n].T)[np.triu_indices(n, 1)]

    print(f"{root}: {n} photos, each re-saved at JPEG quality 60 and 0.7x size; audit {seconds:.1f} s")
    print(f"copies found: {found}/{n} ({by_features} by cosine alone, the rest by the edge check); "
          f"distinct-photo pairs reported: {len(wrong)}")
    print(f"backbone cosine, copy to its original:        {spread(copy_cos)}")
    print(f"backbone cosine, original to nearest other:   {spread(among.max(1))}")
    print(f"thumbnail edge correlation, copy to original: {spread(copy_edges)}")
    print(f"thumbnail edge correlation, distinct pairs:   {spread(distinct_edges)} ({len(distinct_edges)} pairs)")


if __name__ == "__main__":
    main()
