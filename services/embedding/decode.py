"""Bytes -> pixels in [0, 1], a decoder-independent content key and non-PHI metadata; shared by ingestion and
service."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib.util
import io
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cbmir.services.embedding.declared import (
    DeclaredSizeError,
    check_deflated_dicom,
    check_dicom_codec,
    max_inflated_bytes,
)
from cbmir.services.embedding.dicom_plugins import drop_gdcm_where_replaceable

MAX_IMAGE_PIXELS: int = 200_000_000
"""Per-frame pixel limit, checked from the header before any pixel data is decoded.

Pillow keeps its own process-wide guard (PIL.Image.MAX_IMAGE_PIXELS, error above twice that value, ~179 M
pixels by default); we do not change that global, so the effective Pillow limit is the smaller of the two.
"""

_DICOM_MAGIC_OFFSET = 128
# Transfer syntaxes only the GPLv3 libjpeg plugin decodes here (gdcm, pyjpegls, openjpeg and Pillow cover the rest):
# JPEG Extended, 12-bit. It is the opt-in extra cbmir[gpl-jpeg], so a default install stays Apache-compatible.
GPL_ONLY_SYNTAXES = ("1.2.840.10008.1.2.4.51",)
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
METADATA_KEYS: tuple[str, ...] = ("modality", "body_part", "view", "format", "photometric", "bits")


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image; the message says why."""


@dataclass(frozen=True)
class DecodedImage:
    """Decoded pixels (float32 in [0, 1], HxW or HxWx3), the store identity of the image and non-PHI tags.

    `decode_native` may also hand out uint8 pixels (meaning value / 255): an 8-bit image is then never copied to
    float at its full size.
    """

    pixels: np.ndarray
    content_key: str
    metadata: dict[str, str] = field(default_factory=dict)
    thumbnail: bytes = b""  # a small JPEG of the pixels, when asked for (decode_resized(thumbnail=True))
    # DICOM PatientID / StudyInstanceUID, raw: only ever stored as `subject_hash` (the erasure keys); out of repr so
    # no log line of a DecodedImage carries them.
    patient_id: str = field(default="", repr=False)
    study_uid: str = field(default="", repr=False)


