"""Store fixtures: every test that takes `milvus_uri` runs on Milvus Lite and on a real Milvus server."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.store.milvus_server import MilvusServer


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """One real Milvus 2.3 standalone on 127.0.0.1 free ports for the session (it takes a few seconds to start)."""
    if importlib.util.find_spec("milvus") is None:
        pytest.skip("the PyPI package `milvus` is not installed (pip install 'cbmir[server]')")
    with MilvusServer(data_dir=tmp_path_factory.mktemp("milvus-server")) as server:
        yield server


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
