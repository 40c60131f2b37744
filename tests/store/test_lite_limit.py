"""Past the measured Milvus Lite size, ingest and serve say (once, without a traceback) how to move to a server."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from cbmir.services.store import MilvusStore, choose_index
from cbmir.services.store import schema as store_schema
from cbmir.services.store.lite_limit import LITE_MAX_SERVING_ROWS, warn_if_past_lite_limit
from cbmir.services.store.milvus_server import MilvusServer

DIM = 8


def _fill(store: MilvusStore, rows: int) -> None:
    identity = json.dumps({"architecture": "test", "weights_sha256": "w", "dim": DIM, "preprocessing": {}})
    store.ensure_collection("images", identity, DIM, choose_index("HNSW", "COSINE"))
    empty = {name: "" for name in store_schema.SCALAR_FIELDS}
    vectors = np.random.default_rng(0).random((rows, DIM)).tolist()
    store.upsert("images", [{**empty, "id": f"r{i}", "embedding": vectors[i], "label": "a"} for i in range(rows)])


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.endswith("lite_limit") and r.levelno == logging.WARNING]


def test_a_lite_collection_past_the_limit_warns_once_with_the_server_and_migrate_commands(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = MilvusStore(str(tmp_path / "cbmir.db"))
    _fill(store, 30)
    caplog.set_level(logging.WARNING)

    assert not warn_if_past_lite_limit(store, "images", limit=30)
    assert _warnings(caplog) == []
    assert warn_if_past_lite_limit(store, "images", limit=29)

    (record,) = _warnings(caplog)
    message = record.getMessage()
    assert "30 rows on Milvus Lite" in message and "cbmir milvus-server" in message
    assert f"cbmir migrate --from {tmp_path / 'cbmir.db'} --to http://127.0.0.1:19530 --collection images" in message
    assert record.exc_info is None
    assert (record.rows, record.lite_max_serving_rows) == (30, 29)  # structured fields for --log-json


def test_the_default_limit_is_the_measured_one_and_a_missing_collection_is_not_past_it(tmp_path: Path) -> None:
    assert LITE_MAX_SERVING_ROWS >= 1000
    store = MilvusStore(str(tmp_path / "cbmir.db"))
    assert not warn_if_past_lite_limit(store, "absent", limit=0)


def test_a_server_never_warns(milvus_server: MilvusServer, caplog: pytest.LogCaptureFixture) -> None:
    store = MilvusStore(milvus_server.uri)
    for name in store.list_collections():
        store.drop_collection(name)
    _fill(store, 30)
    caplog.set_level(logging.WARNING)
    assert not warn_if_past_lite_limit(store, "images", limit=1)
    assert _warnings(caplog) == []
    store.drop_collection("images")
    store.close()
