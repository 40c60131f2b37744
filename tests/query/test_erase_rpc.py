"""The Erase RPC: only an admin token erases; the reply and the audit line carry counts and proof, never the id."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from pydicom import dcmread
from pynetdicom import AE

from cbmir.ingestion.dicom_node import DicomNode, NodeConfig
from cbmir.services.embedding import decode_image, image_id
from cbmir.services.query.auth import Authenticator, parse_tokens
from cbmir.services.query.client import RetrievalClient
from cbmir.services.query.engine import RetrievalEngine
from cbmir.services.query.proto import retrieval_pb2
from cbmir.services.query.server import ServerOptions, start_server
from tests.embedding._data import dicom_file

USER = "user-token-0123456789abcdef0123456789"
ADMIN = "admin-token-0123456789abcdef012345678"


def test_erase_rpc_needs_an_admin_token_then_erases_proves_and_audits(tmp_path: Path) -> None:
    uri = str(tmp_path / "cbmir.db")
    node = DicomNode(NodeConfig(port=0, milvus_uri=uri, queue_dir=str(tmp_path / "queue"), collection="cbmir"))
    node.start()
    try:
        datasets = [dcmread(dicom_file("CT_small.dcm")), dcmread(dicom_file("MR_small.dcm"))]
        ae = AE(ae_title="TESTSCU")
        for ds in datasets:
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CBMIR")
        assert [int(assoc.send_c_store(ds).Status) for ds in datasets] == [0, 0]
        assoc.release()
        while node.queue.depth():
            pass
    finally:
        node.stop()
    assert node.store.count("cbmir") == 2
    audit = tmp_path / "audit.jsonl"
    admin = parse_tokens([f"admin:{ADMIN}"], "test")
    options = ServerOptions(authenticator=Authenticator({**parse_tokens([f"user:{USER}"], "test"), **admin}),
                            admin=Authenticator(admin), audit_log=str(audit))
    running = start_server(RetrievalEngine(node.store, node.embedder.model, "cbmir"), host="127.0.0.1", port=0,
                           options=options)
    try:
        request = retrieval_pb2.EraseRequest(patient_id="1CT1")
        ct_id = image_id(decode_image(dicom_file("CT_small.dcm").read_bytes()).content_key, salt=node.id_salt)
        with RetrievalClient(f"127.0.0.1:{running.port}", token=USER) as user:
            # What the node indexed is searchable over gRPC: the CT file as the query finds its own row first.
            assert user.search(image=dicom_file("CT_small.dcm"), top_k=2).hits[0].id == ct_id
            with pytest.raises(grpc.RpcError) as refused:
                user.stub.Erase(request, metadata=user.metadata, timeout=60)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert node.store.count("cbmir") == 2
        with RetrievalClient(f"127.0.0.1:{running.port}", token=ADMIN) as client:
            reply = client.stub.Erase(request, metadata=client.metadata, timeout=120)
    finally:
        running.server.stop(None)
    assert reply.rows_erased == 1 and reply.proved
    assert node.store.count("cbmir") == 1
    assert not node.store.existing_ids("cbmir", [ct_id], consistency_level="Strong")
    records = [json.loads(line) for line in audit.read_text().splitlines() if '"Erase"' in line]
    assert [(r["caller"], r["status"]) for r in records] == [("user", "PERMISSION_DENIED"), ("admin", "OK")]
    assert records[1]["erasure"]["rows_erased"] == 1
    assert "1CT1" not in audit.read_text() and "1CT1" not in reply.report_json
