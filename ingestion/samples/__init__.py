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


def sample_label(path: Path) -> str:
    """A label a person recognises: the Modality (CT, MR…), else the SOP class's name ("Secondary Capture Image
    Storage"), else what is wrong with the header."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # unreadable headers still go in: the ingestion report must name them
        return "unreadable header"
    modality = str(ds.get("Modality", "") or "").strip()
    if modality:
        return modality
    sop_class = ds.get("SOPClassUID")
    if sop_class:
        name = getattr(sop_class, "name", "") or str(sop_class)
        return str(name)
    return "no Modality element"


def build_dicom_archive(dest: Path, limit: int | None = None) -> Path:
    """Copy the shipped DICOM files into `dest` as a flat archive with a labels.csv (label = modality).

    Files that do not decode (no pixel data, truncated) are kept on purpose: ingestion must report and skip them.
    """
    dest.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, path in enumerate(dicom_sample_files()):
        if limit is not None and len(rows) >= limit:
            break
        name = f"{index:03d}_{path.name}"
        shutil.copyfile(path, dest / name)
        rows.append({"image": name, "label": sample_label(path)})
    with open(dest / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return dest
