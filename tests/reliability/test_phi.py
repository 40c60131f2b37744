"""No PHI in the index: ingest the real pydicom / pydicom-data DICOM files, then look for their PHI everywhere."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pydicom
import pytest
from conftest import record_figures

from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.runner import run_ingestion
from cbmir.services.embedding import id_salt_digest
from cbmir.services.store import MilvusStore, ModelMismatchError, schema

# Identifying attributes (HIPAA Safe Harbor / DICOM PS3.15 basic profile) whose values must never be stored.
PHI_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientAddress", "OtherPatientIDs",
    "OtherPatientNames", "PatientMotherBirthName", "PatientTelephoneNumbers", "AccessionNumber", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName", "PerformingPhysicianName",
    "OperatorsName", "NameOfPhysiciansReadingStudy", "RequestingPhysician", "StudyDate", "SeriesDate",
    "AcquisitionDate", "ContentDate", "StudyTime", "StudyID", "SOPInstanceUID", "StudyInstanceUID",
    "SeriesInstanceUID", "FrameOfReferenceUID", "DeviceSerialNumber", "StationName",
)
MIN_LENGTH = 4  # shorter values ("M", "1", "CT") match unrelated text by chance
SALT = "reliability-test-salt-3f9a1c07d2"


def phi_values(archive: Path) -> dict[str, set[str]]:
    """Every PHI value of every file of the archive, by keyword (as stored text, and as DICOM person names)."""
    found: dict[str, set[str]] = {}
    for path in sorted(archive.iterdir()):
        if path.suffix.lower() != ".dcm":
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - a header pydicom cannot read has nothing we could have stored
            continue
        for keyword in PHI_KEYWORDS:
            try:
                value = ds.get(keyword)
            except Exception:  # noqa: BLE001
                continue
            values = value if isinstance(value, list | pydicom.multival.MultiValue) else [value]
            for v in values:
                text = str(v or "").strip()
                for candidate in {text, text.replace("^", " ").strip()}:
                    if len(candidate) >= MIN_LENGTH:
                        found.setdefault(keyword, set()).add(candidate)
    return found


VECTOR_FIELDS = {schema.EMBEDDING, schema.DESCRIPTOR}


def stored_text(uri: str) -> dict[str, list[str]]:
    """Every collection of the store: each row's every text field, plus the collection's properties.

    Vector fields are floats (checked to be finite floats, not text); ids are checked to be 32 hex characters, so
    neither can carry a name, a date or a dotted UID, and scanning them as text would only find chance digits.
    """
    store = MilvusStore(uri)
    texts: dict[str, list[str]] = {}
    for name in store.list_collections():
        store.load(name)
        described = store.client.describe_collection(name)
        fields = [f["name"] for f in described["fields"]]
        rows = store.client.query(name, filter="", output_fields=fields, limit=16384)
        lines = [json.dumps(described.get("properties", {})), described.get("description", "") or ""]
        for row in rows:
            assert len(row[schema.ID]) == 32 and all(c in "0123456789abcdef" for c in row[schema.ID])
            for field in VECTOR_FIELDS & set(row):
                assert all(isinstance(x, float) for x in row[field])
            lines += [str(v) for k, v in row.items() if k not in VECTOR_FIELDS and k != schema.ID]
        texts[name] = lines
    return texts


@pytest.fixture(scope="module")
def ingested(dicom_archive: Path, ray_local, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("phi")
    uri = str(work / "cbmir.db")
    report = run_ingestion(IngestConfig(source=str(dicom_archive), milvus_uri=uri, collection="phi", actors=1,
                                        batch_size=32, report_path=str(work / "report.json"), progress=False,
                                        rerank_descriptor="hog", id_salt=SALT))
    assert report.ingested > 50
    return uri, report


def test_no_phi_value_of_the_ingested_dicom_files_is_stored_anywhere(ingested, dicom_archive: Path) -> None:
    uri, report = ingested
    phi = phi_values(dicom_archive)
    assert {"PatientName", "PatientID", "SOPInstanceUID", "StudyDate"} <= set(phi)  # the files do carry PHI
    texts = stored_text(uri)
    rows = len(MilvusStore(uri).client.query("phi", filter="", output_fields=["id"], limit=16384))
    assert rows == report.ingested and sum(len(t) for t in texts.values()) > 5 * rows
    leaks = [(keyword, value, collection)
             for keyword, values in phi.items() for value in values
             for collection, lines in texts.items() if any(value in line for line in lines)]
    assert leaks == []
    # Paths too: hospital exports name folders and files after patients; DICOM sources are stored hashed.
    names = {path.name for path in dicom_archive.glob("*.dcm")}
    assert [n for n in names for lines in texts.values() if any(n in line for line in lines)] == []
    record_figures("no_phi", {"dicom_files": len(list(dicom_archive.glob('*.dcm'))), "ingested": report.ingested,
                              "rows_scanned": rows, "phi_values_checked": sum(len(v) for v in phi.values()),
                              "phi_keywords": len(phi), "leaks": 0})


def test_ids_are_salted_hashes_of_the_sop_instance_uid(ingested, dicom_archive: Path) -> None:
    uri, _ = ingested
    store = MilvusStore(uri)
    ids = set(store.iter_ids("phi"))
    uids = phi_values(dicom_archive)["SOPInstanceUID"]
    unsalted = {hashlib.sha256(f"dicom:{uid}".encode()).hexdigest()[:32] for uid in uids}
    assert not ids & unsalted  # without the salt, nobody recomputes an id from a UID
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert store.id_salt_digest("phi") == id_salt_digest(SALT) != ""
    assert SALT not in json.dumps(store.client.describe_collection("phi"), default=str)


def test_a_run_with_another_salt_is_refused_instead_of_duplicating(ingested) -> None:
    uri, _ = ingested
    store = MilvusStore(uri)
    with pytest.raises(ModelMismatchError, match="--id-salt"):
        store.check_id_salt("phi", id_salt_digest("another-salt-entirely"))
    with pytest.raises(ModelMismatchError, match="no salt"):
        store.check_id_salt("phi", "")


def test_metadata_fields_hold_only_acquisition_descriptors(ingested) -> None:
    uri, _ = ingested
    store = MilvusStore(uri)
    rows = store.client.query("phi", filter="", output_fields=list(schema.SCALAR_FIELDS), limit=16384)
    assert {r["modality"] for r in rows} <= {"CT", "MR", "US", "CR", "NM", "OT", "RTDOSE", "RTIMAGE", "PT", "XA",
                                             "DX", "MG", "SC", "ECG", "SM", "RG", "IO", "PX", "ES", "XC", "OP", "SEG",
                                             ""}
