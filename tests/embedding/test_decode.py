"""Decoding real DICOM / PNG / JPEG / npz into [0, 1] pixels, content keys, metadata and clear errors."""

from __future__ import annotations

import glob
import io
import os
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image

from cbmir.services.embedding import (
    MAX_IMAGE_PIXELS,
    DecodedImage,
    ImageDecodeError,
    decode_array,
    decode_image,
    image_id,
)
from cbmir.services.embedding.decode import METADATA_KEYS

from ._data import dicom_file, shared_data


def _read(name: str) -> bytes:
    return dicom_file(name).read_bytes()


def _assert_valid(d: DecodedImage) -> None:
    assert d.pixels.dtype == np.float32
    assert d.pixels.flags["C_CONTIGUOUS"]
    assert d.pixels.ndim == 2 or (d.pixels.ndim == 3 and d.pixels.shape[2] == 3)
    assert float(d.pixels.min()) >= 0.0 and float(d.pixels.max()) <= 1.0
    assert np.isfinite(d.pixels).all()
    assert set(d.metadata) == set(METADATA_KEYS)


def _png_bytes(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)).save(buf, format=fmt)
    return buf.getvalue()


def _gradient(h: int = 48, w: int = 64) -> np.ndarray:
    return (np.add.outer(np.arange(h), np.arange(w)) * 255 // (h + w - 2)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- DICOM


@pytest.mark.parametrize(("name", "shape", "modality"), [
    ("CT_small.dcm", (128, 128), "CT"),                      # explicit VR LE, 16-bit signed
    ("MR_small.dcm", (64, 64), "MR"),
    ("MR_small_RLE.dcm", (64, 64), "MR"),                    # RLE lossless
    ("MR_small_bigendian.dcm", (64, 64), "MR"),              # explicit VR big endian
    ("MR_small_jp2klossless.dcm", (64, 64), "MR"),           # JPEG 2000 lossless (openjpeg)
    ("MR_small_jpeg_ls_lossless.dcm", (64, 64), "MR"),       # JPEG-LS (libjpeg)
    ("JPEG2000.dcm", (1024, 256), "NM"),
    ("JPGExtended.dcm", (1024, 256), "NM"),                  # JPEG extended 12-bit
    ("693_J2KR.dcm", (512, 512), "CT"),
    ("RG1_UNCR.dcm", (1955, 1841), "CR"),                    # MONOCHROME1
    ("US1_J2KR.dcm", (480, 640, 3), "US"),                   # colour JPEG 2000
    ("SC_ybr_full_uncompressed.dcm", (100, 100, 3), "OT"),   # YBR_FULL -> RGB
    ("SC_rgb_jpeg_dcmtk.dcm", (100, 100, 3), "OT"),          # baseline JPEG colour
    ("OBXXXX1A.dcm", (600, 800, 3), "US"),                   # PALETTE COLOR
    ("OT-PAL-8-face.dcm", (480, 640, 3), "OT"),              # meta header without Transfer Syntax UID
])
def test_real_dicom_decodes_to_unit_range_pixels(name: str, shape: tuple[int, ...], modality: str) -> None:
    d = decode_image(_read(name))
    _assert_valid(d)
    assert d.pixels.shape == shape
    assert d.metadata["format"] == "dicom"
    assert d.metadata["modality"] == modality
    assert d.content_key == f"dicom:{pydicom.dcmread(dicom_file(name), force=True).SOPInstanceUID}"
    assert d.pixels.max() > d.pixels.min()  # not blank


def test_every_pydicom_data_file_decodes_or_raises_image_decode_error() -> None:
    """No decoder exception other than ImageDecodeError may escape, whatever the file."""
    from pydicom.data import get_testdata_file

    data_store = os.path.dirname(get_testdata_file("RG1_UNCR.dcm") or "")
    test_files = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
    files = sorted(glob.glob(os.path.join(data_store, "*.dcm")) + glob.glob(os.path.join(test_files, "*.dcm")))
    assert len(files) > 100
    decoded = 0
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        try:
            d = decode_image(data)
        except ImageDecodeError as exc:
            assert str(exc)
            continue
        _assert_valid(d)
        decoded += 1
    assert decoded >= 100


def test_lossless_transfer_syntaxes_give_identical_pixels_and_key() -> None:
    ref = decode_image(_read("MR_small.dcm"))
    for name in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_jp2klossless.dcm",
                 "MR_small_jpeg_ls_lossless.dcm"):
        other = decode_image(_read(name))
        np.testing.assert_array_equal(other.pixels, ref.pixels, err_msg=name)
        assert other.content_key == ref.content_key


