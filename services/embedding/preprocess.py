"""Decoded pixels -> the normalised N x 3 x S x S tensor a backbone takes; one definition for all paths.

`resize_unit` is the one resize of cbmir: ingestion's read tasks (through `decode_resized`, before the pixels
cross Ray's object store), the query service and `to_batch_tensor` all call it, so a stored vector and a query
vector for the same file are computed from the same pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cbmir.services.embedding.decode import MAX_IMAGE_PIXELS, DecodedImage, decode_native
from cbmir.services.embedding.thumbnail import thumbnail_jpeg

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
    """HxW / HxWx1 / HxWx3 / HxWx4 (float in [0, 1] or uint8/uint16) -> C x H x W float32, C in {1, 3}; a float32
    input is shared, not copied, so the result is for reading."""
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
    arr = np.ascontiguousarray(arr)
    if arr.flags.writeable:
        t = torch.from_numpy(arr)
    else:
        # Read-only float pixels (np.frombuffer over a Ray/Arrow buffer in the embedding actors): shared, not
        # copied. Every caller only reads the tensor (interpolate, or a copy into the batch), so torch's
        # "non-writable array" warning, printed once by every actor, says nothing here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
            t = torch.from_numpy(arr)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


def resize_unit(image: np.ndarray, size: int) -> torch.Tensor:
    """Any decoded image (HxW / HxWx3; float in [0, 1], uint8 or uint16) -> C x size x size float32, C in {1, 3}.

    Antialiased bilinear ("bilinear-squash"), so downscaling a 3000 px radiograph averages pixels instead of
    aliasing them. Grey stays one channel: a third of the work, expanded to 3 only when batched.
    """
    chw = _to_chw(image)
    if tuple(chw.shape[1:]) != (size, size):
        chw = F.interpolate(chw.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False,
                            antialias=True).squeeze(0)
    return chw


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
    uint16 = value*65535, rounded; `_to_chw` reads both back (/ 255, / 65535).

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
    chw = (_to_chw(arr) if small else resize_unit(arr, size)).clamp_(0.0, 1.0)
    hwc = chw[0] if chw.shape[0] == 1 else chw.permute(1, 2, 0)
    if dtype == np.uint8:
        return hwc.mul(255.0).round_().to(torch.uint8).contiguous().numpy()
    if dtype == np.uint16:
        # torch has no uint16 arithmetic on every version: round in int32, then narrow in numpy.
        return hwc.mul(65535.0).round_().to(torch.int32).contiguous().numpy().astype(np.uint16)
    return np.ascontiguousarray(hwc.numpy(), dtype=np.float32)


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


def to_batch_tensor(images: Sequence[np.ndarray], prep: Preprocessing) -> torch.Tensor:
    """Resize each image to prep.input_size, grey -> 3 channels, normalise: N x 3 x S x S float32."""
    size = prep.input_size
    out = torch.empty((len(images), 3, size, size), dtype=torch.float32)
    for i, image in enumerate(images):
        chw = resize_unit(image, size)
        out[i] = chw.expand(3, size, size) if chw.shape[0] == 1 else chw
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1)
    return out.sub_(mean).div_(std)
