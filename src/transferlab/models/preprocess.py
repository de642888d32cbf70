"""How pixels must be prepared for a backbone's weights; saved with every run so prediction agrees."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Preprocess:
    """Eval-time preparation in timm's terms: resize the shorter side, centre-crop, normalise.

    Normalisation (mean, std) runs inside the network (see network.py); this object says what to
    do with the pixels before they reach it.
    """

    input_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def resize_size(self) -> int:
        # timm's eval transform: Resize(floor(size / crop_pct)) then CenterCrop(size).
        return max(self.input_size, math.floor(self.input_size / self.crop_pct))

    @classmethod
    def from_timm_config(cls, cfg: dict, image_size: int | None = None) -> "Preprocess":
        size = cfg["input_size"]
        return cls(
            input_size=int(image_size or max(size[1], size[2])),
            crop_pct=float(cfg.get("crop_pct") or 1.0),
            interpolation=cfg.get("interpolation") or "bilinear",
            mean=tuple(float(m) for m in cfg["mean"]),
            std=tuple(float(s) for s in cfg["std"]),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["resize_size"] = self.resize_size
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["input_size"]), float(d["crop_pct"]), d["interpolation"],
                   tuple(d["mean"]), tuple(d["std"]))

    def center_crop(self, pixels: np.ndarray) -> np.ndarray:
        """The eval view of an image already resized to `resize_size` on its shorter side."""
        h, w = pixels.shape[:2]
        s = self.input_size
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        return pixels[top:top + s, left:left + s]
