"""Real sample archives that need nothing but installed packages: DICOM from pydicom/pydicom-data, BreastMNIST."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

BREASTMNIST_SUBSET = Path(__file__).with_name("breastmnist_subset.npz")


def dicom_sample_files() -> list[Path]:
    """Every DICOM file shipped by pydicom's test data and the pydicom-data package, sorted."""
    import data_store  # the import name of the PyPI package pydicom-data
    import pydicom

    roots = [Path(pydicom.__file__).parent / "data" / "test_files", Path(data_store.__file__).parent / "data"]
    return sorted(p for root in roots if root.is_dir() for p in root.rglob("*.dcm"))


def build_dicom_archive(dest: Path, limit: int | None = None) -> Path:
    """Copy the shipped DICOM files into `dest` as a flat archive with a labels.csv (label = modality).

    Files that do not decode (no pixel data, truncated) are kept on purpose: ingestion must report and skip them.
    """
    import pydicom

    dest.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, path in enumerate(dicom_sample_files()):
        if limit is not None and len(rows) >= limit:
            break
        name = f"{index:03d}_{path.name}"
        shutil.copyfile(path, dest / name)
        try:
            modality = str(pydicom.dcmread(path, stop_before_pixels=True, force=True).get("Modality", "") or "")
        except Exception:  # unreadable headers still go in: the ingestion report must name them
            modality = ""
        rows.append({"image": name, "label": modality or "unknown"})
    with open(dest / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return dest
