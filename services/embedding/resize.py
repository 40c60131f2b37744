"""The one resize of cbmir, torch-free: decoded pixels -> size x size, antialiased bilinear ("bilinear-squash").

Ingestion's read tasks (`decode_resized`, before the pixels cross Ray's object store), the query service and
`preprocess.to_batch_tensor` all call `resize_unit`, so a stored vector and a query vector for the same file are
computed from the same pixels. It is Pillow's resampling (the code torch's `interpolate(antialias=True)` was ported
from), on float32 planes, so a Ray read task decodes and resizes without importing torch: ~1.4 core-seconds and
~300 MB less per worker at every start (docs/benchmarks.md, "Read tasks without torch").
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from cbmir.services.embedding.decode import MAX_IMAGE_PIXELS, DecodedImage, decode_native
from cbmir.services.embedding.thumbnail import thumbnail_jpeg


def unit_pixels(image: np.ndarray) -> np.ndarray:
    """HxW / HxWx1 / HxWx3 / HxWx4 (float in [0, 1], uint8 or uint16) -> HxW or HxWx3 float32 in [0, 1] (alpha
    dropped); a float32 input is returned as it is (shared, for reading)."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[:, :, 0] if arr.shape[2] == 1 else arr[:, :, :3]
    elif arr.ndim != 2:
        raise ValueError(f"image of shape {arr.shape} is not HxW or HxWx3")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / np.float32(65535.0)
    return arr.astype(np.float32, copy=False)


def _resize_plane(plane: np.ndarray, size: int) -> np.ndarray:
    # Mode "F": Pillow resamples 32-bit float planes with float accumulation, so 16-bit sources keep their levels.
    resized = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32)).resize(
        (size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def resize_unit(image: np.ndarray, size: int) -> np.ndarray:
    """Any decoded image (HxW / HxWx3; float in [0, 1], uint8 or uint16) -> C x size x size float32, C in {1, 3}.

    Antialiased bilinear, so downscaling a 3000 px radiograph averages pixels instead of aliasing them. Grey stays
    one channel: a third of the work, expanded to 3 only when batched.
    """
    unit = unit_pixels(image)
    planes = [unit] if unit.ndim == 2 else [unit[:, :, c] for c in range(3)]
    if unit.shape[:2] != (size, size):
        planes = [_resize_plane(plane, size) for plane in planes]
    return np.stack(planes) if len(planes) > 1 else planes[0][np.newaxis]


def wire_dtype(bits: str, *, resized: bool) -> np.dtype:
    """The compact dtype that keeps what an image holds once presized.

    uint8 only for an 8-bit source shipped at its own size (exact). A resized image holds averages of its
    source's levels, which 8 bits would round off: measured on MIAS mammograms (mostly black), rounding the
    resized image to 8 bits alone moved efficientnet_lite0 vectors to cosine 0.985-0.997, while 16 bits keep
    1.0000 (docs/benchmarks.md, "Ingest decode path"). So resized images and 9-16-bit sources go as uint16, and
    float32 only for 32-bit and float data.
    """
    try:
        depth = int(bits)
    except ValueError:
        depth = 16  # a DICOM without BitsStored: 16 bits hold any stored integer image
    if depth <= 8 and not resized:
        return np.dtype(np.uint8)
    return np.dtype(np.uint16) if depth <= 16 else np.dtype(np.float32)


def presize(image: np.ndarray, size: int, bits: str = "") -> np.ndarray:
    """`resize_unit`, returned as size x size (x 3) in `wire_dtype(bits)`: uint8 = value*255,
    uint16 = value*65535, rounded; `unit_pixels` reads both back (/ 255, / 65535).

    An image of at most size x size pixels keeps its own size (only its dtype changes): upsampling it here would
    only make the wire bigger, and `to_batch_tensor` resizes it with the same `resize_unit` anyway.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    small = arr.shape[0] * arr.shape[1] <= size * size
    dtype = wire_dtype(bits, resized=not small)
    if small and arr.dtype == dtype and (arr.ndim == 2 or arr.shape[2] == 3):
        return np.ascontiguousarray(arr)  # exact already
    if small:
        hwc = np.clip(unit_pixels(arr), 0.0, 1.0)
    else:
        chw = np.clip(resize_unit(arr, size), 0.0, 1.0)
        hwc = chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)
    if dtype == np.uint8:
        return np.ascontiguousarray(np.rint(hwc * np.float32(255.0)).astype(np.uint8))
    if dtype == np.uint16:
        return np.ascontiguousarray(np.rint(hwc * np.float32(65535.0)).astype(np.uint16))
    return np.ascontiguousarray(hwc, dtype=np.float32)


def decode_resized(data: bytes, size: int, *, max_pixels: int = MAX_IMAGE_PIXELS,
                   thumbnail: bool = False, file_key: str = "") -> DecodedImage:
    """Bytes -> DecodedImage whose pixels are already size x size, compact (`presize`).

    The fast path of ingestion and the query service: JPEG decodes at the smallest DCT scale that is still
    >= 2 x size on each side (so the final resize still antialiases), other formats are box-reduced to that,
    and no full-size float copy of an 8-bit image is made. The content key is the one `decode_image` gives.
    `thumbnail`: also a small JPEG (services/embedding/thumbnail.py), from the reduced pixels, aspect kept.
    `file_key`: `file_content_key(data)` if the caller has hashed the bytes already.
    """
    decoded = decode_native(data, max_pixels=max_pixels, min_size=2 * size, file_key=file_key)
    pixels = presize(decoded.pixels, size, decoded.metadata.get("bits", ""))
    small = thumbnail_jpeg(decoded.pixels) if thumbnail else b""
    return DecodedImage(pixels=pixels, content_key=decoded.content_key, metadata=decoded.metadata, thumbnail=small,
                        patient_id=decoded.patient_id, study_uid=decoded.study_uid)
