"""`cbmir serve --vectors-only` and `--search-param`: no model loaded, same answers to vectors and ids."""

from __future__ import annotations

import io
import subprocess
import sys

import grpc
import numpy as np
import pytest
from PIL import Image

from cbmir.services.query.client import RetrievalClient
from cbmir.services.query.engine import RetrievalEngine
from cbmir.services.query.server import ServerOptions, start_server
from cbmir.services.query.vector_only import StoredVectorsModel
from cbmir.services.store import MilvusStore
from cbmir.services.store.index import parse_search_overrides

COLLECTION = "reliability"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_vectors_only_server_answers_vectors_and_ids_like_the_full_one_and_refuses_images(corpus) -> None:
    model = StoredVectorsModel.of_collection(corpus.store.model_identity_json(COLLECTION))
    assert model.identity == corpus.model.identity and model.dim == corpus.model.dim
    full = start_server(corpus.engine(), host="127.0.0.1", port=0, options=ServerOptions(store_check_seconds=0))
    bare = start_server(RetrievalEngine(corpus.store, model, COLLECTION), host="127.0.0.1", port=0,
                        options=ServerOptions(store_check_seconds=0))
    try:
        with RetrievalClient(f"127.0.0.1:{full.port}", timeout=30) as with_model, \
                RetrievalClient(f"127.0.0.1:{bare.port}", timeout=30) as without:
            vector = corpus.model.embed([corpus.images[3]])[0]
            expected = [h.id for h in with_model.search(vector=vector, top_k=5).hits]
            assert [h.id for h in without.search(vector=vector, top_k=5).hits] == expected
            assert expected[0] == corpus.ids[3]
            assert [h.id for h in without.search(id=corpus.ids[7], top_k=3).hits][0] == corpus.ids[7]
            with pytest.raises(grpc.RpcError) as refused:
                without.search(image=_png(corpus.images[0]), top_k=3)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "--vectors-only" in refused.value.details()
    finally:
        full.stop()
        bare.stop()


def test_search_param_overrides_the_recorded_ef_of_hnsw_only(corpus) -> None:
    recorded = corpus.store.index_config(COLLECTION)
    assert recorded.index_type == "HNSW"
    overridden = MilvusStore(corpus.store.uri, search_overrides=parse_search_overrides(["ef=321", "nprobe=7"]))
    params = overridden.index_config(COLLECTION).search_params
    assert params["ef"] == 321 and "nprobe" not in params  # nprobe is IVF's, not HNSW's
    hits = overridden.search(COLLECTION, [corpus.model.embed([corpus.images[0]])[0]], top_k=3)
    assert hits[0][0].id == corpus.ids[0]


@pytest.mark.parametrize("bad", ["ef", "ef=0", "ef=-3", "M=16", "ef=1e3", "nprobe=x"])
def test_bad_search_params_are_refused_with_the_allowed_keys(bad: str) -> None:
    with pytest.raises(ValueError, match="KEY one of ef, nprobe"):
        parse_search_overrides([bad])


def test_vectors_only_on_a_missing_collection_is_one_line(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "cbmir.cli", "serve", "--vectors-only", "--milvus-uri",
                           str(tmp_path / "empty.db"), "--collection", "nope", "--port", "0", "--metrics-port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "collection 'nope' not found" in done.stderr and "Traceback" not in done.stderr
