"""Store fixtures: every test that takes `milvus_uri` runs on Milvus Lite and on a real Milvus server.

The session's `milvus_server` fixture lives in tests/conftest.py (the cluster tests use it too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbmir.services.store.milvus_server import MilvusServer


@pytest.fixture(params=["lite", "server"])
def milvus_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A Milvus Lite file per test, or the session's server emptied of collections (tests reuse names)."""
    if request.param == "lite":
        return str(tmp_path / "cbmir.db")
    server: MilvusServer = request.getfixturevalue("milvus_server")
    from pymilvus import MilvusClient

    client = MilvusClient(uri=server.uri)
    for name in client.list_collections():
        client.drop_collection(name)
    client.close()
    return server.uri
