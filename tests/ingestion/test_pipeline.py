"""End to end on real Ray and real Milvus Lite: rows stored, reruns idempotent, bad files reported, not fatal."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cbmir.ingestion import IngestConfig, IngestReport, run_ingestion
from cbmir.services.embedding import WeightsError, decode_image, image_id
from cbmir.services.embedding.id_salt import read_default_salt
from cbmir.services.store import MilvusStore, ModelMismatchError

LIMIT = 60  # keeps a run at a few seconds on 2 CPUs


@dataclass
class Run:
    config: IngestConfig
    report: IngestReport
    written: dict[str, object] | None = None  # the JSON report as read back from report_path


def _config(source: Path, db: Path, **overrides: object) -> IngestConfig:
    options: dict[str, object] = {"actors": 2, "batch_size": 16, "progress": False,
                                  "report_path": str(db.with_suffix(".json"))}
    options.update(overrides)
    return IngestConfig(source=str(source), milvus_uri=str(db), **options)  # type: ignore[arg-type]


def _manifest_rows(archive: Path) -> list[dict[str, str]]:
    with open(archive / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _count(config: IngestConfig) -> int:
    store = MilvusStore(config.milvus_uri)
    try:
        return store.count(config.collection)
    finally:
        store.close()


def _stored(config: IngestConfig) -> dict[str, tuple[str, str, str]]:
    """Every stored row of the collection: id -> (source, label, dataset)."""
    store = MilvusStore(config.milvus_uri)
    try:
        ids = list(store.iter_ids(config.collection))
        rows = store.get_rows(config.collection, ids, with_vectors=False)
    finally:
        store.close()
    return {key: (row["source"], row["label"], row["dataset"]) for key, row in rows.items()}


def _check_totals(report: IngestReport) -> None:
    assert report.read == report.ingested + report.skipped_present + report.duplicates_in_run + report.failed


@pytest.fixture(scope="module")
def breastmnist_runs(ray_local: None, breastmnist_png_archive: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    """The PNG archive ingested twice into one fresh collection."""
    config = _config(breastmnist_png_archive, tmp_path_factory.mktemp("milvus") / "breast.db", limit=LIMIT)
    first = Run(config, run_ingestion(config))
    first.written = json.loads(Path(config.report_path or "").read_text())
    second = Run(config, run_ingestion(config))
    return first, second


def test_ingest_stores_one_row_per_distinct_image(breastmnist_runs: tuple[Run, Run],
                                                  breastmnist_png_archive: Path) -> None:
    first, _ = breastmnist_runs
    rows = _manifest_rows(breastmnist_png_archive)[:LIMIT]
    salt = read_default_salt()  # no --id-salt: ingest keyed the ids with the deployment's salt
    distinct = {image_id(decode_image((breastmnist_png_archive / r["image"]).read_bytes()).content_key, salt)
                for r in rows}

    assert first.report.read == LIMIT
    assert first.report.failed == 0
    assert first.report.ingested == len(distinct)
    assert first.report.row_count_after == len(distinct)
    _check_totals(first.report)


def test_ingested_rows_carry_their_manifest_labels_and_source(breastmnist_runs: tuple[Run, Run],
                                                              breastmnist_png_archive: Path) -> None:
    first, _ = breastmnist_runs
    rows = _manifest_rows(breastmnist_png_archive)[:LIMIT]
    salt = read_default_salt()
    ids = {image_id(decode_image((breastmnist_png_archive / r["image"]).read_bytes()).content_key, salt): r
           for r in rows}
    store = MilvusStore(first.config.milvus_uri)
    try:
        stored = store.get_rows(first.config.collection, list(ids), with_vectors=True)
    finally:
        store.close()

    assert set(stored) == set(ids)
    for key, row in stored.items():
        assert row["label"] == ids[key]["label"]
        assert row["dataset"] == breastmnist_png_archive.name
        assert row["model_id"] == first.report.model_id
        assert len(row["embedding"]) == 1280
    sources = {row["source"] for row in stored.values()}
    assert sources <= {r["image"] for r in rows}


def test_reingest_same_archive_adds_no_rows(breastmnist_runs: tuple[Run, Run]) -> None:
    first, second = breastmnist_runs

    assert second.report.ingested == 0
    assert second.report.skipped_present == first.report.ingested
    assert second.report.row_count_after == first.report.row_count_after
    _check_totals(second.report)


def test_small_listing_chunks_store_the_same_rows_and_a_rerun_adds_none(breastmnist_runs: tuple[Run, Run],
                                                                        tmp_path: Path) -> None:
    first, _ = breastmnist_runs
    # 7 items per chunk: 9 Ray blocks that do not line up with the batches of 16. One actor: half the start-up.
    config = replace(first.config, milvus_uri=str(tmp_path / "chunked.db"), listing_chunk=7, actors=1,
                     report_path=None)

    chunked = run_ingestion(config)
    again = run_ingestion(config)

    assert _stored(config) == _stored(first.config)
    assert (chunked.read, chunked.ingested, chunked.failed) == (LIMIT, first.report.ingested, 0)
    assert again.ingested == 0
    assert again.skipped_present == chunked.ingested
    assert again.row_count_after == chunked.row_count_after
    _check_totals(chunked)
    _check_totals(again)


def test_report_json_is_written_with_counts_and_stage_timings(breastmnist_runs: tuple[Run, Run]) -> None:
    first, _ = breastmnist_runs
    written = first.written
    assert written is not None

    assert written["ingested"] == first.report.ingested
    assert written["collection"] == first.config.collection
    assert written["stage_seconds"] == first.report.stage_seconds
    assert set(first.report.stage_seconds) == {"decode", "embed", "write"}
    assert first.report.stage_seconds["embed"] > 0
    assert first.report.images_per_second > 0
    assert "ingested" in first.report.summary()


@pytest.fixture(scope="module")
def messy_run(ray_local: None, breastmnist_png_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A folder-per-class archive with a truncated PNG, random bytes named .jpg and one picture twice."""
    root = tmp_path_factory.mktemp("messy")
    pngs = sorted((breastmnist_png_archive / "images").glob("*.png"))[:8]
    for i, png in enumerate(pngs):
        folder = root / ["benign", "malignant"][i % 2]
        folder.mkdir(exist_ok=True)
        shutil.copy(png, folder / png.name)
    shutil.copy(pngs[0], root / "benign" / "copy_of_first.png")
    (root / "malignant" / "truncated.png").write_bytes(pngs[1].read_bytes()[:70])
    (root / "malignant" / "noise.jpg").write_bytes(bytes(range(256)) * 8)
    # Chunks of 3: the failures and the duplicate pair fall in different Ray blocks and must still be counted.
    config = _config(root, tmp_path_factory.mktemp("milvus") / "messy.db", report_path=None, listing_chunk=3)
    return Run(config, run_ingestion(config))


