"""Hand-crafted descriptors for re-ranking (seed 003): HOG on a fixed-size greyscale copy, compared with L1."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from skimage.feature import hog

# Seed 003 used HOG with L1 distance; 128 px with 16 px cells and 2x2 blocks keeps the shape of an organ and
# the texture of tissue in 1764 numbers (7 x 7 blocks x 2 x 2 cells x 9 orientations).
HOG_SIZE = 128
HOG_ORIENTATIONS = 9
HOG_PIXELS_PER_CELL = 16
HOG_CELLS_PER_BLOCK = 2
HOG_DIM = ((HOG_SIZE // HOG_PIXELS_PER_CELL) - HOG_CELLS_PER_BLOCK + 1) ** 2 * HOG_CELLS_PER_BLOCK**2 * HOG_ORIENTATIONS
DESCRIPTORS = {"hog": HOG_DIM}


def _unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 / uint16 pixels as ingestion ships them (value * 255 / * 65535) back to float in [0, 1]."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / 65535.0
    return pixels


def _grey_square(pixels: np.ndarray) -> np.ndarray:
    pixels = _unit(pixels)
    grey = pixels.mean(axis=2) if pixels.ndim == 3 else pixels
    image = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32), mode="F")
    return np.asarray(image.resize((HOG_SIZE, HOG_SIZE), Image.Resampling.BILINEAR), dtype=np.float32)


def hog_descriptor(pixels: np.ndarray) -> np.ndarray:
    """HOG of a decoded image (HxW or HxWx3: float in [0, 1], uint8 or uint16) → float32 vector of HOG_DIM."""
    features = hog(
        _grey_square(pixels),
        orientations=HOG_ORIENTATIONS,
        pixels_per_cell=(HOG_PIXELS_PER_CELL, HOG_PIXELS_PER_CELL),
        cells_per_block=(HOG_CELLS_PER_BLOCK, HOG_CELLS_PER_BLOCK),
        block_norm="L2-Hys",
        feature_vector=True,
    )
    return features.astype(np.float32)


def hog_descriptors(images: Sequence[np.ndarray]) -> np.ndarray:
    if not images:
        return np.zeros((0, HOG_DIM), dtype=np.float32)
    return np.stack([hog_descriptor(image) for image in images])


def l1_distances(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    return np.abs(candidates - query[None, :]).sum(axis=1)
