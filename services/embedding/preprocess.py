"""Decoded pixels -> the normalised N x 3 x S x S tensor a backbone takes; one definition for all paths.

The resize itself is `resize.resize_unit` (torch-free, so Ray read tasks never import torch); this module adds
what only a model needs: the preprocessing recipe and the normalised batch tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cbmir.services.embedding.resize import resize_unit

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


def to_batch_tensor(images: Sequence[np.ndarray], prep: Preprocessing) -> torch.Tensor:
    """Resize each image to prep.input_size, grey -> 3 channels, normalise: N x 3 x S x S float32."""
    size = prep.input_size
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = resize_unit(image, size)  # one grey channel broadcasts to the three
    mean = np.asarray(prep.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(prep.std, dtype=np.float32).reshape(1, 3, 1, 1)
    out -= mean
    out /= std
    return torch.from_numpy(out)
