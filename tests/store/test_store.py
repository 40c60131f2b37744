"""MilvusStore against a real Milvus Lite file: upsert idempotence, filters, model identity, errors."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from cbmir.services.store import (
    CollectionNotFoundError,
    InvalidFilterError,
    MilvusStore,
    ModelMismatchError,
    StoreUnavailableError,
    build_filter_expression,
    choose_index,
)
from cbmir.services.store import schema as store_schema

DIM = 16
IDENTITY = json.dumps({"architecture": "test", "weights_sha256": "abc", "dim": DIM, "preprocessing": {}})


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"id": f"img{i:04d}", "embedding": rng.standard_normal(DIM).astype(np.float32).tolist(),
         "label": ["glioma", "meningioma", "no_tumor"][i % 3], "modality": "MR" if i % 2 else "CT",
         "source": f"images/{i}.png", "dataset": "unit"}
        for i in range(n)
    ]


@pytest.fixture
def store(milvus_uri: str):
    store = MilvusStore(milvus_uri)
    store.ensure_collection("images", IDENTITY, DIM, choose_index("HNSW", "COSINE"))
    yield store
    store.close()


def _full(rows: list[dict]) -> list[dict]:
    fields = (*store_schema.SCALAR_FIELDS, *store_schema.ERASURE_FIELDS)  # every VARCHAR, for raw client inserts
    return [{**{f: "" for f in fields}, **row} for row in rows]


def test_upserting_the_same_rows_twice_keeps_one_row_each(store: MilvusStore) -> None:
    rows = _full(_rows(30))
    store.upsert("images", rows)
    store.upsert("images", rows)
    assert store.count("images") == 30
    assert store.existing_ids("images", ["img0001", "missing"]) == {"img0001"}
    assert sorted(store.iter_ids("images")) == sorted(r["id"] for r in rows)


def test_an_over_long_value_is_refused_with_its_field_and_nothing_of_its_write_is_stored(store: MilvusStore) -> None:
    # pymilvus's own per-character length check is off (services/store/milvus.py): the store must still refuse.
    from pymilvus import DataType
    from pymilvus.client import entity_helper

    # The switch is off and pymilvus's row path still reads it: a pymilvus that drops or renames it fails here.
    assert entity_helper.CHECK_STR_ARRAY is False
    assert "CHECK_STR_ARRAY" in entity_helper._ROW_SCALAR_NORMALIZERS[DataType.VARCHAR].__code__.co_names
    rows = _full(_rows(3))
    rows[1] = {**rows[1], "label": "x" * (store_schema.SCALAR_FIELDS["label"] + 1)}
    with pytest.raises(ValueError, match="field 'label' holds 257 characters, more than its 256"):
        store.upsert("images", rows)
    assert store.count("images") == 0


def test_search_returns_the_vector_itself_first_then_decreasing_scores(store: MilvusStore) -> None:
    rows = _full(_rows(60))
    store.upsert("images", rows)
    hits = store.search("images", np.array([rows[7]["embedding"]]), top_k=10)[0]
    assert hits[0].id == "img0007"
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert hits[0].fields["label"] == rows[7]["label"]


def test_filters_restrict_hits_to_matching_rows(store: MilvusStore) -> None:
    rows = _full(_rows(60))
    store.upsert("images", rows)
    hits = store.search("images", np.array([rows[0]["embedding"]]), 10, {"label": "no_tumor", "modality": "MR"})[0]
    assert hits and all(h.fields["label"] == "no_tumor" and h.fields["modality"] == "MR" for h in hits)


def test_exclude_ids_leaves_the_query_image_out(store: MilvusStore) -> None:
    rows = _full(_rows(20))
    store.upsert("images", rows)
    hits = store.search("images", np.array([rows[3]["embedding"]]), 5, exclude_ids=["img0003"])[0]
    assert "img0003" not in [h.id for h in hits]


@pytest.mark.parametrize("filters", [
    {"patient_name": "x"},                  # not a filterable field
    {"label": 'a" or label != "'},          # quote injection
    {"label": "a\\"},                        # escape injection
    {"label": "x\n or 1==1"},               # control characters
])
def test_unsafe_or_unknown_filters_are_refused(filters: dict[str, str]) -> None:
    with pytest.raises(InvalidFilterError):
        build_filter_expression(filters)


def test_injection_text_inside_an_allowed_value_is_matched_literally(store: MilvusStore) -> None:
    rows = _full(_rows(10))
    store.upsert("images", rows)
    hits = store.search("images", np.array([rows[0]["embedding"]]), 5, {"label": "glioma or 1==1"})[0]
    assert hits == []


def test_a_collection_of_another_model_is_refused(store: MilvusStore) -> None:
    other = json.dumps({"architecture": "other", "weights_sha256": "def", "dim": DIM, "preprocessing": {}})
    with pytest.raises(ModelMismatchError, match="architecture: collection test, this model other; weights_sha256: "
                                                 "collection abc, this model def; use the collection's model"):
        store.ensure_collection("images", other, DIM)


def test_a_mismatch_names_only_the_fields_that_differ(store: MilvusStore) -> None:
    stored = json.loads(store.model_identity_json("images"))
    other = json.dumps({**stored, "precision": "fp16", "preprocessing": {**stored["preprocessing"], "size": 256}})
    with pytest.raises(ModelMismatchError) as refused:
        store.check_model("images", other, offered_as="service")
    message = str(refused.value)
    assert "precision: collection fp32, service fp16" in message
    assert "architecture" not in message and "dim" not in message and "weights" not in message
    assert "size" in message
    # A tolerated field is handed back, not refused.
    assert store.check_model("images", json.dumps({**stored, "precision": "fp16"}), tolerated=("precision",)) == {
        "precision": ("fp32", "fp16")}


def test_unknown_collection_is_not_found(store: MilvusStore) -> None:
    with pytest.raises(CollectionNotFoundError, match="nope"):
        store.describe("nope")


def test_describe_reports_dim_metric_index_and_rows(store: MilvusStore) -> None:
    store.upsert("images", _full(_rows(12)))
    info = store.describe("images")
    assert (info.dim, info.metric, info.index_type, info.row_count) == (DIM, "COSINE", "HNSW", 12)
    assert json.loads(info.model_identity_json)["architecture"] == "test"


@pytest.mark.parametrize("index_type", ["IVF_FLAT", "IVF_SQ8", "FLAT"])
def test_other_index_types_search_correctly(milvus_uri: str, index_type: str) -> None:
    store = MilvusStore(milvus_uri)
    store.ensure_collection("c", IDENTITY, DIM, choose_index(index_type, "L2", expected_rows=200))
    rows = _full(_rows(200))
    store.upsert("c", rows)
    hits = store.search("c", np.array([rows[42]["embedding"]]), 3)[0]
    assert hits[0].id == "img0042"
    assert hits[0].distance == pytest.approx(0.0, abs=1e-3)  # L2: the vector itself is at distance 0
    store.close()


def test_a_dead_server_uri_is_reported_unavailable() -> None:
    with pytest.raises(StoreUnavailableError, match="127.0.0.1:1"):
        MilvusStore("http://127.0.0.1:1", timeout=2).list_collections()


def test_a_lite_path_without_db_suffix_is_refused_with_the_fix(tmp_path) -> None:
    with pytest.raises(StoreUnavailableError, match="must end in .db"):
        MilvusStore(str(tmp_path / "store"))


@pytest.mark.parametrize("level", ["Strong", "Session", "Bounded", "Eventually"])
def test_every_consistency_level_finds_the_same_hits_and_ids_only_skips_the_fields(store: MilvusStore,
                                                                                   level: str) -> None:
    rows = _full(_rows(40))
    store.upsert("images", rows)
    store.flush("images")
    query = np.array([rows[5]["embedding"]], dtype=np.float64)  # any float dtype: sent as float32 bytes
    full = store.search("images", query, 5, consistency_level="Strong")[0]
    hits = store.search("images", query, 5, consistency_level=level)[0]
    ids_only = store.search("images", query, 5, consistency_level=level, output_fields=())[0]
    assert [h.id for h in hits] == [h.id for h in full] and hits[0].id == "img0005"
    assert hits[0].fields["label"] == rows[5]["label"]
    assert [h.id for h in ids_only] == [h.id for h in hits] and ids_only[0].fields == {}


def test_an_unknown_consistency_level_is_refused_with_the_choices(store: MilvusStore) -> None:
    with pytest.raises(ValueError, match="Bounded"):
        store.search("images", np.zeros((1, DIM), dtype=np.float32), 5, consistency_level="Fast")
    with pytest.raises(ValueError, match="Session"):
        MilvusStore(store.uri, search_consistency="Fast")


def test_a_collection_with_one_partition_still_filters_by_label(milvus_uri: str) -> None:
    store = MilvusStore(milvus_uri)
    store.ensure_collection("one", IDENTITY, DIM, choose_index("HNSW", "COSINE"), num_partitions=1)
    rows = _full(_rows(30))
    store.client.insert("one", rows)  # insert: Milvus 2.3.5's upsert misfiles partition-key rows (#30607)
    hits = store.search("one", np.array([rows[0]["embedding"]]), 5, {"label": "meningioma"})[0]
    assert len(hits) == 5 and all(h.fields["label"] == "meningioma" for h in hits)
    store.close()


def test_a_collection_made_before_thumbnails_still_takes_rows_and_answers_searches(
        milvus_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    built = store_schema.build_schema

    def before_thumbnails(dim: int) -> Any:  # the schema cbmir created collections with until thumbnails
        old = built(dim)
        old._fields = [f for f in old.fields if f.name != store_schema.THUMBNAIL]
        return old

    monkeypatch.setattr(store_schema, "build_schema", before_thumbnails)
    store = MilvusStore(milvus_uri)
    store.ensure_collection("old", IDENTITY, DIM, choose_index("HNSW", "COSINE"))
    monkeypatch.undo()
    assert not store.has_field("old", store_schema.THUMBNAIL) and store.has_field("old", store_schema.LABEL)
    rows = [{**row, store_schema.THUMBNAIL: "aGVsbG8="} for row in _full(_rows(6))]
    assert store.upsert("old", rows) == 6
    hits = store.search("old", np.array([rows[0]["embedding"]]), 3)[0]
    assert hits[0].id == rows[0]["id"] and store_schema.THUMBNAIL not in hits[0].fields
    store.close()


def test_thumbnails_are_stored_and_returned_only_when_asked_for(store: MilvusStore) -> None:
    rows = [{**row, store_schema.THUMBNAIL: f"thumb{i}"} for i, row in enumerate(_full(_rows(6)))]
    store.upsert("images", rows)
    plain = store.search("images", np.array([rows[2]["embedding"]]), 1)[0][0]
    asked = store.search("images", np.array([rows[2]["embedding"]]), 1,
                         output_fields=(*store_schema.OUTPUT_FIELDS, store_schema.THUMBNAIL))[0][0]
    assert store_schema.THUMBNAIL not in plain.fields and asked.fields[store_schema.THUMBNAIL] == "thumb2"


def test_a_server_collection_indexes_every_filter_field_and_filters_alike(store: MilvusStore) -> None:
    rows = _full(_rows(60))
    store.client.insert("images", rows)  # insert: Milvus 2.3.5's upsert misfiles partition-key rows (#30607)
    indexed = {f: store.client.describe_index("images", f).get("index_type") if f in store.client.list_indexes(
        "images") else None for f in store_schema.FILTER_FIELDS}
    if store.server_version() == "lite":
        assert set(indexed.values()) == {None}  # Lite has no Trie, and scans in Python anyway
    else:
        # Without a scalar index a filter is evaluated row by row over the column on every search.
        assert set(indexed.values()) == {"Trie"}, indexed
    for label in ("glioma", "no_tumor"):
        hits = store.search("images", np.array([rows[0]["embedding"]]), 10, {"label": label, "modality": "MR"})[0]
        want = {r["id"] for r in rows if r["label"] == label and r["modality"] == "MR"}
        assert len(hits) == 10 and {h.id for h in hits} <= want


def test_an_older_server_collection_gets_its_filter_indexes_on_the_next_ingest(milvus_uri: str) -> None:
    store = MilvusStore(milvus_uri)
    store.ensure_collection("old", IDENTITY, DIM, choose_index("HNSW", "COSINE"))
    if store.server_version() == "lite":
        assert store.add_missing_filter_indexes("old") == []
        store.close()
        return
    # A collection as made before 2026-12-06: no index on the filter fields.
    store.client.release_collection("old")
    for name in store_schema.FILTER_FIELDS:
        store.client.drop_index("old", name)
    assert not set(store_schema.FILTER_FIELDS) & set(store.client.list_indexes("old"))
    store.ensure_collection("old", IDENTITY, DIM)  # what `cbmir ingest` runs first
    assert set(store_schema.FILTER_FIELDS) <= set(store.client.list_indexes("old"))
    assert store.add_missing_filter_indexes("old") == []  # nothing left to add
    rows = _full(_rows(30))
    store.client.insert("old", rows)
    hits = store.search("old", np.array([rows[0]["embedding"]]), 5, {"label": "meningioma"})[0]
    assert len(hits) == 5 and all(h.fields["label"] == "meningioma" for h in hits)
    store.close()
