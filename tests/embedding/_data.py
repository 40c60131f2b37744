"""Where the embedding tests find real images: pydicom / pydicom-data (always installed) and ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("CBMIR_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def dicom_file(name: str) -> Path:
    """A DICOM test file from pydicom's own test set or the pydicom-data package."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {name} not found (is pydicom-data installed?)")
    return Path(path)


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; skips the calling test when the data set is absent (CI clones)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data set not present: {path}")
    return path
