"""Decoded pixels -> the normalised N x 3 x S x S tensor a backbone takes; one definition for all paths."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

RESIZE_MODES: tuple[str, ...] = ("bilinear-squash",)


@dataclass(frozen=True)
class Preprocessing:
    """Input recipe of a backbone; part of the model identity, so any change makes a new collection.

    resize="bilinear-squash": the whole image is resized (antialiased bilinear) to input_size x input_size,
    aspect ratio not kept and nothing cropped, because a lesion at the border of a medical image must not be
    cut away by the ImageNet-style centre crop.
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "bilinear-squash"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize!r}; known: {', '.join(RESIZE_MODES)}")
        if self.input_size <= 0:
            raise ValueError(f"input_size must be positive, got {self.input_size}")

    def to_dict(self) -> dict[str, Any]:
        # Lists, not tuples: the dict is JSON-serialised into the model identity and must round-trip equal.
        return {"input_size": int(self.input_size), "mean": [float(m) for m in self.mean],
                "std": [float(s) for s in self.std], "resize": self.resize}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(input_size=int(d["input_size"]), mean=tuple(float(m) for m in d["mean"]),  # type: ignore[arg-type]
                   std=tuple(float(s) for s in d["std"]), resize=str(d.get("resize", "bilinear-squash")))  # type: ignore[arg-type]


def _to_chw(image: np.ndarray) -> torch.Tensor:
    """HxW / HxWx1 / HxWx3 / HxWx4 (float in [0, 1] or uint8/uint16) -> C x H x W float32, C in {1, 3}."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[:, :, :3] if arr.shape[2] == 4 else arr
    elif arr.ndim != 2:
        raise ValueError(f"image of shape {arr.shape} is not HxW or HxWx3")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    else:
        arr = arr.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


def to_batch_tensor(images: Sequence[np.ndarray], prep: Preprocessing) -> torch.Tensor:
    """Resize each image to prep.input_size, grey -> 3 channels, normalise: N x 3 x S x S float32."""
    size = prep.input_size
    out = torch.empty((len(images), 3, size, size), dtype=torch.float32)
    for i, image in enumerate(images):
        chw = _to_chw(image)
        if tuple(chw.shape[1:]) != (size, size):
            # Resize before expanding grey to 3 channels: a third of the work for greyscale images.
            # antialias=True so downscaling a 1024^2 mammogram averages pixels instead of aliasing them.
            chw = F.interpolate(chw.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False,
                                antialias=True).squeeze(0)
        out[i] = chw.expand(3, size, size) if chw.shape[0] == 1 else chw
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1)
    return out.sub_(mean).div_(std)
