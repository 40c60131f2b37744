"""Thumbnails: a decoded image → a small JPEG of its pixels only (no header, so no name, id or date travels)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

THUMBNAIL_SIZE = 128  # longest side, pixels
THUMBNAIL_MAX_BYTES = 12_288  # its base64 (16 384 chars) fits the store's VARCHAR (schema.THUMBNAIL_MAX_LENGTH)
QUALITIES = (85, 70, 50, 30)  # tried in turn until the JPEG fits
# Box-average by the largest whole factor first (Pillow's `reduce`), Lanczos only over what is left: a 512 px brain
# MRI's thumbnail (512 -> 128 by 4x4 averages, then the JPEG) takes 0.65 ms where Pillow's default gap (2.0: 512 ->
# 256 box, then Lanczos) took 1.8 ms, a sixth of a read task's work; the two thumbnails differ by 0.65 grey levels
# on average (docs/benchmarks.md "The write path"). A thumbnail is for the eye; the vectors never see it.
REDUCING_GAP = 1.0


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Grey or RGB(A) pixels, float in [0, 1] or integer → uint8 HxW or HxWx3 for display.

    Integers wider than 8 bits (12/16-bit radiographs) are stretched between their own min and max: their
    stored range is what the pixels use, not the dtype's.
    """
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    values = arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        values = np.clip(values, 0.0, 1.0)
    else:
        lo, hi = float(values.min()), float(values.max())
        values = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return np.ascontiguousarray(np.round(values * 255.0).astype(np.uint8))


def thumbnail_jpeg(pixels: np.ndarray, size: int = THUMBNAIL_SIZE, max_bytes: int = THUMBNAIL_MAX_BYTES) -> bytes:
    """A JPEG whose longest side is at most `size`, aspect kept, at most `max_bytes` (lower quality if needed)."""
    image = Image.fromarray(to_uint8(pixels))
    image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    data = b""
    for quality in QUALITIES:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
        data = buffer.getvalue()
        if len(data) <= max_bytes:
            return data
    # A noisy RGB image: halve it.
    image.thumbnail((size // 2, size // 2), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=QUALITIES[-1])
    return buffer.getvalue()


def thumbnail_text(pixels: np.ndarray) -> str:
    """`thumbnail_jpeg` as base64 text, the form the store keeps."""
    return base64.b64encode(thumbnail_jpeg(pixels)).decode("ascii")


def base64_length(size: int) -> int:
    return 4 * ((size + 2) // 3)
