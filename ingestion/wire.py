"""The pixels of one decoded row as they cross Ray's object store: compact bytes, a shape and a dtype name."""

from __future__ import annotations

import numpy as np

# uint8 for 8-bit images shipped at their own size, uint16 for resized ones and 9-16-bit sources, float32 only for
# float or 32-bit data: services/embedding/preprocess.wire_dtype decides.
WIRE_DTYPES: frozenset[str] = frozenset({"uint8", "uint16", "float32"})


def pack(pixels: np.ndarray) -> tuple[bytes, list[int], str]:
    """-> (C-order little-endian bytes, shape, dtype name) of a presized image."""
    name = np.dtype(pixels.dtype).name
    if name not in WIRE_DTYPES:
        raise ValueError(f"pixels of dtype {name} do not go on the wire (expected one of {sorted(WIRE_DTYPES)})")
    canon = np.ascontiguousarray(pixels, dtype=np.dtype(name).newbyteorder("<"))
    return canon.tobytes(), list(canon.shape), name


def unpack(data: bytes, shape: list[int], dtype: str) -> np.ndarray:
    """The array `pack` wrote, read-only and without a copy (np.frombuffer over the Arrow buffer)."""
    if dtype not in WIRE_DTYPES:
        raise ValueError(f"unknown pixel dtype on the wire: {dtype!r}")
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
