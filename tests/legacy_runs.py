"""Run directories written by an earlier transferlab, kept as their text files plus a list of
their tensors: the weights (which the repository does not hold) are made again at test time by a
fixed rule, and the probabilities the earlier code gave with exactly those weights are recorded.

`tests/fixtures/make_legacy_runs.py` wrote the fixtures with the code of the version it names;
`test_legacy_runs.py` checks that today's code still loads, predicts and exports them."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_runs"
TEXT_FILES = ("config.yaml", "model.json", "metrics.json")
# Buffers whose values a run chose (the normalisation inside the network): kept, not refilled.
KEPT = ("normalize.scale", "normalize.shift", "scale2", "shift2")


def tensor_manifest(state: dict) -> list[dict]:
    """Name, shape and dtype of every tensor; values only of the kept buffers."""
    rows = []
    for name, t in state.items():
        row = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        if name.endswith(KEPT):
            row["values"] = t.flatten().tolist()
        rows.append(row)
    return rows


def filled_state(manifest: list[dict]) -> dict:
    """Deterministic weights with the manifest's names and shapes (finite, not degenerate)."""
    import torch

    state = {}
    for row in manifest:
        name, shape, dtype = row["name"], tuple(row["shape"]), getattr(torch, row["dtype"])
        if "values" in row:
            state[name] = torch.tensor(row["values"], dtype=dtype).reshape(shape)
            continue
        if not dtype.is_floating_point:
            state[name] = torch.zeros(shape, dtype=dtype)
            continue
        gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        noise = torch.randn(shape, generator=gen)
        if name.endswith("running_var"):
            value = 1.0 + 0.1 * noise.abs()
        elif name.endswith("running_mean"):
            value = 0.1 * noise
        elif len(shape) <= 1:
            value = (1.0 if name.endswith("weight") else 0.0) + 0.05 * noise
        else:
            value = noise * np.sqrt(2.0 / max(1, int(np.prod(shape[1:]))))  # He: signals neither die nor explode
        state[name] = value.to(dtype)
    return state


def probe_images(folder: Path) -> list[Path]:
    """Three small photos-to-be of fixed pixels, written as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i, (h, w) in enumerate(((40, 30), (24, 24), (50, 70))):
        base = np.array([(200, 40, 40), (40, 40, 200), (120, 160, 90)][i])
        pixels = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"probe{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def materialise(name: str, target: Path) -> Path:
    """The fixture `name` as a complete run directory under `target`, weights made by the rule."""
    from safetensors.torch import save_file

    source = FIXTURES / name
    run = target / name
    run.mkdir(parents=True)
    for file in TEXT_FILES:
        shutil.copy(source / file, run / file)
    manifest = json.loads((source / "tensors.json").read_text())
    save_file({k: v.contiguous() for k, v in filled_state(manifest).items()}, str(run / "model.safetensors"))
    return run


def names() -> list[str]:
    return sorted(p.name for p in FIXTURES.iterdir() if (p / "model.json").is_file())
