"""End to end through the real parts: Ray ingestion → Milvus Lite → gRPC server on 127.0.0.1 → client."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.runner import run_ingestion
from cbmir.services.embedding import EmbeddingModel, decode_image, decode_resized, image_id
from cbmir.services.embedding.id_salt import read_default_salt
from cbmir.services.query.client import RetrievalClient
from cbmir.services.query.engine import RetrievalEngine, SearchQuery
from cbmir.services.query.expansion import expanded_query
from cbmir.services.query.proto import retrieval_pb2
from cbmir.services.query.server import start_server
from cbmir.services.store import MilvusStore

COLLECTION = "e2e"
MAX_TOP_K = 50


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    return EmbeddingModel.load("efficientnet_lite0")


@pytest.fixture(scope="module")
def service(tmp_path_factory, ray_local, breastmnist_png_archive: Path, model: EmbeddingModel):
    """Ingest 60 real ultrasound images with 2 Ray actors, then serve them over real gRPC."""
    workdir = tmp_path_factory.mktemp("e2e")
    uri = str(workdir / "cbmir.db")
    report = run_ingestion(IngestConfig(
        source=str(breastmnist_png_archive), milvus_uri=uri, collection=COLLECTION, actors=2, batch_size=16,
        split="train", limit=60, report_path=str(workdir / "report.json"), progress=False,
        rerank_descriptor="hog",
    ))
    assert report.ingested == 60
    store = MilvusStore(uri)
    engine = RetrievalEngine(store, model, COLLECTION, max_top_k=MAX_TOP_K, return_source=True)
    running = start_server(engine, host="127.0.0.1", port=0)
    client = RetrievalClient(f"127.0.0.1:{running.port}", timeout=60)
    yield client, store, breastmnist_png_archive
    client.close()
    running.stop()
    store.close()


def _train_images(archive: Path) -> list[Path]:
    return sorted((archive / "images").glob("train_*.png"))


def test_health_check_answers_serving(service) -> None:
    client, _, _ = service
    assert client.health() == "SERVING"
    assert client.health("cbmir.v1.RetrievalService") == "SERVING"


def test_search_by_image_returns_ordered_labelled_hits_with_itself_first(service) -> None:
    client, _, archive = service
    query = _train_images(archive)[5]
    reply = client.search(image=query, top_k=10)
    assert len(reply.hits) == 10
    scores = [h.score for h in reply.hits]
    assert scores == sorted(scores, reverse=True)
    assert [h.rank for h in reply.hits] == list(range(1, 11))
    assert reply.hits[0].source.endswith(query.name)  # the stored copy of the query image is its own best match
    assert reply.hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert all(h.label in ("malignant", "normal_benign") for h in reply.hits)
    assert reply.timings.embed_ms > 0 and reply.timings.search_ms > 0 and reply.timings.decode_ms > 0


def test_stored_vector_equals_the_vector_the_service_computes(service, model: EmbeddingModel) -> None:
    _, store, archive = service
    salt = read_default_salt()  # ingest keyed the ids with the deployment's salt
    for query in _train_images(archive)[:3]:
        # The service's own decode: resized to the model input as the read tasks do (decode_resized).
        decoded = decode_resized(query.read_bytes(), model.preprocessing.input_size)
        stored = store.get_rows(COLLECTION, [image_id(decoded.content_key, salt)])[image_id(decoded.content_key, salt)]
        computed = model.embed([decoded.pixels])[0]
        stored_vector = np.asarray(stored["embedding"], dtype=np.float32)
        cosine = float(stored_vector @ computed / (np.linalg.norm(stored_vector) * np.linalg.norm(computed)))
        assert cosine > 0.9999
        np.testing.assert_allclose(stored_vector, computed, rtol=0, atol=2e-2 * float(np.abs(computed).max()))


def test_search_by_stored_id_can_exclude_itself(service) -> None:
    client, _, archive = service
    query_id = image_id(decode_image(_train_images(archive)[0].read_bytes()).content_key, read_default_salt())
    reply = client.search(id=query_id, top_k=5, exclude_query_id=True)
    assert len(reply.hits) == 5 and query_id not in [h.id for h in reply.hits]


def test_label_filter_and_explicit_prefilter_keep_only_that_class(service) -> None:
    client, _, archive = service
    query = _train_images(archive)[1]
    by_filter = client.search(image=query, top_k=10, filters={"label": "malignant"})
    by_prefilter = client.search(image=query, top_k=10, prefilter="explicit", prefilter_class="malignant")
    assert by_filter.hits and all(h.label == "malignant" for h in by_filter.hits)
    assert [h.id for h in by_prefilter.hits] == [h.id for h in by_filter.hits]
    assert by_prefilter.prefilter_applied


def test_search_by_vector_matches_search_by_image(service, model: EmbeddingModel) -> None:
    client, _, archive = service
    query = _train_images(archive)[2]
    vector = model.embed([decode_image(query.read_bytes()).pixels])[0]
    by_vector = client.search(vector=vector.tolist(), top_k=5)
    by_image = client.search(image=query, top_k=5)
    assert [h.id for h in by_vector.hits] == [h.id for h in by_image.hits]


def test_query_expansion_searches_again_with_the_query_averaged_into_its_first_hits(service,
                                                                                  model: EmbeddingModel) -> None:
    client, store, archive = service
    vector = model.embed([decode_image(_train_images(archive)[3].read_bytes()).pixels])[0]
    plain = client.search(vector=vector.tolist(), top_k=10)
    expanded = client.search(vector=vector.tolist(), top_k=10, query_expansion=3)

    first = [h.id for h in plain.hits[:3]]
    rows = store.get_rows(COLLECTION, first)
    by_hand = expanded_query(vector, [np.asarray(rows[i]["embedding"], dtype=np.float32) for i in first])
    assert not np.allclose(by_hand / np.linalg.norm(by_hand), vector / np.linalg.norm(vector), atol=1e-3)
    again = client.search(vector=by_hand.tolist(), top_k=10)
    assert [h.id for h in expanded.hits] == [h.id for h in again.hits]


def test_describe_collection_reports_model_and_size(service, model: EmbeddingModel) -> None:
    client, _, _ = service
    info = client.describe(COLLECTION)
    assert info.row_count == 60 and info.dim == model.dim == 1280
    assert info.model.model_id == model.identity.model_id and info.model.architecture == "efficientnet_lite0"
    assert (info.metric, info.index_type) == ("COSINE", "HNSW")


@pytest.mark.parametrize(("kwargs", "code", "message"), [
    ({"image": b"\x00garbage bytes, not an image" * 10}, grpc.StatusCode.INVALID_ARGUMENT, "cannot decode"),
    ({"image": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"}, grpc.StatusCode.INVALID_ARGUMENT, "cannot decode"),
    ({"vector": [0.1] * 7}, grpc.StatusCode.INVALID_ARGUMENT, "dim 7"),
    ({"vector": [float("nan")] * 1280}, grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    ({"vector": [0.1] * 1280, "top_k": 0}, grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
    ({"vector": [0.1] * 1280, "top_k": MAX_TOP_K + 1}, grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
    ({"vector": [0.1] * 1280, "filters": {"patient_name": "x"}}, grpc.StatusCode.INVALID_ARGUMENT, "unknown filter"),
    ({"vector": [0.1] * 1280, "filters": {"label": '" or 1==1 or label == "'}},
     grpc.StatusCode.INVALID_ARGUMENT, "not allowed"),
    ({"vector": [0.1] * 1280, "collection": "no_such"}, grpc.StatusCode.NOT_FOUND, "no_such"),
    ({"id": "0" * 32}, grpc.StatusCode.NOT_FOUND, "no image with id"),
    ({"id": 'x" or id != "'}, grpc.StatusCode.INVALID_ARGUMENT, "malformed id"),
    # Vectors that would score every hit 0 or NaN: zeros, and values whose norm overflows float32.
    ({"vector": [0.0] * 1280}, grpc.StatusCode.INVALID_ARGUMENT, "all zeros"),
    ({"vector": [1e19] * 1280}, grpc.StatusCode.INVALID_ARGUMENT, "overflows"),
    ({"vector": [3.4e38] * 1280}, grpc.StatusCode.INVALID_ARGUMENT, "overflows"),
    # `source` (a path, possibly naming a patient) is not a filter field.
    ({"vector": [0.1] * 1280, "filters": {"source": "SMITH_JOHN_MRN12345/CT_small.dcm"}},
     grpc.StatusCode.INVALID_ARGUMENT, "unknown filter"),
    # Echoed client values are clipped, so the reply never overflows gRPC's metadata limit.
    ({"vector": [0.1] * 1280, "collection": "c" * 100_000}, grpc.StatusCode.NOT_FOUND, "100000 characters"),
    ({"id": "7" * 50_000}, grpc.StatusCode.NOT_FOUND, "50000 characters"),
    ({"vector": [0.1] * 1280, "filters": {"k" * 20_000: "x"}}, grpc.StatusCode.INVALID_ARGUMENT, "20000 characters"),
    ({"id": "0" * 32, "rerank": "r" * 100_000}, grpc.StatusCode.INVALID_ARGUMENT, "100000 characters"),
    ({"vector": [0.1] * 1280, "query_expansion": 51}, grpc.StatusCode.INVALID_ARGUMENT, "query_expansion"),
])
def test_bad_requests_get_the_right_status_and_the_server_keeps_serving(service, kwargs, code, message) -> None:
    client, _, _ = service
    kwargs.setdefault("top_k", 5)
    with pytest.raises(grpc.RpcError) as raised:
        client.search(**kwargs)
    assert raised.value.code() == code
    assert message in raised.value.details()
    assert "Traceback" not in raised.value.details() and len(raised.value.details()) <= 1024
    assert client.health() == "SERVING"


def test_an_empty_request_is_invalid(service) -> None:
    client, _, _ = service
    with pytest.raises(grpc.RpcError) as raised:
        client.search(top_k=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_reflection_lists_the_retrieval_and_health_services(service) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    client, _, _ = service
    services = set(ProtoReflectionDescriptorDatabase(client.channel).get_services())
    assert {"cbmir.v1.RetrievalService", "grpc.health.v1.Health"} <= services


def test_requests_are_counted_in_prometheus_metrics(service) -> None:
    from prometheus_client import REGISTRY

    client, _, _ = service
    before = REGISTRY.get_sample_value("cbmir_requests_total", {"method": "Search", "code": "OK"}) or 0.0
    client.search(vector=[0.1] * 1280, top_k=3)
    after = REGISTRY.get_sample_value("cbmir_requests_total", {"method": "Search", "code": "OK"})
    assert after == before + 1


def test_hog_rerank_reorders_the_cnn_candidates_by_l1_distance(service) -> None:
    from cbmir.services.embedding.descriptors import hog_descriptor, l1_distances

    client, store, archive = service
    query = _train_images(archive)[4]
    plain = client.search(image=query, top_k=20)
    reranked = client.search(image=query, top_k=5, rerank="hog", k_prep=20)
    assert reranked.reranked and reranked.timings.rerank_ms > 0
    candidates = [h.id for h in plain.hits]
    assert {h.id for h in reranked.hits} <= set(candidates)
    descriptors = store.get_descriptors(COLLECTION, "hog", candidates)
    query_hog = hog_descriptor(decode_image(query.read_bytes()).pixels)
    distances = dict(zip(candidates, l1_distances(query_hog, np.stack([descriptors[i] for i in candidates])),
                         strict=True))
    expected = sorted(candidates, key=lambda i: distances[i])[:5]
    assert [h.id for h in reranked.hits] == expected
    assert reranked.hits[0].source.endswith(query.name)  # HOG distance to itself is 0


def test_k_reciprocal_rerank_reorders_the_shortlist_by_its_stored_vectors(service) -> None:
    """Label-free re-ranking over gRPC: a vector query (no descriptors needed) gets the first top_k of the k_prep
    shortlist in the order k_reciprocal_order gives for the vectors the store holds."""
    from cbmir.services.query.kreciprocal import k_reciprocal_order

    client, store, archive = service
    query = _train_images(archive)[7]
    stored_id = client.search(image=query, top_k=1).hits[0].id
    vector = np.asarray(store.get_rows(COLLECTION, [stored_id])[stored_id]["embedding"], dtype=np.float32)
    plain = client.search(vector=vector.tolist(), top_k=30)
    reranked = client.search(vector=vector.tolist(), top_k=10, rerank="kreciprocal", k_prep=30)
    assert reranked.reranked and reranked.timings.rerank_ms > 0
    candidates = [h.id for h in plain.hits]
    rows = store.get_rows(COLLECTION, candidates)
    order = k_reciprocal_order(vector, np.stack([np.asarray(rows[i]["embedding"]) for i in candidates]))
    assert [h.id for h in reranked.hits] == [candidates[i] for i in order[:10]]
    assert [h.id for h in reranked.hits] != candidates[:10]  # it does re-order real neighbours
    default = client.search(vector=vector.tolist(), top_k=5, rerank="kreciprocal")  # k_prep 0: a 50-hit shortlist
    assert default.reranked and len(default.hits) == 5


def test_k_reciprocal_default_shortlist_stays_within_the_servers_top_k_limit(service, model: EmbeddingModel) -> None:
    """A server whose max_top_k is under the 50-hit default shortlist re-ranks what it may return, not an error."""
    _, store, _ = service
    engine = RetrievalEngine(store, model, COLLECTION, max_top_k=20)
    result = engine.search(SearchQuery(vector=np.ones(model.dim, dtype=np.float32), top_k=5, rerank="kreciprocal"))
    assert result.reranked and len(result.hits) == 5


def test_rerank_by_stored_id_uses_the_stored_descriptor(service) -> None:
    client, _, archive = service
    query_id = image_id(decode_image(_train_images(archive)[6].read_bytes()).content_key, read_default_salt())
    reply = client.search(id=query_id, top_k=3, rerank="hog")
    assert reply.reranked and reply.hits[0].id == query_id


def test_rerank_without_descriptors_is_a_failed_precondition(service, model: EmbeddingModel) -> None:
    client, store, _ = service
    store.ensure_collection("no_hog", model.identity.to_json(), model.dim)
    with pytest.raises(grpc.RpcError) as raised:
        client.search(image=_train_images(service[2])[0], top_k=3, collection="no_hog", rerank="hog")
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--rerank-descriptor hog" in raised.value.details()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rerank": "sift"}, "unknown rerank"),
    ({"rerank": "hog", "k_prep": 2}, "k_prep"),
    ({"vector": [0.1] * 1280, "rerank": "hog"}, "not a vector"),
    ({"min_confidence": 1.5}, "min_confidence"),
])
def test_bad_rerank_and_prefilter_options_are_invalid(service, kwargs, message) -> None:
    client, _, archive = service
    if "vector" not in kwargs:
        kwargs["image"] = _train_images(archive)[0]
    with pytest.raises(grpc.RpcError) as raised:
        client.search(top_k=5, **kwargs)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()


def test_predicted_prefilter_needs_a_classifier_head(service) -> None:
    client, _, archive = service
    with pytest.raises(grpc.RpcError) as raised:
        client.search(image=_train_images(archive)[0], top_k=5, prefilter="predicted")
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "classifier head" in raised.value.details()


def test_an_unknown_collection_names_neither_the_server_path_nor_other_collections(service) -> None:
    client, store, _ = service
    with pytest.raises(grpc.RpcError) as raised:
        client.search(vector=[0.1] * 1280, top_k=3, collection="nope")
    details = raised.value.details()
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND and "'nope' not found" in details
    assert store.uri not in details and "/" not in details and COLLECTION not in details


@pytest.mark.parametrize("mode", [5, 99, -1])
def test_an_unknown_prefilter_mode_on_the_wire_is_refused_not_taken_for_off(service, mode: int) -> None:
    client, _, _ = service
    request = retrieval_pb2.SearchRequest(top_k=3, prefilter=mode)  # open enum: any int32 reaches the server
    request.vector.values.extend([0.1] * 1280)
    with pytest.raises(grpc.RpcError) as raised:
        client.stub.Search(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"unknown prefilter mode {mode}" in raised.value.details()


def test_hits_carry_no_source_unless_the_operator_turns_it_on(service, model) -> None:
    _, store, _ = service
    engine = RetrievalEngine(store, model, COLLECTION)
    hits = engine.search(SearchQuery(vector=np.full(1280, 0.1, dtype=np.float32), top_k=5)).hits
    assert len(hits) == 5 and all("source" not in h.fields for h in hits)
    revealing = RetrievalEngine(store, model, COLLECTION, return_source=True)
    hits = revealing.search(SearchQuery(vector=np.full(1280, 0.1, dtype=np.float32), top_k=5)).hits
    assert all(h.fields["source"].startswith("images/") for h in hits)
