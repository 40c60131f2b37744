"""No patient names through paths: what the stored `source` says, and which folders become labels."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread

from cbmir.ingestion import IngestConfig, run_ingestion
from cbmir.ingestion.source_field import is_dicom_name, stored_source
from cbmir.ingestion.sources import scan_source
from cbmir.services.embedding import subject_hash
from cbmir.services.store import MilvusStore

PATIENTS = ("DOE^JOHN", "ROE^JANE")
SALT = "source-field-test-salt-5b2e"


def _decodable_dicom(dicom_archive: Path, count: int) -> list[Path]:
    with open(dicom_archive / "labels.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["label"] in ("CT", "MR")]
    return [dicom_archive / r["image"] for r in rows[:count]]


@pytest.fixture(scope="module")
def patient_tree(dicom_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hospital-shaped tree: <patient name>/<file>.dcm, one folder deep like a folder-per-class archive."""
    root = tmp_path_factory.mktemp("pacs-export")
    files = _decodable_dicom(dicom_archive, 4)
    for i, path in enumerate(files):
        folder = root / PATIENTS[i % 2]
        folder.mkdir(exist_ok=True)
        shutil.copy(path, folder / f"{i:02d}.dcm")
    return root


@pytest.fixture(scope="module")
def class_tree(breastmnist_png_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder-per-class PNG tree: <class>/<file>.png."""
    root = tmp_path_factory.mktemp("classes")
    for i, path in enumerate(sorted((breastmnist_png_archive / "images").glob("*.png"))[:6]):
        folder = root / ("benign" if i % 2 else "malignant")
        folder.mkdir(exist_ok=True)
        shutil.copy(path, folder / path.name)
    return root


def _rows(uri: str, collection: str) -> list[dict]:
    store = MilvusStore(uri)
    try:
        return list(store.get_rows(collection, list(store.iter_ids(collection)), with_vectors=False).values())
    finally:
        store.close()


def test_source_modes() -> None:
    assert stored_source("DOE^JOHN/01.dcm", "relative") == "DOE^JOHN/01.dcm"
    assert stored_source("DOE^JOHN/01.dcm", "none") == ""
    hashed = stored_source("DOE^JOHN/01.dcm", "hashed", SALT)
    assert hashed.startswith("sha256:") and "DOE" not in hashed
    assert hashed == stored_source("DOE^JOHN/01.dcm", "auto", SALT)  # DICOM: hashed by default
    assert hashed != stored_source("DOE^JOHN/01.dcm", "hashed")  # keyed: without the salt nobody recomputes it
    assert stored_source("benign/a.png", "auto") == "benign/a.png"
    assert is_dicom_name("PAT/IM0001") and not is_dicom_name("breast.npz#train/3")
    with pytest.raises(ValueError, match="source field mode"):
        stored_source("a.png", "plain")
    with pytest.raises(ValueError, match="source_field"):
        IngestConfig(source="x", source_field="plain")


def test_patient_folders_of_a_dicom_tree_are_not_labels_unless_asked(patient_tree: Path, class_tree: Path) -> None:
    labels = {item.label for item in scan_source(IngestConfig(source=str(patient_tree))).iter_items()}
    assert labels == {""}
    forced = scan_source(IngestConfig(source=str(patient_tree), folder_labels="on")).iter_items()
    assert {item.label for item in forced} == set(PATIENTS)
    assert {i.label for i in scan_source(IngestConfig(source=str(class_tree))).iter_items()} == {"benign", "malignant"}
    assert {i.label for i in scan_source(IngestConfig(source=str(class_tree), folder_labels="off")).iter_items()} \
        == {""}


def test_a_dicom_tree_named_by_patient_stores_no_name_path_or_label(ray_local: None, patient_tree: Path,
                                                                    tmp_path: Path) -> None:
    uri = str(tmp_path / "pacs.db")
    report = run_ingestion(IngestConfig(source=str(patient_tree), milvus_uri=uri, collection="pacs", actors=1,
                                        batch_size=8, progress=False, report_path=None, id_salt=SALT))
    assert report.ingested >= 2 and report.ingested + report.failed + report.duplicates_in_run == 4
    rows = _rows(uri, "pacs")
    names = {f"{p.parent.name}/{p.name}" for p in patient_tree.glob("*/*.dcm")}
    assert len(rows) == report.ingested
    assert {r["source"] for r in rows} <= {stored_source(n, "hashed", SALT) for n in names}
    assert {r["label"] for r in rows} == {""}
    text = json.dumps(rows, default=str)
    assert not any(part in text for name in PATIENTS for part in (name, *name.split("^")))
    assert not any("patient_hash" in r for r in rows)  # erasure keys are never returned with a row
    # ...but stored, salted, so `cbmir erase --patient-id` finds the rows file ingestion wrote.
    headers = [dcmread(p, stop_before_pixels=True) for p in patient_tree.glob("*/*.dcm")]
    expected = {(subject_hash("patient", str(h.get("PatientID", "")), SALT),
                 subject_hash("study", str(h.get("StudyInstanceUID", "")), SALT)) for h in headers}
    store = MilvusStore(uri)
    stored = store.client.query("pacs", filter="", output_fields=["patient_hash", "study_hash"], limit=100)
    store.close()
    assert {(r["patient_hash"], r["study_hash"]) for r in stored} <= expected
    assert all(r["patient_hash"] for r in stored)


def test_source_none_drops_the_path_and_class_folders_stay_labels(ray_local: None, class_tree: Path,
                                                                 tmp_path: Path) -> None:
    uri = str(tmp_path / "classes.db")
    report = run_ingestion(IngestConfig(source=str(class_tree), milvus_uri=uri, collection="none", actors=1,
                                        batch_size=8, progress=False, report_path=None, source_field="none"))
    assert report.ingested == 6
    rows = _rows(uri, "none")
    assert {r["source"] for r in rows} == {""}
    assert {r["label"] for r in rows} == {"benign", "malignant"}
