"""What an image declares about its size, read from its header before a pixel is decoded.

The query service admits a decode by what it will cost (`DeclaredSize.decode_bytes`) and refuses what is over
its limits before any allocation; the decoders use `check_deflated_dicom` so that a 1 MB deflated DICOM cannot
inflate to gigabytes inside pydicom.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

DICOM_MAGIC_OFFSET = 128
DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
INFLATE_CHUNK = 1 << 20  # bytes inflated at a time by the bomb check
FLOAT_BYTES = 4  # one float32 working copy of the pixels (windowing, normalisation)


# DICOM's JPEG (ISO 10918-1) syntaxes: baseline, extended, lossless. They allow BitsAllocated 8 or 16 only.
JPEG_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.53",
                 "1.2.840.10008.1.2.4.55", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")


class DeclaredSizeError(ValueError):
    """The header declares something we will not decode (too large, or a deflate bomb); the message says why."""


@dataclass(frozen=True)
class DeclaredSize:
    width: int
    height: int
    frames: int = 1
    samples: int = 1  # per pixel: 1 grey, 3 RGB
    bytes_per_sample: int = 1
    reduce: int = 1  # the decoder's own downscale factor per side (JPEG DCT scaling)
    kind: str = ""  # "jpeg", "png", "dicom", ...

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decode_bytes(self) -> int:
        """What decoding the first frame costs in memory, at most: the decoder's buffer plus one float32 copy."""
        decoded = math.ceil(self.width / self.reduce) * math.ceil(self.height / self.reduce) * self.samples
        return decoded * (self.bytes_per_sample + FLOAT_BYTES)


def max_inflated_bytes(max_pixels: int) -> int:
    """The most a deflated DICOM data set may inflate to: 4 bytes per allowed pixel, plus room for the header."""
    return max_pixels * 4 + 16 * 1024 * 1024


def declared_size(data: bytes, *, max_pixels: int, min_size: int = 0) -> DeclaredSize | None:
    """The size `data` declares (Pillow header or DICOM Rows/Columns), or None when the format is not known here
    (the decoder then says what it is). With `min_size`, JPEG's DCT downscale (to >= min_size) is accounted.
    A deflated DICOM is inflated (bounded by `max_pixels`) before its header is read."""
    if data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM":
        check_deflated_dicom(data, max_inflated_bytes(max_pixels))
        return _dicom_size(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                width, height, mode, kind = im.size[0], im.size[1], im.mode, (im.format or "").lower()
    except Image.DecompressionBombError:
        raise DeclaredSizeError("image too large (decompression bomb guard)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    samples = Image.getmodebands(mode) if mode else 1
    depth = 2 if mode.startswith("I;16") or mode in ("I", "F") else 1
    reduce = 1
    if kind == "jpeg" and min_size:
        while reduce < 8 and min(width, height) // (reduce * 2) >= min_size:
            reduce *= 2
    return DeclaredSize(width, height, 1, samples, depth, reduce, kind)


def _dicom_size(data: bytes) -> DeclaredSize | None:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True,
                             specific_tags=["Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated"])
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(str(ds.get("NumberOfFrames", 1) or 1))
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except Exception:  # noqa: BLE001 - the decoder reports a corrupt header in its own words
        return None
    check_dicom_codec(ds)
    if rows <= 0 or cols <= 0:
        return None
    return DeclaredSize(cols, rows, max(frames, 1), max(samples, 1), max(1, math.ceil(bits / 8)), 1, "dicom")


def check_dicom_codec(ds: object) -> None:
    """Refuse a JPEG-compressed DICOM declaring BitsAllocated other than 8 or 16 (PS3.5 8.2.1).

    pydicom tries GDCM first for these syntaxes, and GDCM's JPEG codec throws a C++ exception nobody catches on 32
    or 64 bits: the whole process aborts (`cbmir bench fuzz` killed `cbmir serve` with one such header edit).
    """
    try:
        meta = getattr(ds, "file_meta", None)
        syntax = str(meta.get("TransferSyntaxUID", "") if meta is not None else "")
    except Exception:  # noqa: BLE001 - a corrupt meta group: the decoder reports it
        return
    try:
        bits = int(getattr(ds, "BitsAllocated", 8) or 8)
    except Exception:  # noqa: BLE001 - pydicom converts elements lazily: a corrupt one raises anything here
        bits = 0
    if syntax in JPEG_SYNTAXES and bits not in (8, 16):
        raise DeclaredSizeError(f"a JPEG-compressed DICOM must have BitsAllocated 8 or 16, not {bits}")


def check_deflated_dicom(data: bytes, max_inflated: int) -> int:
    """Refuse a Deflated-syntax DICOM whose data set inflates to more than `max_inflated` bytes; else return the
    inflated size (0 for anything not deflated).

    pydicom inflates the whole data set before any element is read, so the check inflates it first, bounded.
    """
    if data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] != b"DICM":
        return 0
    meta_start = DICOM_MAGIC_OFFSET + 4
    # (0002,0000) UL, explicit VR: tag 4 + VR 2 + length 2 + value 4; the value is the rest of the meta group.
    if len(data) < meta_start + 12 or data[meta_start:meta_start + 6] != b"\x02\x00\x00\x00UL":
        return 0
    meta_end = meta_start + 12 + struct.unpack_from("<I", data, meta_start + 8)[0]
    meta = data[meta_start:meta_end]
    at = meta.find(b"\x02\x00\x10\x00UI")
    if at < 0:
        return 0
    length = struct.unpack_from("<H", meta, at + 6)[0]
    syntax = meta[at + 8:at + 8 + length].rstrip(b"\x00 ").decode("ascii", "replace")
    if syntax != DEFLATED_SYNTAX:
        return 0
    # Counted chunk by chunk and dropped: holding up to `max_inflated` bytes per request in flight would let a few
    # concurrent bombs take gigabytes before any is refused (measured by `cbmir bench fuzz`).
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated, pending = 0, data[meta_end:]
    try:
        while inflated <= max_inflated and not inflater.eof:
            chunk = inflater.decompress(pending, INFLATE_CHUNK)
            pending = inflater.unconsumed_tail
            inflated += len(chunk)
            if not chunk and not pending:  # a truncated stream: all of it inflated
                break
    except zlib.error as error:
        raise DeclaredSizeError(f"corrupt deflated DICOM: {error}") from None
    if inflated > max_inflated:
        raise DeclaredSizeError(f"deflated DICOM inflates to more than {max_inflated} bytes "
                                f"(from {len(data)}): refused (decompression bomb guard)")
    return inflated
