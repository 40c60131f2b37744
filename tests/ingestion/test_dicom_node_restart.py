"""`cbmir dicom-node` killed (SIGKILL) mid-burst loses no acknowledged instance: the restart re-drains its queue."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from cbmir.ingestion.dicom_node import DicomNode, NodeConfig
from cbmir.services.embedding import image_id
from cbmir.services.embedding.id_salt import read_default_salt
from tests.embedding._data import dicom_file

COLLECTION = "burst"
BURST = 50
KILL_AFTER = 20  # acknowledged instances before the SIGKILL


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(port: int, root: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "cbmir", "dicom-node", "--port", str(port), "--milvus-uri", str(root / "cbmir.db"),
         "--queue-dir", str(root / "queue"), "--collection", COLLECTION, "--log-level", "WARNING"],
        env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assoc = ae.associate("127.0.0.1", port, ae_title="CBMIR")
        if assoc.is_established:
            status = assoc.send_c_echo()
            assoc.release()
            if status and status.Status == 0:
                return process
        time.sleep(0.3)
    process.kill()
    raise AssertionError("the node did not answer C-ECHO within 60 s")


def test_sigkill_mid_burst_then_restart_indexes_every_acknowledged_instance(tmp_path: Path) -> None:
    port = _free_port()
    template = dcmread(dicom_file("CT_small.dcm"))
    t0 = time.perf_counter()
    node = _start(port, tmp_path)
    print(f"node up in {time.perf_counter() - t0:.1f} s")
    ae = AE(ae_title="TESTSCU")
    ae.dimse_timeout = ae.network_timeout = 5  # a send to the killed node fails in seconds
    ae.add_requested_context(template.SOPClassUID, template.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="CBMIR")
    assert assoc.is_established
    acked: list[str] = []
    started = time.perf_counter()
    for _ in range(BURST):
        template.SOPInstanceUID = generate_uid()
        status = assoc.send_c_store(template)
        if not status or not assoc.is_established:
            break  # the node is gone: no success for this one
        assert status.Status == 0x0000
        acked.append(str(template.SOPInstanceUID))
        if len(acked) == KILL_AFTER:
            rate = KILL_AFTER / (time.perf_counter() - started)
            os.kill(node.pid, signal.SIGKILL)  # mid-burst, while the indexer is still behind
    node.wait(10)
    assoc.abort()
    assert KILL_AFTER <= len(acked) < BURST
    queued = list((tmp_path / "queue" / "ready").iterdir())
    print(f"received {rate:.0f} instances/s; {len(queued)} still queued at the kill")

    # The restart, in this process (one interpreter start less): a new node on the same queue and Milvus file.
    restarted = DicomNode(NodeConfig(port=0, milvus_uri=str(tmp_path / "cbmir.db"),
                                     queue_dir=str(tmp_path / "queue"), collection=COLLECTION))
    restarted.start()
    print(f"restarted at {time.perf_counter() - t0:.1f} s")
    try:
        deadline = time.monotonic() + 60
        while any((tmp_path / "queue" / "ready").iterdir()):
            assert time.monotonic() < deadline, "the restarted node did not drain its queue"
            time.sleep(0.2)
    finally:
        restarted.stop()
    store = restarted.store
    salt = read_default_salt(create=False)
    expected = {image_id(f"dicom:{uid}", salt) for uid in acked}
    assert store.existing_ids(COLLECTION, sorted(expected)) == expected
    assert store.count(COLLECTION) == len(expected)