def image_id(content_key: str, salt: str = "") -> str:
    """The store's primary key for an image: first 32 hex chars of sha256(content_key), or of
    HMAC-SHA256(salt, content_key) with a salt (then an id reveals nothing about the DICOM UID it came from)."""
    if salt:
        return hmac.new(salt.encode("utf-8"), content_key.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
    return hashlib.sha256(content_key.encode("utf-8")).hexdigest()[:32]


SUBJECT_KINDS: tuple[str, ...] = ("patient", "study")


def subject_hash(kind: str, value: str, salt: str = "") -> str:
    """The stored erasure key of a DICOM PatientID (`kind` "patient") or StudyInstanceUID ("study"): keyed like the
    ids, so only whoever holds the salt can find a patient's rows; "" for an empty value (nothing to erase by)."""
    if kind not in SUBJECT_KINDS:
        raise ValueError(f"subject kind must be one of {', '.join(SUBJECT_KINDS)}, got {kind!r}")
    value = value.strip()
    return image_id(f"{kind}:{value}", salt) if value else ""


def id_salt_digest(salt: str) -> str:
    """What a collection records about its id salt so ingest and serve can check they agree ("" = unsalted).

    A digest of the salt, never the salt; with a random salt of 16+ characters it cannot be reversed.
    """
    if not salt:
        return ""
    return hashlib.sha256(b"cbmir-id-salt-v1\0" + salt.encode("utf-8")).hexdigest()[:16]


def _metadata(**values: str) -> dict[str, str]:
    md = dict.fromkeys(METADATA_KEYS, "")
    md.update({k: v for k, v in values.items() if v})
    return md


FILE_KEY_PREFIX = "sha256:"


def file_content_key(data: bytes) -> str:
    """`sha256:<hex>` of the file bytes: the same whichever decoder, decoder version or downscale reads them."""
    return FILE_KEY_PREFIX + hashlib.sha256(data).hexdigest()


def dicom_content_key(sop_instance_uid: str) -> str:
    """`dicom:<SOP Instance UID>`: a DICOM image's key whatever its transfer syntax, file or network path."""
    return f"dicom:{sop_instance_uid}"


def pixel_content_key(raw: np.ndarray) -> str:
    """`pixels:<sha256>` over canonical (little-endian, C-order) integer pixels, their shape and dtype.

    Shape and dtype are hashed too so an 8-bit and a 16-bit image with the same bytes never collide.
    """
    canon = np.ascontiguousarray(raw, dtype=raw.dtype.newbyteorder("<"))
    h = hashlib.sha256()
    h.update(f"{canon.dtype.str}|{'x'.join(map(str, canon.shape))}|".encode())
    h.update(canon.tobytes())
    return "pixels:" + h.hexdigest()


def _finish(pixels: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(pixels, dtype=np.float32)
    # Clip rounding noise from the float maths so consumers can rely on the [0, 1] contract.
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _minmax(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64, copy=False)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not np.isfinite(lo) or not np.isfinite(hi):
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:  # constant image: all zeros rather than a division by zero
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _scale_unsigned(arr: np.ndarray) -> np.ndarray:
    """Unsigned integers to [0, 1] by the bit depth actually used (12-bit data in 16-bit words -> /4095)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    peak = int(arr.max()) if arr.size else 0
    bits = max(8, peak.bit_length())
    return (arr.astype(np.float64) / float((1 << bits) - 1)).astype(np.float32)


def _grey_to_unit(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "u" or (arr.dtype.kind == "i" and arr.size and int(arr.min()) >= 0):
        return _scale_unsigned(arr.astype(np.uint32) if arr.dtype.kind == "i" else arr)
    if arr.dtype.kind == "f" and arr.size and float(arr.min()) >= 0.0 and float(arr.max()) <= 1.0:
        return arr.astype(np.float32)
    return _minmax(arr)


# ---------------------------------------------------------------------------------------------- arrays


def decode_array(array: np.ndarray) -> DecodedImage:
    """An in-memory image (npz datasets such as MedMNIST: uint8 HxW or HxWx3) -> DecodedImage."""
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]  # drop alpha: retrieval looks at the image content, not its transparency
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ImageDecodeError(f"array of shape {arr.shape} is not an image (expected HxW or HxWx3)")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageDecodeError(f"empty image of shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype.kind not in "uif":
        raise ImageDecodeError(f"array of dtype {arr.dtype} is not an image")
    if arr.ndim == 3:
        if arr.dtype.kind == "u":
            pixels = _scale_unsigned(arr)
        elif arr.dtype.kind == "f" and float(arr.min()) >= 0 and float(arr.max()) <= 1:
            pixels = arr.astype(np.float32)
        else:
            pixels = _minmax(arr)
    else:
        pixels = _grey_to_unit(arr)
    bits = str(arr.dtype.itemsize * 8)
    return DecodedImage(
        pixels=_finish(pixels),
        content_key=pixel_content_key(arr),
        metadata=_metadata(format="array", photometric="RGB" if arr.ndim == 3 else "MONOCHROME2", bits=bits),
    )


# ---------------------------------------------------------------------------------------------- entry


def decode_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> DecodedImage:
    """Decode DICOM, PNG, JPEG, PGM/PPM, TIFF or BMP bytes at full size; any failure becomes ImageDecodeError."""
    decoded = decode_native(data, max_pixels=max_pixels)
    return DecodedImage(pixels=_finish(_unit(decoded.pixels)), content_key=decoded.content_key,
                        metadata=decoded.metadata, patient_id=decoded.patient_id, study_uid=decoded.study_uid)


def _has_dicom_preamble(data: bytes) -> bool:
    return data[_DICOM_MAGIC_OFFSET:_DICOM_MAGIC_OFFSET + 4] == b"DICM"


def stored_content_key(data: bytes) -> str:
    """The content key `decode_native` gives these bytes, found without decoding a pixel: a DICOM file's SOP
    Instance UID read from its header (stopping before the pixel data), else the SHA-256 of the bytes.

    Ingestion looks the key's id up before decoding, so a rerun skips a stored image, DICOM included, for the
    price of a header parse or a hash. A header that cannot be read gives the bytes' key; the decode then says
    what is wrong with the file."""
    if _has_dicom_preamble(data):
        import pydicom

        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged header is the decode's to report, once
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            sop_uid = _dicom_str(header, "SOPInstanceUID")
            if sop_uid:
                return dicom_content_key(sop_uid)
    return file_content_key(data)


def decode_native(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS, min_size: int = 0,
                  file_key: str = "") -> DecodedImage:
    """As `decode_image`, but 8-bit images stay uint8 and, with `min_size`, the decoder may downscale.

    With `min_size` > 0 the image comes out no smaller than min_size on either side (or at its own size when it
    is smaller): JPEG is decoded at a reduced DCT scale (Pillow `draft`, libjpeg's own scaling), other Pillow
    formats are box-reduced by a whole factor right after decoding. A single grey DICOM frame in JPEG baseline or
    JPEG 2000 decodes at reduced size from its encapsulated frame (Pillow); other grey DICOM frames decode at full
    size and are box-reduced before their LUTs.
    The content key never depends on either: it is the file's SHA-256, or the DICOM SOP Instance UID.
    `file_key`: `file_content_key(data)` when the caller has it already (the bytes are then not hashed again).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageDecodeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ImageDecodeError("empty input (0 bytes)")
    if _has_dicom_preamble(data):
        return _decode_dicom(data, max_pixels, force=False, min_size=min_size, file_key=file_key)
    try:
        return _decode_pillow(data, max_pixels, min_size, file_key=file_key)
    except _NotPillowFormat:
        pass
    # No preamble/meta: older DICOM files start straight with the dataset. Only accept the forced parse when
    # it yields a real image dataset, because `force=True` "parses" almost any bytes into garbage elements.
    return _decode_dicom(data, max_pixels, force=True, file_key=file_key)


def _unit(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels


# ---------------------------------------------------------------------------------------------- Pillow


class _NotPillowFormat(Exception):
    pass


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image has an invalid size {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(f"image too large: {width}x{height} pixels exceeds limit {max_pixels} "
                               "(decompression bomb guard)")


def _decode_pillow(data: bytes, max_pixels: int, min_size: int = 0, *, file_key: str = "") -> DecodedImage:
    try:
        with warnings.catch_warnings():
            # Pillow warns between its limit and twice it; our own max_pixels check is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise _NotPillowFormat from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc} (decompression bomb guard)") from exc
    except Exception as exc:  # a malformed header in a recognised format
        raise ImageDecodeError(f"corrupt image header: {exc}") from exc

    fmt = (im.format or "unknown").lower()
    try:
        with im:
            # Header-only so far: refuse huge images before load() allocates and inflates the pixel data.
            _check_size(im.size[0], im.size[1], max_pixels)
            im.seek(0)  # multi-page TIFF: the first page
            if min_size:
                # JPEG only (a no-op for other formats): the smallest DCT scale (1/2, 1/4, 1/8) that keeps both
                # sides >= min_size, chosen from the header before any pixel is decoded.
                im.draft(im.mode, (min_size, min_size))
            im.load()
            pixels, photometric, bits = _pillow_to_arrays(im, min_size)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc} (decompression bomb guard)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow signals truncation/corruption with OSError("image file is truncated"), SyntaxError("broken
        # PNG file"), ValueError or EOFError depending on the plugin.
        raise ImageDecodeError(f"truncated or corrupt {fmt.upper()} file: {exc}") from exc
    except Exception as exc:
        raise ImageDecodeError(f"cannot decode {fmt.upper()} image: {type(exc).__name__}: {exc}") from exc

    return DecodedImage(
        pixels=pixels if pixels.dtype == np.uint8 else _finish(pixels),
        content_key=file_key or file_content_key(data),
        metadata=_metadata(format=fmt, photometric=photometric, bits=bits),
    )


def _reduced(im: Image.Image, min_size: int) -> Image.Image:
    """Box-reduce by the largest whole factor that keeps both sides >= min_size (Pillow `reduce`, in C)."""
    factor = min(im.size[0] // min_size, im.size[1] // min_size) if min_size else 1
    return im.reduce(factor) if factor >= 2 else im


def _pillow_to_arrays(im: Image.Image, min_size: int = 0) -> tuple[np.ndarray, str, str]:
    """-> (pixels: uint8 for 8-bit images, else float32 in [0, 1], photometric, bits).

    The bit depth (16-bit data that uses 12 bits scales by 4095) is read from the full image before reducing.
    """
    mode = im.mode
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(_reduced(im.convert("L"), min_size), dtype=np.uint8), "MONOCHROME2", "8"
    if mode.startswith("I;16") or mode == "I":
        full = im.convert("I") if mode != "I" else im
        lo, hi = full.getextrema()
        arr = np.asarray(_reduced(full, min_size), dtype=np.int64)
        if lo >= 0 and hi <= 0xFFFF:
            bits = max(8, int(hi).bit_length())
            return (arr / float((1 << bits) - 1)).astype(np.float32), "MONOCHROME2", "16"
        return _minmax_between(arr, lo, hi), "MONOCHROME2", "32"
    if mode == "F":  # rare (floating-point TIFF): decoded and scaled at full size, as always
        return _grey_to_unit(np.asarray(im, dtype=np.float32)), "MONOCHROME2", "32"
    # RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV, RGBX...: everything colour becomes 8-bit RGB.
    return np.asarray(_reduced(im.convert("RGB"), min_size), dtype=np.uint8), "RGB", "8"


def _minmax_between(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Min-max scaling by the full image's extremes (so a reduced copy scales as the full one would)."""
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- DICOM


def _dicom_str(ds: Any, keyword: str) -> str:
    value = getattr(ds, keyword, None)
    if value is None:
        return ""
    try:
        return str(value).strip()
    except Exception:  # a malformed element should not sink an otherwise good image
        return ""


def _decode_dicom(data: bytes, max_pixels: int, *, force: bool, min_size: int = 0,
                  file_key: str = "") -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    not_image = "not an image (unrecognised format)"
    drop_gdcm_where_replaceable()
    try:
        check_deflated_dicom(data, max_inflated_bytes(max_pixels))  # pydicom would inflate it all, unbounded
    except DeclaredSizeError as exc:
        raise ImageDecodeError(str(exc)) from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
    except InvalidDicomError as exc:
        raise ImageDecodeError(not_image if force else f"invalid DICOM: {exc}") from exc
    except Exception as exc:
        raise ImageDecodeError(not_image if force else f"corrupt DICOM: {type(exc).__name__}: {exc}") from exc
    try:
        check_dicom_codec(ds)  # GDCM would abort the process on some of these
    except DeclaredSizeError as exc:
        raise ImageDecodeError(str(exc)) from None

    try:
        has_pixels = any(tag in ds for tag in _PIXEL_TAGS)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except Exception as exc:
        raise ImageDecodeError(not_image if force else f"corrupt DICOM: {exc}") from exc
    if force and (not has_pixels or rows <= 0 or cols <= 0):
        raise ImageDecodeError(not_image)
    if not has_pixels:
        raise ImageDecodeError("DICOM has no pixel data")
    if rows <= 0 or cols <= 0:
        raise ImageDecodeError("DICOM has pixel data but no Rows/Columns")
    _check_size(cols, rows, max_pixels)

    _ensure_transfer_syntax(ds)
    try:
        pixels, _raw, photometric = _dicom_pixels(ds, min_size)
    except ImageDecodeError:
        raise
    except Exception as exc:
        syntax, hint = "", ""
        with contextlib.suppress(Exception):
            uid = ds.file_meta.TransferSyntaxUID
            syntax = f" ({uid.name})"
            if uid in GPL_ONLY_SYNTAXES and importlib.util.find_spec("libjpeg") is None:
                hint = (" (12-bit JPEG Extended needs the GPLv3 libjpeg plugin: pip install 'cbmir[gpl-jpeg]'; "
                        "docs/licences.md)")
        raise ImageDecodeError(
            f"cannot decode DICOM pixel data{syntax}: {type(exc).__name__}: {exc}{hint}") from exc

    sop_uid = _dicom_str(ds, "SOPInstanceUID")
    # The SOP Instance UID names the image whatever its transfer syntax; without one, the file's bytes do.
    content_key = dicom_content_key(sop_uid) if sop_uid else (file_key or file_content_key(data))
    return DecodedImage(
        pixels=_finish(pixels),
        content_key=content_key,
        # Only acquisition descriptors: never names, ids, dates, accession numbers or institutions.
        metadata=_metadata(
            modality=_dicom_str(ds, "Modality"),
            body_part=_dicom_str(ds, "BodyPartExamined"),
            view=_dicom_str(ds, "ViewPosition"),
            format="dicom",
            photometric=photometric,
            bits=_dicom_str(ds, "BitsStored"),
        ),
        patient_id=_dicom_str(ds, "PatientID"),
        study_uid=_dicom_str(ds, "StudyInstanceUID"),
    )


def _ensure_transfer_syntax(ds: Any) -> None:
    """Fill in a missing (0002,0010) Transfer Syntax UID from how the dataset was actually encoded.

    Some files (e.g. OT-PAL-8-face.dcm) have a meta header without it; pydicom then refuses to decode the
    pixels although the dataset encoding it read them with is known and native (uncompressed).
    """
    import pydicom.uid as uid
    from pydicom.dataset import FileMetaDataset

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        return
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if implicit:
        meta.TransferSyntaxUID = uid.ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian


# Single-frame greyscale frames of these syntaxes decode at reduced size with Pillow straight from the encapsulated
# frame (JPEG: DCT scaling; JPEG 2000: fewer resolution levels), ~20-30x faster than a full decode for 2-4k
# images; the Modality and VOI LUTs are per pixel, so they apply to the reduced frame as to the full one.
_REDUCIBLE_SYNTAXES = {"1.2.840.10008.1.2.4.50": "jpeg", "1.2.840.10008.1.2.4.90": "j2k",
                       "1.2.840.10008.1.2.4.91": "j2k"}


def _reduced_frame(ds: Any, min_size: int) -> np.ndarray | None:
    """The single grey frame decoded at the smallest size still >= min_size a side, or None (not applicable, or
    the reduced decode failed: the full decode then runs as always)."""
    try:
        kind = _REDUCIBLE_SYNTAXES.get(str(ds.file_meta.TransferSyntaxUID))
        rows, cols = int(ds.Rows), int(ds.Columns)
        if (kind is None or min(rows, cols) < 2 * min_size or int(ds.get("NumberOfFrames", 1) or 1) != 1
                or int(ds.get("SamplesPerPixel", 1) or 1) != 1 or int(ds.get("PixelRepresentation", 0) or 0) != 0
                or _dicom_str(ds, "PhotometricInterpretation").upper() not in ("MONOCHROME1", "MONOCHROME2")):
            return None
        from pydicom.encaps import generate_frames

        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        with Image.open(io.BytesIO(frame)) as im:
            if kind == "jpeg":
                im.draft(im.mode, (min_size, min_size))
            else:  # resolution levels: level n decodes at 1 / 2^n a side
                im.reduce = max(0, (min(rows, cols) // min_size).bit_length() - 1)
            im.load()
            raw = np.asarray(im.convert("I") if im.mode.startswith("I;16") else im)
    except Exception:  # noqa: BLE001 - any surprise here is handled by the full decode
        return None
    if raw.ndim != 2 or min(raw.shape) < min_size:
        return None
    return raw.astype(np.uint16) if raw.dtype.kind in "iu" and raw.max(initial=0) < 65536 else None


def _box_reduced_grey(raw: np.ndarray, photometric: str, min_size: int) -> np.ndarray:
    """A fully decoded grey frame box-reduced by the largest whole factor that keeps both sides >= min_size, in
    its own integer dtype; anything else as it is.

    Uncompressed and JPEG-LS frames cannot be decoded smaller, but the Modality LUT, the VOI LUT and the scaling
    to [0, 1] then ran in float64 over every full-size pixel (half of the read tasks' time on the speed corpus):
    reduced first, they run on 1/f^2 of them, as on the reduced JPEG / JPEG 2000 frames. The averages are
    rounded to whole stored values, so a Modality LUT table still indexes them."""
    factor = min(raw.shape[:2]) // min_size if raw.ndim == 2 else 0
    if (factor < 2 or raw.dtype.kind not in "iu" or raw.dtype.itemsize > 2
            or photometric not in ("MONOCHROME1", "MONOCHROME2")):
        return raw
    # Rows first, then columns, summed in int32 while factor^2 16-bit values fit in it (int64 beyond): no
    # full-size copy is made (a Pillow "I" image of a 3328x4096 frame cost 5x more, most of it allocating 54 MB).
    # The last partial block of each side is dropped: under a factor of the pixels.
    height, width = raw.shape[0] // factor, raw.shape[1] // factor
    total = np.int32 if factor * factor * 65536 < 2**31 else np.int64
    rows = raw[:height * factor].reshape(height, factor, raw.shape[1]).sum(axis=1, dtype=total)
    blocks = rows[:, :width * factor].reshape(height, width, factor).sum(axis=2)
    return ((blocks + factor * factor // 2) // (factor * factor)).astype(raw.dtype)


def _dicom_pixels(ds: Any, min_size: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """-> (float pixels in [0, 1], raw stored pixels of the chosen frame, photometric interpretation)."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    index = n_frames // 2 if n_frames > 1 else None  # a volume's middle slice is its most representative one
    reduced = _reduced_frame(ds, min_size) if min_size else None
    # YBR_FULL/YBR_FULL_422 become RGB in pixel_array; JPEG-compressed YBR is converted by the decoder.
    raw = reduced if reduced is not None else pixel_array(ds, index=index)
    photometric = _dicom_str(ds, "PhotometricInterpretation").upper()
    if reduced is None and min_size:
        raw = _box_reduced_grey(raw, photometric, min_size)
    if raw.ndim == 3 and raw.shape[-1] not in (3, 4) and n_frames == 1:
        raise ImageDecodeError(f"unexpected DICOM pixel array shape {raw.shape}")

    if photometric == "PALETTE COLOR":
        # Scale by the bits the palette output actually uses: some files declare 16-bit LUT entries but hold
        # 8-bit values (OBXXXX1A_expb.dcm in pydicom-data), which a /65535 would render black.
        return _scale_unsigned(np.asarray(apply_color_lut(raw, ds)).astype(np.uint16)), raw, "RGB"
    if raw.ndim == 3:  # colour: RGB (or YBR already converted to RGB)
        rgb = raw[..., :3]
        if rgb.dtype.kind == "f":
            return _minmax(rgb), raw, "RGB"
        bits = int(getattr(ds, "BitsStored", rgb.dtype.itemsize * 8) or rgb.dtype.itemsize * 8)
        scaled = rgb.astype(np.float64) / float((1 << bits) - 1)
        return scaled.astype(np.float32), raw, "RGB"

    # Greyscale: stored values -> physical units (Modality LUT, e.g. Hounsfield) -> display (VOI LUT /
    # window), then stretched to [0, 1]. MONOCHROME1 displays low values bright, so it is inverted to match
    # the MONOCHROME2 convention every other image follows.
    grey = apply_modality_lut(raw, ds)
    grey = apply_voi_lut(grey, ds, index=0)
    unit = _minmax(np.asarray(grey))
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
        photometric_out = "MONOCHROME1"
    else:
        photometric_out = photometric or "MONOCHROME2"
    return unit, raw, photometric_out
