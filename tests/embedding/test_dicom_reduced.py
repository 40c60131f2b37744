"""Encapsulated DICOM (JPEG baseline, JPEG 2000) decodes at reduced size straight from its frame, other grey frames
(uncompressed, JPEG-LS) are box-reduced before their LUTs, and all land on the same model input as the full decode:
real CT pixels, upscaled to a radiograph's size."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

from cbmir.services.embedding import EmbeddingModel
from cbmir.services.embedding.decode import _box_reduced_grey, _reduced_frame, decode_native
from cbmir.services.embedding.resize import decode_resized, presize

SIZE = 224
SIDE = 1536  # a 2k-class image: reduced 4x by JPEG 2000 levels, 1/4 by JPEG DCT scaling


def _ct_upscaled() -> tuple[pydicom.Dataset, np.ndarray]:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels = ds.pixel_array.astype(np.float32)
    big = np.array(Image.fromarray(pixels, mode="F").resize((SIDE, SIDE), Image.Resampling.BICUBIC))
    return ds, big


def _as_dicom(ds: pydicom.Dataset, syntax: str, pixels: np.ndarray, photometric: str) -> bytes:
    ds = ds.copy()
    ds.Rows, ds.Columns = pixels.shape
    ds.PhotometricInterpretation = photometric
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    if syntax == JPEGBaseline8Bit:
        grey8 = np.clip((pixels - pixels.min()) / np.ptp(pixels) * 255, 0, 255).astype(np.uint8)
        stream = io.BytesIO()
        Image.fromarray(grey8).save(stream, "JPEG", quality=92)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([stream.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        grey12 = np.clip((pixels - pixels.min()) / np.ptp(pixels) * 4095, 0, 4095).astype(np.uint16)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        if syntax == ExplicitVRLittleEndian:
            ds.PixelData = grey12.tobytes()
            ds["PixelData"].VR = "OW"
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax, grey12, encoding_plugin="pylibjpeg")
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    ds, big = _ct_upscaled()
    return {f"{name}-{photometric}": _as_dicom(ds, syntax, big, photometric)
            for name, syntax in (("jpeg", JPEGBaseline8Bit), ("j2k", JPEG2000Lossless),
                                 ("uncompressed", ExplicitVRLittleEndian))
            for photometric in ("MONOCHROME2", "MONOCHROME1")}


def test_the_reduced_path_is_taken_and_decodes_at_least_the_asked_size(encoded) -> None:
    for name, data in encoded.items():
        if name.startswith("uncompressed"):
            continue  # nothing to decode smaller: box-reduced after the decode instead (below)
        ds = pydicom.dcmread(io.BytesIO(data))
        frame = _reduced_frame(ds, 2 * SIZE)
        assert frame is not None, name
        assert 2 * SIZE <= min(frame.shape) < SIDE, (name, frame.shape)  # reduced, never below the request


def test_reduced_and_full_decodes_give_the_same_vectors(encoded) -> None:
    model = EmbeddingModel.load("efficientnet_lite0", precision="fp32")
    fast, full = [], []
    for data in encoded.values():
        fast.append(decode_resized(data, SIZE).pixels)
        whole = decode_native(data)  # no min_size: the full decode
        full.append(presize(whole.pixels, SIZE, whole.metadata.get("bits", "")))
    a, b = model.embed(fast), model.embed(full)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print("cosine reduced vs full:", dict(zip(encoded, np.round(cosine, 5), strict=True)))
    assert np.median(cosine) >= 0.99 and cosine.min() >= 0.98


def test_monochrome1_is_inverted_on_the_reduced_path_too(encoded) -> None:
    two = decode_resized(encoded["j2k-MONOCHROME2"], SIZE).pixels.astype(np.float32)
    one = decode_resized(encoded["j2k-MONOCHROME1"], SIZE).pixels.astype(np.float32)
    scale = float(two.max())
    assert np.corrcoef(two.ravel(), (scale - one).ravel())[0, 1] > 0.99


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8])
def test_a_full_grey_frame_is_box_reduced_in_its_own_dtype_before_the_luts(dtype) -> None:
    info = np.iinfo(dtype)
    raw = np.random.default_rng(3).integers(info.min, info.max, (1000, 700), endpoint=True).astype(dtype)

    small = _box_reduced_grey(raw, "MONOCHROME2", 224)  # factor 3: 333 x 233 whole blocks

    assert small.dtype == dtype and small.shape == (333, 233)
    reference = raw[:999, :699].astype(np.float64).reshape(333, 3, 233, 3).mean(axis=(1, 3))
    assert np.abs(small - reference).max() <= 0.5 + 1e-9  # the block means, rounded to stored values
    # Nothing to gain or not a stored grey frame: unchanged.
    assert _box_reduced_grey(raw, "MONOCHROME2", 400) is raw
    assert _box_reduced_grey(raw.astype(np.float32), "MONOCHROME2", 224).shape == raw.shape
    assert _box_reduced_grey(raw, "RGB", 224) is raw


def test_the_uncompressed_frame_reaches_the_luts_reduced(encoded) -> None:
    whole = decode_native(encoded["uncompressed-MONOCHROME2"])
    reduced = decode_native(encoded["uncompressed-MONOCHROME2"], min_size=2 * SIZE)
    assert whole.pixels.shape == (SIDE, SIDE)
    assert reduced.pixels.shape == (SIDE // 3, SIDE // 3)  # 1536 // 448 = 3
    assert reduced.content_key == whole.content_key
