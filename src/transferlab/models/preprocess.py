"""How pixels must be prepared for a backbone's weights; saved with every run so prediction agrees."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Preprocess:
    """Eval-time preparation: `crop` is timm's (resize the shorter side to input_size / crop_pct,
    centre-crop the square); `squash` resizes the whole image to the square, aspect ratio not
    kept, so nothing of a wide object is cut away (how bilinear CNNs prepare their 448 x 448
    inputs; on cropped car photos it scores far above the centre crop).

    Normalisation (mean, std) runs inside the network (see network.py); this object says what to
    do with the pixels before they reach it.
    """

    input_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "crop"  # runs saved before the option existed cropped

    @property
    def resize_size(self) -> int | tuple[int, int]:
        """What decode() resizes to: the shorter side (crop) or the exact square (squash)."""
        if self.resize == "squash":
            return self.input_size, self.input_size
        # timm's eval transform: Resize(floor(size / crop_pct)) then CenterCrop(size).
        return max(self.input_size, math.floor(self.input_size / self.crop_pct))

    @classmethod
    def from_timm_config(cls, cfg: dict, image_size: int | None = None, resize: str = "crop") -> "Preprocess":
        size = cfg["input_size"]
        return cls(
            input_size=int(image_size or max(size[1], size[2])),
            crop_pct=float(cfg.get("crop_pct") or 1.0),
            interpolation=cfg.get("interpolation") or "bilinear",
            mean=tuple(float(m) for m in cfg["mean"]),
            std=tuple(float(s) for s in cfg["std"]),
            resize=resize,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["resize_size"] = list(self.resize_size) if isinstance(self.resize_size, tuple) else self.resize_size
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["input_size"]), float(d["crop_pct"]), d["interpolation"],
                   tuple(d["mean"]), tuple(d["std"]), d.get("resize", "crop"))

    def center_crop(self, pixels: np.ndarray) -> np.ndarray:
        """The eval view of an image already resized to `resize_size` on its shorter side."""
        h, w = pixels.shape[:2]
        s = self.input_size
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        return pixels[top:top + s, left:left + s]
