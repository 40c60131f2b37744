"""cbmir migrate: a Milvus Lite collection arrives whole on a real Milvus server (and on another Lite file)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from cbmir.services.store import CollectionNotFoundError, MilvusStore, choose_index
from cbmir.services.store import schema as store_schema
from cbmir.services.store.migrate import MigrationError, migrate, open_store
from cbmir.services.store.milvus_server import MilvusServer

DIM = 16
ROWS = 450
HOG_DIM = 12


def _identity(dim: int = DIM) -> str:
    return json.dumps({"architecture": "test", "weights_sha256": "w", "dim": dim, "preprocessing": {}})


def _rows(n: int, dim: int = DIM, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    empty = {name: "" for name in store_schema.SCALAR_FIELDS}
    return [{**empty, "id": f"img-{i:05d}", "embedding": vectors[i].tolist(), "label": f"class{i % 3}",
             "modality": "MR" if i % 2 else "CT", "source": f"scan/{i}.dcm"} for i in range(n)]


@pytest.fixture
def lite_source(tmp_path: Path) -> tuple[str, list[dict]]:
    """A Lite file with one cbmir collection of ROWS rows and its HOG re-ranking companion."""
    uri = str(tmp_path / "source.db")
    store = MilvusStore(uri)
    store.ensure_collection("images", _identity(), DIM, choose_index("HNSW", "COSINE", expected_rows=ROWS))
    rows = _rows(ROWS)
    store.upsert("images", rows)
    store.ensure_descriptor_collection("images", "hog", HOG_DIM)
    ids = [r["id"] for r in rows[:40]]
    store.upsert_descriptors("images", "hog", ids, np.arange(40 * HOG_DIM, dtype=np.float32).reshape(40, HOG_DIM))
    store.flush("images")
    return uri, rows


def _assert_every_row_arrived(target: MilvusStore, rows: list[dict]) -> None:
    stored = target.get_rows("images", [r["id"] for r in rows], with_vectors=True)
    assert set(stored) == {r["id"] for r in rows}
    for row in rows:
        got = stored[row["id"]]
        np.testing.assert_array_equal(np.asarray(got["embedding"], dtype=np.float32),
                                      np.asarray(row["embedding"], dtype=np.float32))
        assert (got["label"], got["modality"], got["source"]) == (row["label"], row["modality"], row["source"])


def test_lite_collection_arrives_whole_and_rerun_adds_nothing(lite_source: tuple[str, list[dict]],
                                                              milvus_uri: str) -> None:
    """`milvus_uri` is a fresh Lite file or the real session server (tests/store/conftest.py)."""
    source_uri, rows = lite_source
    source, target = open_store(source_uri, must_exist=True), open_store(milvus_uri)

    report = migrate(source, target, "images", batch_rows=100, progress=False)

    assert report.complete
    main, hog = report.collections
    assert (main.name, main.source_rows, main.copied, main.target_rows_after) == ("images", ROWS, ROWS, ROWS)
    assert (hog.name, hog.copied) == ("images__hog", 40)
    _assert_every_row_arrived(target, rows)
    # what the service needs to search it: same model, same index, and the partition key still filters
    assert json.loads(target.model_identity_json("images")) == json.loads(_identity())
    info = target.describe("images")
    assert (info.dim, info.index_type, info.metric) == (DIM, "HNSW", "COSINE")
    assert info.index_params["search"] == source.describe("images").index_params["search"]
    hits = target.search("images", np.asarray([rows[4]["embedding"]]), 5, filters={"label": "class1"})[0]
    assert hits[0].id == rows[4]["id"] and all(h.fields["label"] == "class1" for h in hits)
    np.testing.assert_array_equal(target.get_descriptors("images", "hog", [rows[3]["id"]])[rows[3]["id"]],
                                  np.arange(3 * HOG_DIM, 4 * HOG_DIM, dtype=np.float32))

    again = migrate(source, target, "images", batch_rows=100, progress=False)

    assert again.complete and [c.copied for c in again.collections] == [0, 0]
    assert again.collections[0].skipped_present == ROWS
    assert target.count("images") == ROWS
    target.close()


def test_interrupted_migration_resumes_with_only_the_missing_rows(lite_source: tuple[str, list[dict]],
                                                                  tmp_path: Path) -> None:
    source_uri, rows = lite_source
    source, target = open_store(source_uri), open_store(str(tmp_path / "target.db"))
    migrate(source, target, "images", companions=False, progress=False)
    lost = [r["id"] for r in rows[100:160]]  # as if the first run had stopped before these
    target.client.delete("images", ids=lost)
    assert target.count("images") == ROWS - len(lost)

    resumed = migrate(source, target, "images", companions=False, progress=False)

    only = resumed.collections[0]
    assert (only.copied, only.skipped_present, only.missing_after) == (len(lost), ROWS - len(lost), 0)
    _assert_every_row_arrived(target, rows)


def test_missing_source_collection_or_file_is_refused_with_what_exists(lite_source: tuple[str, list[dict]],
                                                                      tmp_path: Path) -> None:
    source_uri, _ = lite_source
    target = open_store(str(tmp_path / "target.db"))
    with pytest.raises(CollectionNotFoundError, match=r"'nope' not found .*existing: images"):
        migrate(open_store(source_uri), target, "nope", progress=False)
    with pytest.raises(MigrationError, match="no Milvus Lite file"):
        open_store(str(tmp_path / "absent.db"), must_exist=True)
    assert not (tmp_path / "absent.db").exists()
    with pytest.raises(MigrationError, match="same store"):
        migrate(open_store(source_uri), open_store(source_uri), "images", progress=False)


def test_target_collection_of_another_dim_is_refused(lite_source: tuple[str, list[dict]], tmp_path: Path) -> None:
    source_uri, _ = lite_source
    target = open_store(str(tmp_path / "target.db"))
    target.ensure_collection("images", _identity(32), 32, choose_index("HNSW", "COSINE"))
    with pytest.raises(MigrationError, match="dim 32, the source's has dim 16"):
        migrate(open_store(source_uri), target, "images", progress=False)
    assert target.count("images") == 0


def test_cli_migrates_to_a_server_and_says_it_verified(lite_source: tuple[str, list[dict]],
                                                       milvus_server: MilvusServer, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from cbmir.cli import main

    source_uri, rows = lite_source
    target = MilvusStore(milvus_server.uri)
    for name in target.list_collections():
        target.drop_collection(name)
    report_path = tmp_path / "migrate.json"

    code = main(["migrate", "--from", source_uri, "--to", milvus_server.uri, "--collection", "images",
                 "--no-progress", "--report", str(report_path)])

    assert code == 0
    out = capsys.readouterr().out
    assert f"verified: all {ROWS} source ids are in the target" in out
    assert f"cbmir serve --milvus-uri {milvus_server.uri}" in out
    assert json.loads(report_path.read_text())["complete"] is True
    assert target.count("images") == ROWS
    target.close()


def test_listing_a_lite_collection_logs_no_timestamp_warning(lite_source: tuple[str, list[dict]],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    uri, rows = lite_source
    store = MilvusStore(uri)
    with caplog.at_level(logging.INFO):
        assert set(store.iter_ids("images")) == {r["id"] for r in rows}
    # pymilvus's iterator on Lite warns "failed to get mvccTs" on every listing; the store filters that out
    assert not [r for r in caplog.records if "mvccTs" in r.getMessage()]
    store.close()
