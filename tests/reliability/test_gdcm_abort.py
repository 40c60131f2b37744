"""JPEG DICOMs that made GDCM abort the whole process (found by `cbmir bench fuzz`) are refused with a reason.

Each case runs in a child process: before the fix the child died of SIGABRT ("terminate called after throwing an
instance of 'gdcm::Exception'"), which in-process would take pytest down with it, as it took `cbmir serve`.
"""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from cbmir.bench.fuzz_inputs import Classes, dicom_test_file
from cbmir.services.query.proto import retrieval_pb2

CHILD = """
import sys
from cbmir.services.embedding import ImageDecodeError, decode_image
try:
    decode_image(sys.stdin.buffer.read())
    print("decoded")
except ImageDecodeError as error:
    print("refused:", error)
"""


def _jpeg_dicom_with_bits(bits: int) -> bytes:
    ds = pydicom.dcmread(dicom_test_file("SC_rgb_jpeg_dcmtk.dcm"))
    ds.BitsAllocated = bits
    written = io.BytesIO()
    ds.save_as(written)
    return written.getvalue()


def _fuzzed_request_image(index: int) -> bytes:
    """The image of request `index` of `cbmir bench fuzz --seed 0`'s dicom_mutated class (a byte-flipped baseline
    JPEG DICOM)."""
    classes = Classes("fuzz", [b""], 1, bombs=False)
    _, wire = classes.generators["dicom_mutated"](np.random.default_rng([0, index]))
    return retrieval_pb2.SearchRequest.FromString(wire).image


@pytest.mark.parametrize("case", ["bits_allocated_64", "bits_allocated_32", "corrupt_baseline_stream",
                                  "unreadable_bits_allocated"])
def test_dicoms_that_aborted_gdcm_are_refused_and_the_process_lives(case: str) -> None:
    data = {"bits_allocated_64": lambda: _jpeg_dicom_with_bits(64),
            "bits_allocated_32": lambda: _jpeg_dicom_with_bits(32),
            "corrupt_baseline_stream": lambda: _fuzzed_request_image(4023),
            # (0028,0100) with a VR pydicom does not know: reading it raised NotImplementedError, INTERNAL in serve
            "unreadable_bits_allocated": lambda: _fuzzed_request_image(4653)}[case]()
    child = subprocess.run([sys.executable, "-c", CHILD], input=data, capture_output=True, timeout=120)
    assert child.returncode == 0, child.stderr.decode(errors="replace")[-800:]
    assert child.stdout.decode().startswith(("refused:", "decoded"))
    if case.startswith("bits"):
        assert b"BitsAllocated 8 or 16" in child.stdout


def test_a_real_jpeg_dicom_still_decodes_without_gdcm() -> None:
    child = subprocess.run([sys.executable, "-c", CHILD], input=dicom_test_file("SC_rgb_jpeg_dcmtk.dcm").read_bytes(),
                           capture_output=True, timeout=120)
    assert child.stdout.decode().strip() == "decoded", child.stderr.decode(errors="replace")[-800:]
