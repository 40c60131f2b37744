"""Ids are salted by default: the per-deployment salt file, its reuse, legacy unsalted collections, mismatches."""

from __future__ import annotations

import csv
import logging
import stat
from pathlib import Path

import pytest

from cbmir.ingestion import IngestConfig, run_ingestion
from cbmir.services.embedding import EmbeddingModel, decode_image, id_salt_digest, image_id
from cbmir.services.embedding.id_salt import (
    IdSaltError,
    default_salt_path,
    read_default_salt,
    resolve_id_salt,
)
from cbmir.services.store import MilvusStore, choose_index

LIMIT = 6


def _config(archive: Path, uri: str, collection: str, **extra) -> IngestConfig:
    return IngestConfig(source=str(archive), milvus_uri=uri, collection=collection, actors=1, batch_size=8,
                        split="train", limit=LIMIT, progress=False, report_path=None, **extra)


def _keys(archive: Path) -> list[str]:
    with open(archive / "labels.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "train"][:LIMIT]
    return [decode_image((archive / r["image"]).read_bytes()).content_key for r in rows]


def _stored(uri: str, collection: str) -> tuple[set[str], str]:
    store = MilvusStore(uri)
    try:
        return set(store.iter_ids(collection)), store.id_salt_digest(collection)
    finally:
        store.close()


def test_first_use_creates_a_private_salt_and_later_uses_read_it(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBMIR_HOME", str(tmp_path / "home"))
    path = default_salt_path()
    assert path == tmp_path / "home" / "id-salt" and not path.exists()

    salt = read_default_salt()

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(salt) == 64 and int(salt, 16) >= 0  # secrets.token_hex(32)
    assert read_default_salt() == salt == resolve_id_salt("", None, "new")  # never overwritten
    assert [p.name for p in path.parent.iterdir()] == ["id-salt"]  # no temporary file left behind
    assert resolve_id_salt("explicit", "", "legacy") == "explicit"  # an explicit salt is the store's to check


def test_a_salted_collection_refuses_another_default_salt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBMIR_HOME", str(tmp_path / "a"))
    digest = id_salt_digest(read_default_salt())
    assert resolve_id_salt("", digest, "c") == read_default_salt()

    monkeypatch.setenv("CBMIR_HOME", str(tmp_path / "missing"))
    with pytest.raises(IdSaltError, match="--id-salt-file"):
        resolve_id_salt("", digest, "c")
    assert not default_salt_path().exists()  # a salted collection never gets a fresh salt made up for it

    monkeypatch.setenv("CBMIR_HOME", str(tmp_path / "b"))
    read_default_salt()
    with pytest.raises(IdSaltError, match=f"salt digest {digest}.*--id-salt-file"):
        resolve_id_salt("", digest, "c")


def test_ingest_salts_ids_by_default_and_a_rerun_reuses_the_salt(
        ray_local: None, breastmnist_png_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBMIR_HOME", str(tmp_path / "home"))
    uri = str(tmp_path / "salted.db")

    first = run_ingestion(_config(breastmnist_png_archive, uri, "salted"))

    salt_file = tmp_path / "home" / "id-salt"
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    salt = read_default_salt()
    expected = {image_id(key, salt) for key in _keys(breastmnist_png_archive)}
    ids, digest = _stored(uri, "salted")
    assert ids == expected and first.ingested == len(expected)
    assert digest == id_salt_digest(salt) != ""
    assert not ids & {image_id(key) for key in _keys(breastmnist_png_archive)}  # nothing recomputable from a UID

    second = run_ingestion(_config(breastmnist_png_archive, uri, "salted"))

    assert read_default_salt() == salt
    assert (second.ingested, second.skipped_present) == (0, LIMIT)
    assert _stored(uri, "salted") == (expected, digest)  # same ids, no duplicates

    monkeypatch.setenv("CBMIR_HOME", str(tmp_path / "another-deployment"))
    read_default_salt()
    with pytest.raises(IdSaltError, match="--id-salt-file"):
        run_ingestion(_config(breastmnist_png_archive, uri, "salted"))
    assert _stored(uri, "salted") == (expected, digest)


def test_a_legacy_unsalted_collection_keeps_unsalted_ids_with_a_warning(
        ray_local: None, breastmnist_png_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CBMIR_HOME", str(tmp_path / "home"))
    uri = str(tmp_path / "legacy.db")
    model = EmbeddingModel.load("efficientnet_lite0")
    store = MilvusStore(uri)
    try:  # what cbmir before salted ids created: no cbmir.id_salt_digest property
        store.ensure_collection("legacy", model.identity.to_json(), model.dim, choose_index("HNSW", "COSINE"))
    finally:
        store.close()

    with caplog.at_level(logging.WARNING, logger="cbmir.services.embedding.id_salt"):
        report = run_ingestion(_config(breastmnist_png_archive, uri, "legacy"))

    ids, digest = _stored(uri, "legacy")
    assert ids == {image_id(key) for key in _keys(breastmnist_png_archive)} and report.ingested == len(ids)
    assert digest == ""
    warnings = [r.getMessage() for r in caplog.records if "unsalted" in r.getMessage()]
    assert len(warnings) == 1 and "docs/migration.md" in warnings[0]
    assert not default_salt_path().exists()  # a legacy collection needs no salt
