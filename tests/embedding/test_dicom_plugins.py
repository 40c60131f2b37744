"""pydicom's decoders as cbmir orders them: CharLS (pyjpegls) first for JPEG-LS, libjpeg kept as the fallback."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array
from pydicom.uid import JPEGLSLossless, JPEGLSNearLossless

from cbmir.services.embedding.dicom_plugins import drop_gdcm_where_replaceable, plugin_order
from cbmir.services.embedding.resize import decode_resized

pytest.importorskip("jpeg_ls", reason="pyjpegls is a cbmir dependency")


def test_jpeg_ls_is_decoded_by_pyjpegls_first_with_pylibjpeg_as_fallback() -> None:
    drop_gdcm_where_replaceable()
    for uid in (JPEGLSLossless, JPEGLSNearLossless):
        order = plugin_order(uid)
        assert order[0] == "pyjpegls", order
        assert "gdcm" not in order


def test_both_jpeg_ls_plugins_give_the_same_lossless_pixels_and_cbmir_decodes_it() -> None:
    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    charls = pixel_array(path, decoding_plugin="pyjpegls")
    libjpeg = pixel_array(path, decoding_plugin="pylibjpeg")
    np.testing.assert_array_equal(charls, libjpeg)
    with open(path, "rb") as file:
        decoded = decode_resized(file.read(), 224)
    assert decoded.pixels.shape[:2] == charls.shape[:2]  # 64x64: smaller than the model input, kept as is