def test_16bit_dicom_keeps_more_than_8_bits_of_grey_levels() -> None:
    d = decode_image(_read("CT_small.dcm"))
    assert d.metadata["bits"] == "16"
    assert len(np.unique(d.pixels)) > 256


def test_dicom_grey_is_rescaled_stored_values_stretched_to_unit_range() -> None:
    """CT_small has no window: the output is the Modality-LUT (HU) image min-max scaled."""
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = (hu - hu.min()) / (hu.max() - hu.min())
    np.testing.assert_allclose(decode_image(_read("CT_small.dcm")).pixels, expected, atol=1e-6)


def test_monochrome1_is_inverted_so_low_stored_values_are_bright() -> None:
    ds = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    d = decode_image(_read("RG1_UNCR.dcm"))
    assert d.metadata["photometric"] == "MONOCHROME1"
    stored = ds.pixel_array.astype(np.float64).ravel()[::97]
    out = d.pixels.astype(np.float64).ravel()[::97]
    # MONOCHROME1: the highest stored value is displayed black, so our (MONOCHROME2-convention) output must
    # fall as the stored value rises.
    assert np.corrcoef(stored, out)[0, 1] < -0.9
    assert d.pixels.ravel()[np.argmax(ds.pixel_array)] < 0.05


def test_multiframe_dicom_yields_the_middle_frame() -> None:
    ds = pydicom.dcmread(dicom_file("SC_rgb_2frame.dcm"))
    frames = ds.pixel_array
    assert frames.shape[0] == 2
    d = decode_image(_read("SC_rgb_2frame.dcm"))
    np.testing.assert_allclose(d.pixels, frames[1].astype(np.float32) / 255.0, atol=1e-6)


def test_dicom_metadata_carries_no_phi() -> None:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    d = decode_image(_read("CT_small.dcm"))
    assert set(d.metadata) == set(METADATA_KEYS)
    phi = [str(ds.PatientName), str(ds.PatientID), str(ds.get("PatientBirthDate", "")),
           str(ds.get("StudyDate", "")), str(ds.get("InstitutionName", ""))]
    for value in d.metadata.values():
        for secret in filter(None, phi):
            assert secret not in value


def test_truncated_dicom_raises_image_decode_error() -> None:
    with pytest.raises(ImageDecodeError, match="pixel data"):
        decode_image(_read("MR_truncated.dcm"))
    data = _read("CT_small.dcm")
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) * 2 // 3])


def test_dicom_without_pixels_says_so() -> None:
    with pytest.raises(ImageDecodeError, match="DICOM has no pixel data"):
        decode_image(_read("rtplan.dcm"))


def test_dicom_rows_times_columns_checked_before_pixel_decode() -> None:
    with pytest.raises(ImageDecodeError, match=r"image too large: 256x1024 pixels exceeds limit 1000"):
        decode_image(_read("JPEG2000.dcm"), max_pixels=1000)


# ---------------------------------------------------------------------------------------------- Pillow


def test_png_8bit_grey_decodes_exactly() -> None:
    arr = _gradient()
    d = decode_image(_png_bytes(arr))
    _assert_valid(d)
    assert d.metadata["format"] == "png" and d.metadata["bits"] == "8"
    np.testing.assert_allclose(d.pixels, arr / 255.0, atol=1e-7)


def test_png_16bit_is_scaled_by_the_bits_actually_used() -> None:
    arr = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)  # 12-bit data in 16-bit words
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    d = decode_image(buf.getvalue())
    assert d.metadata["bits"] == "16"
    np.testing.assert_allclose(d.pixels, arr / 4095.0, atol=1e-6)
    assert d.pixels.max() == pytest.approx(1.0)


@pytest.mark.parametrize(("fmt", "mode", "shape"), [
    ("JPEG", "L", (48, 64)), ("JPEG", "RGB", (48, 64, 3)), ("PPM", "L", (48, 64)), ("PPM", "RGB", (48, 64, 3)),
    ("TIFF", "L", (48, 64)), ("TIFF", "I;16", (48, 64)), ("BMP", "RGB", (48, 64, 3)), ("PNG", "RGBA", (48, 64, 3)),
    ("PNG", "P", (48, 64, 3)), ("TIFF", "F", (48, 64)), ("TIFF", "CMYK", (48, 64, 3)), ("PNG", "1", (48, 64)),
])
def test_pillow_formats_and_modes_become_grey_or_rgb(fmt: str, mode: str, shape: tuple[int, ...]) -> None:
    im = Image.fromarray(_gradient()).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    d = decode_image(buf.getvalue())
    _assert_valid(d)
    assert d.pixels.shape == shape


