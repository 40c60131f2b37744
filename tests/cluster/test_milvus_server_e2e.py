"""End to end on a real Milvus server (not Lite): Ray ingestion → Milvus 2.3 standalone → gRPC service → client.

The same code as the embedded default, only `--milvus-uri http://127.0.0.1:<port>` differs (the scale path).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.report import IngestReport
from cbmir.ingestion.runner import run_ingestion
from cbmir.services.embedding import EmbeddingModel
from cbmir.services.query.client import RetrievalClient
from cbmir.services.query.engine import RetrievalEngine
from cbmir.services.query.server import start_server
from cbmir.services.store import MilvusStore
from cbmir.services.store.milvus_server import MilvusServer

COLLECTION = "e2e_server"
LIMIT = 40
LABELS = ("malignant", "normal_benign")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, ray_local: None, milvus_server: MilvusServer,
           breastmnist_png_archive: Path) -> Iterator[tuple[RetrievalClient, IngestReport]]:
    workdir = tmp_path_factory.mktemp("e2e-server")
    config = IngestConfig(source=str(breastmnist_png_archive), milvus_uri=milvus_server.uri, collection=COLLECTION,
                          actors=2, batch_size=16, split="train", limit=LIMIT, progress=False,
                          report_path=str(workdir / "report.json"))
    store = MilvusStore(milvus_server.uri)
    if store.has_collection(COLLECTION):
        store.drop_collection(COLLECTION)
    report = run_ingestion(config)  # (reruns are idempotent: tests/store checks upserts on the server)
    engine = RetrievalEngine(store, EmbeddingModel.load("efficientnet_lite0"), COLLECTION, return_source=True)
    running = start_server(engine, host="127.0.0.1", port=0)
    client = RetrievalClient(f"127.0.0.1:{running.port}", timeout=60)
    try:
        yield client, report
    finally:
        client.close()
        running.stop()
        store.drop_collection(COLLECTION)
        store.close()


def _train_images(archive: Path) -> list[Path]:
    return sorted((archive / "images").glob("train_*.png"))[:LIMIT]


def test_ingestion_into_the_server_is_complete(served) -> None:
    client, report = served

    assert report.read == LIMIT and report.failed == 0 and report.ingested == LIMIT
    assert report.row_count_after == LIMIT and report.milvus_uri.startswith("http://127.0.0.1:")
    info = client.describe(COLLECTION)
    assert info.row_count == LIMIT and info.dim == 1280 and info.model.architecture == "efficientnet_lite0"


def test_search_over_grpc_finds_the_query_image_itself_with_its_label(served,
                                                                      breastmnist_png_archive: Path) -> None:
    client, _ = served
    query = _train_images(breastmnist_png_archive)[3]
    reply = client.search(image=query, top_k=5)

    assert client.health() == "SERVING"
    assert len(reply.hits) == 5
    assert reply.hits[0].source.endswith(query.name)
    assert reply.hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert all(h.label in LABELS for h in reply.hits)


@pytest.mark.parametrize("label", LABELS)
def test_label_filter_runs_on_the_server(served, breastmnist_png_archive: Path, label: str) -> None:
    client, _ = served
    query = _train_images(breastmnist_png_archive)[0]
    reply = client.search(image=query, top_k=10, filters={"label": label})
    explicit = client.search(image=query, top_k=10, prefilter="explicit", prefilter_class=label)

    assert reply.hits and all(h.label == label for h in reply.hits)
    assert [h.id for h in explicit.hits] == [h.id for h in reply.hits]