def test_corrupt_files_are_reported_with_reasons_and_the_rest_ingested(messy_run: Run) -> None:
    report = messy_run.report
    failures = {f["source"]: f["reason"] for f in report.failures}

    assert set(failures) == {"malignant/truncated.png", "malignant/noise.jpg"}
    assert all(failures.values())
    assert report.ingested == 8
    assert _count(messy_run.config) == 8
    _check_totals(report)


def test_identical_pictures_in_one_archive_become_one_row(messy_run: Run) -> None:
    report = messy_run.report

    assert report.duplicates_in_run == 1
    pair = {report.duplicates[0]["source"], report.duplicates[0]["duplicate_of"]}
    assert "benign/copy_of_first.png" in pair


def test_dicom_archive_ingests_decodable_files_and_reports_the_rest(ray_local: None, dicom_archive: Path,
                                                                   tmp_path: Path) -> None:
    config = _config(dicom_archive, tmp_path / "dicom.db", batch_size=32)

    report = run_ingestion(config)

    assert report.ingested > 0
    assert report.failed > 0
    assert all(f["reason"] for f in report.failures)
    assert report.row_count_after == report.ingested
    _check_totals(report)
    store = MilvusStore(config.milvus_uri)
    try:
        ids = list(store.iter_ids(config.collection))
        labels = {row["label"] for row in store.get_rows(config.collection, ids, with_vectors=False).values()}
        modalities = {row["modality"] for row in store.get_rows(config.collection, ids, with_vectors=False).values()}
    finally:
        store.close()
    assert {"MR", "CT"} <= labels
    assert {"MR", "CT"} <= modalities


def test_rerun_after_a_partial_run_ingests_only_the_rest(ray_local: None, breastmnist_png_archive: Path,
                                                        tmp_path: Path) -> None:
    db = tmp_path / "resume.db"
    partial = run_ingestion(_config(breastmnist_png_archive, db, limit=10, actors=1, report_path=None))

    rest = run_ingestion(_config(breastmnist_png_archive, db, limit=30, actors=1, report_path=None))

    assert rest.skipped_present == partial.ingested
    assert rest.ingested == 30 - partial.ingested - rest.duplicates_in_run
    assert rest.row_count_after == partial.ingested + rest.ingested


def test_collection_of_another_model_is_refused(breastmnist_runs: tuple[Run, Run]) -> None:
    first, _ = breastmnist_runs
    other_model = replace(first.config, random_init=True, report_path=None)

    with pytest.raises(ModelMismatchError, match="weights_sha256: collection [0-9a-f]{12}, this model random-init-; "
                                                 "use the collection's model, or another --collection"):
        run_ingestion(other_model)
    assert _count(first.config) == first.report.row_count_after


def test_missing_weights_file_fails_with_the_model_loaders_message(ray_local: None, breastmnist_png_archive: Path,
                                                                   tmp_path: Path) -> None:
    config = _config(breastmnist_png_archive, tmp_path / "w.db", limit=4, weights=str(tmp_path / "none.pt"),
                     backbone="resnet18", report_path=None)

    with pytest.raises(WeightsError, match="weights file not found"):
        run_ingestion(config)


def test_ingest_past_the_lite_serving_limit_warns_with_the_way_to_a_server(
        ray_local: None, breastmnist_png_archive: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.WARNING)
    config = _config(breastmnist_png_archive, tmp_path / "small.db", limit=6, lite_max_serving_rows=3)
    report = run_ingestion(config)
    warnings = [r for r in caplog.records if r.name.endswith("lite_limit")]
    assert len(warnings) == 1 and warnings[0].rows == report.row_count_after > 3
    assert "cbmir migrate --from" in warnings[0].getMessage()


def test_cbmir_ingest_prints_its_summary_once(ray_local: None, breastmnist_png_archive: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from cbmir.cli import main

    code = main(["ingest", str(breastmnist_png_archive), "--milvus-uri", str(tmp_path / "cbmir.db"), "--split",
                 "train", "--limit", "8", "--actors", "1", "--no-progress", "--report", str(tmp_path / "r.json")])
    captured = capsys.readouterr()
    assert code == 0
    assert (captured.out + captured.err).count("ingested 8 of 8 images read") == 1, captured.out + captured.err