def test_real_mias_png_and_brain_mri_jpeg_decode() -> None:
    mias = shared_data("mias", "images", "mdb001.png")
    d = decode_image(mias.read_bytes())
    _assert_valid(d)
    assert d.pixels.shape == (1024, 1024) and d.metadata["format"] == "png"
    brain_dir = shared_data("brain-mri", "images")
    jpg = sorted(brain_dir.glob("*/*.jpg"))[0]
    d = decode_image(jpg.read_bytes())
    _assert_valid(d)
    assert d.metadata["format"] == "jpeg" and d.pixels.shape[0] > 100


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_png_and_jpeg_raise_image_decode_error(fmt: str) -> None:
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)  # noise: no tiny compressed payload
    data = _png_bytes(noisy, fmt=fmt)
    with pytest.raises(ImageDecodeError, match=f"truncated or corrupt {fmt}"):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize("payload", [
    b"", b"hello, not an image", bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)),
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
])
def test_garbage_bytes_raise_image_decode_error(payload: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(payload)


def _huge_png(width: int, height: int) -> bytes:
    """A 1-bit PNG whose header declares width x height; the IDAT holds only the first rows (tiny file)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * ((width + 7) // 8 + 1) * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_png_with_huge_declared_size_is_refused_before_decoding() -> None:
    data = _huge_png(100_000, 100_000)
    assert len(data) < 10_000
    with pytest.raises(ImageDecodeError, match="too large.*decompression bomb guard"):
        decode_image(data)


def test_max_pixels_limit_is_checked_from_the_header() -> None:
    data = _png_bytes(_gradient(40, 40))
    with pytest.raises(ImageDecodeError, match=r"image too large: 40x40 pixels exceeds limit 1000"):
        decode_image(data, max_pixels=1000)
    assert decode_image(data, max_pixels=1600).pixels.shape == (40, 40)
    assert MAX_IMAGE_PIXELS == 200_000_000


# ---------------------------------------------------------------------------------------------- keys


def test_content_key_is_stable_and_differs_between_images() -> None:
    a = _png_bytes(_gradient())
    b = _png_bytes(255 - _gradient())
    assert decode_image(a).content_key == decode_image(a).content_key
    assert decode_image(a).content_key != decode_image(b).content_key
    assert decode_image(a).content_key.startswith("sha256:")


def test_content_key_is_the_file_bytes_whatever_the_decoder() -> None:
    """The id must not move when the decoder, its version or its downscale changes: it hashes the file's bytes."""
    import hashlib

    from cbmir.services.embedding import decode_resized

    data = _png_bytes(_gradient(600, 500))
    assert decode_image(data).content_key == f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert decode_resized(data, 64).content_key == decode_image(data).content_key
    # An npz array has no file: its key stays the hash of its pixels.
    assert decode_array(_gradient()).content_key.startswith("pixels:")


def test_image_id_is_32_hex_chars_of_sha256_of_the_key() -> None:
    import hashlib

    key = "dicom:1.2.3"
    assert image_id(key) == hashlib.sha256(b"dicom:1.2.3").hexdigest()[:32]
    assert image_id(key) != image_id("dicom:1.2.4")


def test_decode_array_accepts_medmnist_shapes() -> None:
    grey = decode_array(_gradient(28, 28))
    _assert_valid(grey)
    assert grey.pixels.shape == (28, 28) and grey.metadata["format"] == "array"
    rgb = decode_array(np.stack([_gradient(28, 28)] * 3, axis=-1))
    assert rgb.pixels.shape == (28, 28, 3)
    assert decode_array(_gradient(28, 28)[..., None]).content_key == grey.content_key
    with pytest.raises(ImageDecodeError):
        decode_array(np.zeros((2, 3, 4, 5), dtype=np.uint8))


def test_real_medmnist_npz_images_decode() -> None:
    npz = np.load(shared_data("medmnist", "breastmnist.npz"))
    images = npz["train_images"][:8]
    decoded = [decode_array(im) for im in images]
    for d in decoded:
        _assert_valid(d)
        assert d.pixels.shape == (28, 28)
    assert len({d.content_key for d in decoded}) == len(decoded)
