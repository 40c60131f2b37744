"""`cbmir eval` end to end on the shipped BreastMNIST subset: real Ray ingestion, real Milvus Lite, the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cbmir.bench.quality.config import EvalConfig
from cbmir.bench.quality.datasets import LEAVE_ONE_PATIENT_OUT, PRESETS, DatasetSpec
from cbmir.bench.quality.report import write_report
from cbmir.bench.quality.runner import run_eval

PNGS = {"precision_recall_vs_k.png", "pr_curve.png", "embedding_pca.png", "embedding_tsne.png"}


@pytest.fixture(scope="module")
def patient_archive(tmp_path_factory: pytest.TempPathFactory, patient_archive_writer) -> Path:
    """24 BreastMNIST images as PNGs, two per 'patient', with a MIAS-like manifest (image, patient_id, tissue)."""
    return patient_archive_writer(tmp_path_factory.mktemp("patients"),
                                 lambda i, labels: f"class{int(labels[i])}")


def test_split_eval_on_breastmnist_writes_record_pngs_and_report(ray_local: None, milvus_uri: str,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "results"
    record = run_eval(PRESETS["breastmnist-subset"], EvalConfig(metric="COSINE", index="FLAT"), out_root=out,
                      milvus_uri=milvus_uri, ks=[1, 5, 10, 20], resamples=200, actors=1, progress=False)
    directory = out / "breastmnist-subset" / "efficientnet_lite0-imagenet-cosine-flat"
    on_disk = json.loads((directory / "record.json").read_text())
    assert on_disk["queries"] == 40 and on_disk["index_size"] == 120
    assert {p.name for p in directory.glob("*.png")} == PNGS
    assert on_disk["model"]["model_id"] == record["model"]["model_id"]
    assert on_disk["collection"].startswith("q_breastmnist_subset_label_train_")
    for name in ("P@1", "P@10", "R@10", "NDCG@10", "mAP@10", "mAP"):
        figure = on_disk["figures"][name]
        assert figure["ci_low"] <= figure["mean"] <= figure["ci_high"]
        assert 0.0 <= figure["mean"] <= 1.0
    assert on_disk["figures"]["R@20"]["mean"] > on_disk["figures"]["R@10"]["mean"]
    assert on_disk["index_recall_at_10_vs_exact"] == pytest.approx(1.0)  # FLAT is exact
    assert set(on_disk["per_class"]) == {"0", "1"}
    assert on_disk["search"]["depths"] == [10, 20, 120]
    docs = write_report(out, tmp_path / "quality.md")
    text = docs.read_text()
    assert "efficientnet_lite0-imagenet-cosine-flat" in text and "mAP@10" in text


def test_leave_one_patient_out_eval_never_returns_the_querys_patient(ray_local: None, milvus_uri: str,
                                                                     tmp_path: Path, patient_archive: Path) -> None:
    spec = DatasetSpec("patients", str(patient_archive), "tissue", LEAVE_ONE_PATIENT_OUT, None, None, "patient_id")
    patient = {f"images/img{i:02d}.png": i // 2 for i in range(24)}
    for config in (EvalConfig(metric="L2", index="HNSW"),
                   EvalConfig(metric="L2", index="HNSW", rerank="hog", k_prep=10)):  # same collection, re-used
        record = run_eval(spec, config, out_root=tmp_path, milvus_uri=milvus_uri, ks=[1, 5, 10], resamples=200,
                          actors=1, progress=False, tsne=False)
        assert record["queries"] == 24 and record["bootstrap"]["unit"] == "patient"
        per_query = record["per_query"]
        for query, sources in zip(per_query["query"], per_query["top10_sources"], strict=True):
            assert len(sources) == 10
            assert all(patient[s] != patient[query] for s in sources)
        assert record["figures"]["R@10"]["mean"] > 0
    assert record["search"]["mode"] == "id" and record["method"] == "S4 CNN+HOG"


def test_unlabelled_images_are_indexed_but_never_queries_nor_relevant(ray_local: None, tmp_path: Path,
                                                                        patient_archive_writer) -> None:
    # A public manifest with empty cells and "?" in its label column: those were scored as two more classes.
    def label(i: int, labels) -> str:  # noqa: ANN001 - the writer's numpy labels
        return {0: "?", 1: "", 2: "Unknown"}.get(i % 6, f"class{int(labels[i])}")

    archive = patient_archive_writer(tmp_path / "archive", label)
    spec = DatasetSpec("unlabelled", str(archive), "tissue", LEAVE_ONE_PATIENT_OUT, None, None, "patient_id")
    record = run_eval(spec, EvalConfig(metric="COSINE", index="FLAT"), out_root=tmp_path / "out",
                      milvus_uri=str(tmp_path / "q.db"), ks=[1, 5, 10], resamples=100, actors=1, progress=False,
                      tsne=False)
    assert record["index_size"] == 24  # every image is indexed
    assert record["queries"] == 12 and record["unlabelled"]["queries_skipped"] == 12
    assert record["unlabelled"]["index_images"] == 12
    assert set(record["class_counts"]["queries"]) <= {"class0", "class1"}
    assert set(record["per_class"]) <= {"class0", "class1"}
