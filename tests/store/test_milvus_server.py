"""MilvusServer: a real Milvus on loopback that starts, serves, and leaves nothing behind when stopped."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from pymilvus import MilvusClient

from cbmir.services.store import MilvusStore, choose_index, schema
from cbmir.services.store.milvus_server import MilvusServer


def test_the_session_server_serves_on_loopback_and_reports_healthy(milvus_server: MilvusServer) -> None:
    assert milvus_server.uri.startswith("http://127.0.0.1:")
    assert milvus_server.running()
    client = MilvusClient(uri=milvus_server.uri)
    assert isinstance(client.list_collections(), list)
    client.close()


def test_partition_key_filter_finds_rows_written_with_insert(milvus_server: MilvusServer) -> None:
    """Rows inserted (not upserted: milvus-io/milvus#30607 in 2.3.5) into the label partition key are found by it."""
    dim = 8
    store = MilvusStore(milvus_server.uri)
    identity = json.dumps({"architecture": "t", "weights_sha256": "x", "dim": dim, "preprocessing": {}})
    store.ensure_collection("pk", identity, dim, choose_index("HNSW", "COSINE"))
    rng = np.random.default_rng(0)
    empty = {field: "" for field in (*schema.SCALAR_FIELDS, *schema.ERASURE_FIELDS)}  # every field the schema has
    rows = [{**empty, "id": f"r{i}", "embedding": rng.random(dim).tolist(), "label": f"c{i % 3}"} for i in range(30)]
    store.client.insert("pk", rows)
    hits = store.search("pk", np.array([rows[0]["embedding"]]), 5, {"label": "c1"})[0]
    assert len(hits) == 5 and all(h.fields["label"] == "c1" for h in hits)
    store.drop_collection("pk")
    store.close()


def test_stop_leaves_no_process_and_removes_the_temporary_data_dir() -> None:
    server = MilvusServer().start()
    pid, data_dir = server.process.pid, server.data_dir
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert not data_dir.exists()


def test_milvus_settings_reach_the_server_config_and_unknown_keys_are_refused(tmp_path) -> None:
    from cbmir.services.store.milvus_server import MilvusServerError, parse_settings

    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_settings(["dataCoord.segment.maxSize"])
    with pytest.raises(MilvusServerError, match="not applied"):
        MilvusServer(data_dir=tmp_path / "bad", settings=parse_settings(["dataCoord.segment.noSuchKey=1"])).start()
    with MilvusServer(data_dir=tmp_path / "good", settings={"dataCoord.segment.maxSize": "1024"}) as server:
        config = (tmp_path / "good" / "configs" / "milvus.yaml").read_text()
        assert "maxSize: 1024" in config
        # the defaults stay under a --set of another key: segments sealed at maxSize, not at 32 binlog files
        assert "maxBinlogFileNumber: 128" in config and "sealProportion: 1\n" in config
        client = MilvusClient(uri=server.uri)
        assert isinstance(client.list_collections(), list)
        client.close()
