"""`cbmir ingest --milvus-token` reaches an authenticated Milvus server (it was once parsed and dropped)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from cbmir.ingestion import IngestConfig, run_ingestion
from cbmir.services.store import MilvusStore, StoreError
from cbmir.services.store.milvus_server import DEFAULT_ROOT_TOKEN as ROOT_TOKEN
from cbmir.services.store.milvus_server import MilvusServer


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    if importlib.util.find_spec("milvus") is None:
        pytest.skip("the PyPI package `milvus` is not installed (pip install 'cbmir[server]')")
    settings = {"authorization_enabled": "true"}
    with MilvusServer(data_dir=tmp_path_factory.mktemp("milvus-auth"), settings=settings) as server:
        yield server


def _config(server: MilvusServer, source: Path, tmp_path: Path, token: str) -> IngestConfig:
    return IngestConfig(source=str(source), milvus_uri=server.uri, milvus_token=token, collection="authed",
                        limit=12, batch_size=12, progress=False, report_path=str(tmp_path / "report.json"))


def test_ingest_with_the_token_writes_into_an_authenticated_server(ray_local: None, auth_server: MilvusServer,
                                                                   breastmnist_png_archive: Path,
                                                                   tmp_path: Path) -> None:
    report = run_ingestion(_config(auth_server, breastmnist_png_archive, tmp_path, ROOT_TOKEN))
    assert report.ingested == 12
    store = MilvusStore(auth_server.uri, token=ROOT_TOKEN)
    try:
        assert store.describe("authed").row_count == 12
    finally:
        store.close()
    assert ROOT_TOKEN not in (tmp_path / "report.json").read_text()
    assert ROOT_TOKEN not in repr(_config(auth_server, breastmnist_png_archive, tmp_path, ROOT_TOKEN))


def test_ingest_without_the_token_is_refused_by_the_server(ray_local: None, auth_server: MilvusServer,
                                                           breastmnist_png_archive: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        run_ingestion(_config(auth_server, breastmnist_png_archive, tmp_path, ""))
