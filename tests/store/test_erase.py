"""cbmir erase on Milvus Lite: a patient's rows are deleted, the collection rewritten, and the proof holds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE

from cbmir.cli import main
from cbmir.ingestion.dicom_node import DicomNode, NodeConfig
from cbmir.services.embedding import subject_hash
from cbmir.services.store import schema
from cbmir.services.store.erase import lite_files_holding
from tests.embedding._data import dicom_file

COLLECTION = "erase"


def _fill(node: DicomNode) -> None:
    """Three CT images of patient 1CT1 (one study) and one MR of patient 4MR1, sent over DICOM."""
    datasets = []
    for _ in range(3):
        ct = dcmread(dicom_file("CT_small.dcm"))
        ct.SOPInstanceUID = generate_uid()
        ct.PixelData = (ct.pixel_array + np.random.default_rng().integers(0, 50, ct.pixel_array.shape)
                        ).astype(ct.pixel_array.dtype).tobytes()
        datasets.append(ct)
    datasets.append(dcmread(dicom_file("MR_small.dcm")))
    ae = AE(ae_title="TESTSCU")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CBMIR")
    try:
        assert [int(assoc.send_c_store(ds).Status) for ds in datasets] == [0] * 4
    finally:
        assoc.release()
    deadline = time.monotonic() + 30
    while node.store.count(COLLECTION) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_erase_patient_removes_its_rows_from_lite_files_and_audits_counts_without_the_id(tmp_path: Path) -> None:
    uri = str(tmp_path / "cbmir.db")
    node = DicomNode(NodeConfig(port=0, milvus_uri=uri, queue_dir=str(tmp_path / "queue"), collection=COLLECTION))
    node.start()
    try:
        _fill(node)
    finally:
        node.stop()
    store, salt = node.store, node.id_salt
    patient = subject_hash("patient", "1CT1", salt)
    rows = store.client.query(COLLECTION, filter=f'{schema.PATIENT_HASH} == "{patient}"',
                              output_fields=[schema.ID, schema.EMBEDDING])
    assert len(rows) == 3
    erased_ids = [r[schema.ID] for r in rows]
    vectors = [np.asarray(r[schema.EMBEDDING], dtype=np.float32) for r in rows]
    # The file check is not vacuous: before the erasure Lite's files hold these rows.
    assert lite_files_holding(uri, [COLLECTION], erased_ids, vectors)

    audit = tmp_path / "audit.jsonl"
    started = time.perf_counter()
    code = main(["erase", "--patient-id", "1CT1", "--milvus-uri", uri, "--audit-log", str(audit),
                 "--report", str(tmp_path / "erase.json")])
    seconds = time.perf_counter() - started
    assert code == 0
    assert store.count(COLLECTION) == 1  # the MR of the other patient stays
    assert not store.existing_ids(COLLECTION, erased_ids, consistency_level="Strong")
    assert lite_files_holding(uri, [COLLECTION], erased_ids, vectors) == []
    hits = store.search(COLLECTION, np.stack(vectors), top_k=4, consistency_level="Strong")
    assert not {h.id for per in hits for h in per} & set(erased_ids)
    report = json.loads((tmp_path / "erase.json").read_text())
    assert report["rows_erased"] == 3 and report["proved"]

    line = audit.read_text()
    record = json.loads(line.splitlines()[-1])
    assert record["method"] == "Erase" and record["status"] == "OK"
    assert record["erasure"]["rows_erased"] == 3
    assert record["erasure"]["collections"][0]["remaining_by_hash"] == 0
    assert "1CT1" not in line
    print(f"erase + Lite rewrite + proof of 3 rows: {seconds:.2f} s")


def test_erase_of_an_unknown_study_erases_nothing_and_still_proves(tmp_path: Path) -> None:
    from cbmir.services.store import MilvusStore, choose_index
    from cbmir.services.store.schema import ERASURE_FIELDS, SCALAR_FIELDS

    uri = str(tmp_path / "cbmir.db")
    store = MilvusStore(uri)
    identity = json.dumps({"architecture": "test", "weights_sha256": "abc", "dim": 8, "preprocessing": {}})
    store.ensure_collection(COLLECTION, identity, 8, choose_index("HNSW", "COSINE"))
    empty = dict.fromkeys((*SCALAR_FIELDS, *ERASURE_FIELDS), "")
    store.upsert(COLLECTION, [{**empty, "id": f"r{i}", "embedding": [float(i + 1)] * 8, "study_hash": "s"}
                              for i in range(4)])
    audit = tmp_path / "audit.jsonl"
    assert main(["erase", "--study-uid", "1.2.3.4.5", "--milvus-uri", uri, "--audit-log", str(audit)]) == 0
    assert store.count(COLLECTION) == 4
    assert json.loads(audit.read_text())["erasure"]["rows_erased"] == 0


def test_erase_refuses_an_empty_id(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="empty"):
        main(["erase", "--patient-id", " ", "--milvus-uri", str(tmp_path / "x.db")])


def test_erase_collection_deletes_compacts_and_proves_on_lite_and_on_the_server(milvus_uri: str) -> None:
    """The store-level erasure on both backends: the server's compaction job completes, the proof holds."""
    from cbmir.services.store import MilvusStore, choose_index
    from cbmir.services.store.erase import erase_collection
    from cbmir.services.store.schema import ERASURE_FIELDS, SCALAR_FIELDS

    store = MilvusStore(milvus_uri)
    identity = json.dumps({"architecture": "test", "weights_sha256": "abc", "dim": 8, "preprocessing": {}})
    store.ensure_collection("images", identity, 8, choose_index("HNSW", "COSINE"))
    rng = np.random.default_rng(1)
    empty = dict.fromkeys((*SCALAR_FIELDS, *ERASURE_FIELDS), "")
    rows = [{**empty, "id": f"r{i}", "embedding": rng.random(8).tolist(), "label": "x",
             "patient_hash": "p-erase" if i % 4 == 0 else "p-keep"} for i in range(40)]
    store.upsert("images", rows)
    store.flush("images")
    store.ensure_descriptor_collection("images", "hog", 4)
    store.upsert_descriptors("images", "hog", [r["id"] for r in rows], rng.random((40, 4)))
    store.flush("images__hog")
    result = erase_collection(store, "images", "patient", "p-erase")
    assert result.rows_erased == 10 and result.companion_rows_erased == 10 and result.proved, result
    erased = [r["id"] for r in rows if r["patient_hash"] == "p-erase"]
    assert store.get_descriptors("images", "hog", erased) == {}  # the erased images' HOG went with them
    assert len(store.get_descriptors("images", "hog", [r["id"] for r in rows])) == 30
    assert result.compaction.endswith(("Completed", "rewritten"))
    assert store.count("images") == 30
    print(f"{'server' if milvus_uri.startswith('http') else 'lite'}: erased 10 of 40 rows, {result.compaction}, "
          f"proved in {result.seconds:.2f} s")
    store.close()


def test_clients_cannot_filter_on_the_erasure_keys() -> None:
    from cbmir.services.store import InvalidFilterError, build_filter_expression

    for key in ("patient_hash", "study_hash"):
        with pytest.raises(InvalidFilterError):
            build_filter_expression({key: "0" * 32})
