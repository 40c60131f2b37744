"""Encapsulated DICOM (JPEG baseline, JPEG 2000) decodes at reduced size straight from its frame, and lands on the
same model input as the full decode: real CT pixels, upscaled to a radiograph's size."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from cbmir.services.embedding import EmbeddingModel
from cbmir.services.embedding.decode import _reduced_frame, decode_native
from cbmir.services.embedding.preprocess import decode_resized, presize

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
        ds.compress(syntax, grey12, encoding_plugin="pylibjpeg")
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    ds, big = _ct_upscaled()
    return {f"{name}-{photometric}": _as_dicom(ds, syntax, big, photometric)
            for name, syntax in (("jpeg", JPEGBaseline8Bit), ("j2k", JPEG2000Lossless))
            for photometric in ("MONOCHROME2", "MONOCHROME1")}


def test_the_reduced_path_is_taken_and_decodes_at_least_the_asked_size(encoded) -> None:
    for name, data in encoded.items():
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
