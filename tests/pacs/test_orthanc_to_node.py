"""A real PACS pushes a study to cbmir: Orthanc C-STOREs (REST /modalities/{id}/store) to `cbmir dicom-node`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from cbmir.ingestion.dicom_node import DicomNode, NodeConfig
from cbmir.services.embedding import decode_image, image_id
from cbmir.services.store import schema
from tests.embedding._data import dicom_file

from .orthanc import missing, running_orthanc

COLLECTION = "pushed"
# Three syntaxes a PACS holds: uncompressed, RLE, JPEG 2000 (Orthanc sends each as it stores it).
FILES = ("CT_small.dcm", "MR_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm")

pytestmark = pytest.mark.skipif(bool(missing()), reason=missing() or "Orthanc is installed")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DicomNode]:
    root = tmp_path_factory.mktemp("pushed-node")
    running = DicomNode(NodeConfig(port=0, milvus_uri=str(root / "cbmir.db"), queue_dir=str(root / "queue"),
                                   collection=COLLECTION))
    running.start()
    yield running
    running.stop()


def test_orthanc_pushes_a_study_to_the_node_and_each_instance_becomes_a_searchable_row(node: DicomNode,
                                                                                        tmp_path: Path) -> None:
    paths = [dicom_file(name) for name in FILES]
    with running_orthanc(tmp_path / "orthanc", modalities={"cbmir": ("CBMIR", "127.0.0.1", node.port)}) as pacs:
        uploaded = [pacs.upload(path.read_bytes())["ID"] for path in paths]
        echo = requests.post(f"{pacs.url}/modalities/cbmir/echo", data="{}", timeout=30)
        assert echo.status_code == 200, echo.text  # Orthanc's C-ECHO reached the node
        started = time.perf_counter()
        reply = requests.post(f"{pacs.url}/modalities/cbmir/store", timeout=120,
                              json={"Resources": uploaded, "Synchronous": True})
        assert reply.status_code == 200, reply.text
        assert reply.json().get("FailedInstancesCount", 0) == 0, reply.json()
    expected = {image_id(decode_image(path.read_bytes()).content_key, salt=node.id_salt) for path in paths}
    while set(node.store.get_rows(COLLECTION, list(expected))) != expected:
        assert time.perf_counter() - started < 60, "the pushed instances did not become rows in time"
        time.sleep(0.1)
    print(f"{len(paths)} instances from Orthanc's C-STORE to searchable in {time.perf_counter() - started:.2f} s")
    rows = node.store.get_rows(COLLECTION, list(expected))
    for image, row in rows.items():
        hits = node.store.search(COLLECTION, np.asarray([row[schema.EMBEDDING]]), top_k=1)[0]
        assert hits[0].id == image
