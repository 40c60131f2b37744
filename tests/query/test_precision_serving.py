"""A collection ingested at fp16 (real CPU autocast, as a GPU ingests) served over real gRPC and Milvus Lite: by an
fp32 service (within the measured tolerance), not by a bf16 one (measurably worse); a truly different model is
still refused, naming the fields that differ."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import grpc
import pytest

from cbmir.cli import main
from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.runner import run_ingestion
from cbmir.services.embedding import EmbeddingModel, ModelIdentity
from cbmir.services.embedding.precision import serving_precision
from cbmir.services.flags import load_model_for
from cbmir.services.query.client import RetrievalClient
from cbmir.services.query.engine import QueryRejected, RetrievalEngine
from cbmir.services.query.server import start_server
from cbmir.services.store import MilvusStore

COLLECTION = "gpu_ingested"


@pytest.fixture(scope="module")
def fp16_collection(tmp_path_factory, ray_local, breastmnist_png_archive: Path) -> str:
    """16 real ultrasound images ingested through the Ray pipeline with `--precision fp16`."""
    uri = str(tmp_path_factory.mktemp("fp16") / "cbmir.db")
    report = run_ingestion(IngestConfig(source=str(breastmnist_png_archive), milvus_uri=uri, collection=COLLECTION,
                                        actors=1, batch_size=16, split="train", limit=16, precision="fp16",
                                        report_path=None, progress=False))
    assert report.ingested == 16
    store = MilvusStore(uri)
    assert ModelIdentity.from_json(store.model_identity_json(COLLECTION)).precision == "fp16"
    store.close()
    return uri


def _serve_args(precision: str, **model: object) -> argparse.Namespace:
    return argparse.Namespace(backbone="efficientnet_lite0", weights=None, random_init=False, device="cpu",
                              precision=precision, tta=False, **model)


def _query(archive: Path) -> Path:
    return sorted((archive / "images").glob("train_*.png"))[3]


def test_fp16_collection_is_served_by_an_fp32_service(fp16_collection: str, breastmnist_png_archive: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    # What a CPU pod without native fp16 kernels runs (auto -> fp32): within the measured tolerance.
    store = MilvusStore(fp16_collection)
    model = load_model_for(_serve_args("fp32"), store, COLLECTION)
    assert model.identity.precision == "fp32"
    engine = RetrievalEngine(store, model, COLLECTION, return_source=True)
    with caplog.at_level(logging.WARNING, logger="cbmir.services.query.engine"):
        engine.collection_dim(COLLECTION)
    assert "holds fp16 vectors, this service embeds queries at fp32: accepted (measured paired mAP@10" in caplog.text
    running = start_server(engine, host="127.0.0.1", port=0)
    client = RetrievalClient(f"127.0.0.1:{running.port}", timeout=60)
    try:
        query = _query(breastmnist_png_archive)
        reply = client.search(image=query, top_k=5)
        assert reply.hits[0].source.endswith(query.name)  # its own fp16 vector is still its nearest
        assert reply.hits[0].score == pytest.approx(1.0, abs=0.02)
    finally:
        client.close()
        running.stop()
        store.close()


def test_a_bf16_service_is_refused_on_fp16_vectors_it_measurably_degrades(
        fp16_collection: str, breastmnist_png_archive: Path) -> None:
    # Measured: fp16 archive / bf16 queries lose 0.017 mAP@10 on mias-tissue (95% CI excludes 0).
    store = MilvusStore(fp16_collection)
    engine = RetrievalEngine(store, load_model_for(_serve_args("bf16"), store, COLLECTION), COLLECTION)
    running = start_server(engine, host="127.0.0.1", port=0)
    client = RetrievalClient(f"127.0.0.1:{running.port}", timeout=60)
    try:
        with pytest.raises(grpc.RpcError) as error:
            client.search(image=_query(breastmnist_png_archive), top_k=5)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert ("precision: collection fp16, service bf16, a pair with no measured tolerance; start the service "
                "with --precision fp16 (or auto)") in (error.value.details() or "")
    finally:
        client.close()
        running.stop()
        store.close()


def test_auto_service_adopts_fp16_where_the_cpu_runs_it_natively(fp16_collection: str) -> None:
    store = MilvusStore(fp16_collection)
    try:
        model = load_model_for(_serve_args("auto"), store, COLLECTION)
    finally:
        store.close()
    assert model.identity.precision == serving_precision("fp16", "cpu")


def test_another_model_is_refused_naming_the_fields_that_differ(
        fp16_collection: str, breastmnist_png_archive: Path) -> None:
    store = MilvusStore(fp16_collection)
    other = EmbeddingModel.load("efficientnet_lite0", random_init=True, precision="bf16")
    engine = RetrievalEngine(store, other, COLLECTION)
    with pytest.raises(QueryRejected) as refused:
        engine.collection_dim(COLLECTION)
    message = str(refused.value)
    assert "weights_sha256: collection 579344248a93, service random-init-" in message
    assert "precision: collection fp16, service bf16" in message
    assert "architecture" not in message and "dim:" not in message
    running = start_server(engine, host="127.0.0.1", port=0)
    client = RetrievalClient(f"127.0.0.1:{running.port}", timeout=60)
    try:
        with pytest.raises(grpc.RpcError) as error:
            client.search(image=_query(breastmnist_png_archive), top_k=5)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "weights_sha256: collection 579344248a93" in (error.value.details() or "")
    finally:
        client.close()
        running.stop()
        store.close()


def test_info_shows_the_precision_and_the_query_precisions_accepted(
        fp16_collection: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--milvus-uri", fp16_collection, "--collection", COLLECTION, "--only"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith(COLLECTION))
    assert "precision fp16 (queries also accepted at fp32: within the measured tolerance" in line
