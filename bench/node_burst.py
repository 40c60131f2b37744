"""A burst of C-STOREs into an in-process `cbmir dicom-node`: instances/s received and indexed (docs/pacs.md)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def run(count: int, workdir: Path) -> dict[str, float]:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid
    from pynetdicom import AE

    from cbmir.ingestion.dicom_node import DicomNode, NodeConfig

    node = DicomNode(NodeConfig(port=0, milvus_uri=str(workdir / "cbmir.db"), queue_dir=str(workdir / "queue"),
                                collection="burst"))
    node.start()
    try:
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ae = AE(ae_title="BURST")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CBMIR")
        started = time.perf_counter()
        slowest = 0.0
        for i in range(count):
            ds.SOPInstanceUID = generate_uid()
            sent = time.perf_counter()
            status = assoc.send_c_store(ds)
            slowest = max(slowest, time.perf_counter() - sent)
            if "Status" not in status or status.Status != 0:
                raise RuntimeError(f"instance {i} of the burst: no success ({status or 'no answer'}; slowest "
                                   f"answer so far {slowest:.1f} s)")
        received_s = time.perf_counter() - started
        print(f"slowest C-STORE answer {slowest:.2f} s")
        assoc.release()
        while node.queue.depth():
            time.sleep(0.05)
        indexed_s = time.perf_counter() - started
        rows = node.store.count("burst")
    finally:
        node.stop()
    return {"instances": count, "received_per_s": round(count / received_s, 1),
            "indexed_per_s": round(count / indexed_s, 1), "last_indexed_after_last_received_s":
            round(indexed_s - received_s, 2), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        print(json.dumps(run(args.count, Path(workdir))))


if __name__ == "__main__":
    main()
