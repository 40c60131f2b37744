"""cbmir dicom-node against real peers (pynetdicom SCU, dcmtk storescu/echoscu): stores become searchable rows."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from cbmir.ingestion.dicom_node import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH,
    OUT_OF_RESOURCES,
    SOP_CLASS_NOT_SUPPORTED,
    DicomNode,
    NodeConfig,
    offered_transfer_syntaxes,
)
from cbmir.services.embedding import decode_image, image_id, subject_hash
from cbmir.services.store import schema
from tests.embedding._data import dicom_file

COLLECTION = "node"
# One file per transfer syntax family the node must take (compressed ones added explicitly).
FILES = {
    "CT_small.dcm": "explicit VR little endian",
    "MR_small_RLE.dcm": "RLE",
    "SC_rgb_jpeg_lossy_gdcm.dcm": "JPEG baseline",
    "SC_rgb_jpeg_gdcm.dcm": "JPEG lossless SV1",
    "JPEGLSNearLossless_16.dcm": "JPEG-LS",
    "emri_small_jpeg_2k_lossless.dcm": "JPEG 2000",
    "image_dfl.dcm": "deflated",
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DicomNode]:
    root = tmp_path_factory.mktemp("node")
    running = DicomNode(NodeConfig(port=0, milvus_uri=str(root / "cbmir.db"), queue_dir=str(root / "queue"),
                                   collection=COLLECTION))
    running.start()
    yield running
    running.stop()


def _association(node: DicomNode, datasets: list[Dataset], syntax: str | None = None):  # noqa: ANN202
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, syntax or ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CBMIR")
    assert assoc.is_established
    return assoc


def _send(node: DicomNode, datasets: list[Dataset], syntax: str | None = None) -> list[int]:
    assoc = _association(node, datasets, syntax)
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _wait_drained(node: DicomNode, timeout: float = 30.0) -> float:
    started = time.perf_counter()
    while node.queue.depth() or any((node.queue.root / "ready").iterdir()):
        assert time.perf_counter() - started < timeout, "the node did not index its queue in time"
        time.sleep(0.05)
    time.sleep(0.1)  # the last batch's upsert returns before `done` empties the queue: let it finish
    return time.perf_counter() - started


def _expected_id(node: DicomNode, path: Path) -> str:
    return image_id(decode_image(path.read_bytes()).content_key, salt=node.id_salt)


def test_echo_answers_success(node: DicomNode) -> None:
    assoc = _association(node, [])
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_stored_instances_of_every_syntax_become_searchable_rows_keyed_as_ingestion_keys_them(node: DicomNode) -> None:
    paths = [dicom_file(name) for name in FILES]
    datasets = [dcmread(path) for path in paths]
    started = time.perf_counter()
    assert _send(node, datasets) == [0x0000] * len(datasets), FILES
    # Implicit VR little endian: the SCU re-encodes MR_small for the context the node accepted.
    mr = dcmread(dicom_file("MR_small.dcm"))
    assert _send(node, [mr], ImplicitVRLittleEndian) == [0x0000]
    _wait_drained(node)
    searchable_s = time.perf_counter() - started
    ids = {_expected_id(node, path): path for path in [*paths, dicom_file("MR_small.dcm")]}
    rows = node.store.get_rows(COLLECTION, list(ids))
    assert set(rows) == set(ids)
    for image, path in ids.items():
        ds = dcmread(path)
        stored = node.store.client.query(COLLECTION, filter=f'id == "{image}"',
                                         output_fields=[schema.PATIENT_HASH, schema.STUDY_HASH, schema.SOURCE])[0]
        assert stored[schema.PATIENT_HASH] == subject_hash("patient", str(ds.get("PatientID", "")), node.id_salt)
        assert stored[schema.STUDY_HASH] == subject_hash("study", str(ds.get("StudyInstanceUID", "")), node.id_salt)
        assert stored[schema.SOURCE].startswith("sha256:") and ds.SOPInstanceUID not in stored[schema.SOURCE]
        hits = node.store.search(COLLECTION, np.asarray([rows[image][schema.EMBEDDING]]), top_k=1)[0]
        assert hits[0].id == image
        assert schema.PATIENT_HASH not in hits[0].fields  # erasure keys are never returned
    print(f"{len(ids)} instances from C-STORE to searchable in {searchable_s:.2f} s")


def test_resending_a_study_adds_no_rows(node: DicomNode) -> None:
    datasets = [dcmread(dicom_file("CT_small.dcm")), dcmread(dicom_file("MR_small_RLE.dcm"))]
    _send(node, datasets)
    _wait_drained(node)
    before = node.store.count(COLLECTION)
    assert _send(node, datasets) == [0x0000, 0x0000]
    _wait_drained(node)
    assert node.store.count(COLLECTION) == before


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_non_image_sop_class_is_refused_with_0122_stores_nothing_and_is_counted(node: DicomNode) -> None:
    before = node.store.count(COLLECTION)
    refused = _metric("cbmir_node_received_total", status="0x0122")
    indexed = _metric("cbmir_node_indexed_total")
    assert _send(node, [dcmread(dicom_file("test-SR.dcm"))]) == [SOP_CLASS_NOT_SUPPORTED]
    _wait_drained(node)
    assert node.store.count(COLLECTION) == before
    assert _metric("cbmir_node_received_total", status="0x0122") == refused + 1
    assert _metric("cbmir_node_failed_total", reason="not_image") >= 1
    assert _metric("cbmir_node_indexed_total") == indexed
    assert _metric("cbmir_node_queue_depth") == 0


def test_corrupt_pixel_data_is_refused_with_c000_and_image_without_pixels_with_a900(node: DicomNode) -> None:
    before = node.store.count(COLLECTION)
    corrupt = dcmread(dicom_file("CT_small.dcm"))
    corrupt.SOPInstanceUID = generate_uid()
    corrupt.PixelData = corrupt.PixelData[: len(corrupt.PixelData) // 2]  # half the frame a 128x128 CT declares
    no_pixels = dcmread(dicom_file("CT_small.dcm"))
    no_pixels.SOPInstanceUID = generate_uid()
    del no_pixels.PixelData
    statuses = _send(node, [corrupt]) + _send(node, [no_pixels])
    assert statuses == [CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH]
    _wait_drained(node)
    assert node.store.count(COLLECTION) == before
    assert not any((node.queue.root / "failed").iterdir())


def test_a_full_queue_or_an_oversized_dataset_answers_a700_and_the_node_keeps_serving(node: DicomNode) -> None:
    ct = dcmread(dicom_file("CT_small.dcm"))
    ct.SOPInstanceUID = generate_uid()
    before = node.store.count(COLLECTION)
    node.queue.max_items = 0
    try:
        assert _send(node, [ct]) == [OUT_OF_RESOURCES]
    finally:
        node.queue.max_items = 100_000
    config = node.config
    node.config = replace(config, max_dataset_mb=0)  # any instance is over a 0 MiB bound
    try:
        assert _send(node, [ct]) == [OUT_OF_RESOURCES]
    finally:
        node.config = config
    _wait_drained(node)
    assert node.store.count(COLLECTION) == before
    assert _send(node, [ct]) == [0x0000]


def test_unknown_transfer_syntax_is_refused_at_association(node: DicomNode) -> None:
    mpeg2 = "1.2.840.10008.1.2.4.100"
    assert mpeg2 not in offered_transfer_syntaxes()
    ct = dcmread(dicom_file("CT_small.dcm"))
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(ct.SOPClassUID, mpeg2)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CBMIR")
    try:
        assert assoc.is_established
        assert [c.abstract_syntax for c in assoc.accepted_contexts] == [Verification]
        with pytest.raises(ValueError, match="No presentation context"):
            assoc.send_c_store(ct)
    finally:
        assoc.release()


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed (apt-get install dcmtk)")
def test_dcmtk_echoscu_and_storescu_are_answered_and_indexed(node: DicomNode, tmp_path: Path) -> None:
    echo = subprocess.run(["echoscu", "-aec", "CBMIR", "127.0.0.1", str(node.port)], capture_output=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
    ds = dcmread(dicom_file("MR_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    path = tmp_path / "mr.dcm"
    ds.save_as(path)
    store = subprocess.run(["storescu", "-aec", "CBMIR", "127.0.0.1", str(node.port), str(path)],
                           capture_output=True, timeout=30)
    assert store.returncode == 0, store.stderr
    _wait_drained(node)
    assert node.store.existing_ids(COLLECTION, [_expected_id(node, path)])
