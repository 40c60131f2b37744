"""`cbmir eval` flags: presets, the configuration grid, and the report-only mode."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cbmir.bench.quality.commands import configs, dataset_spec
from cbmir.bench.quality.config import EvalConfig, collection_name
from cbmir.cli import build_parser
from cbmir.services.query.soft_prefilter import SOFT_SIMILARITY_WEIGHT


def _args(*argv: str):  # noqa: ANN202
    return build_parser().parse_args(["eval", *argv])


def test_mias_preset_is_leave_one_patient_out_on_tissue_and_runs_every_metric_index_pair() -> None:
    args = _args("mias-tissue", "--metric", "COSINE", "L2", "--index", "HNSW", "FLAT")
    spec = dataset_spec(args)
    assert (spec.protocol, spec.label_column, spec.group_column, spec.index_split) == \
        ("leave-one-patient-out", "tissue", "patient_id", None)
    grid = configs(args)
    assert [(c.metric, c.index) for c in grid] == [("COSINE", "HNSW"), ("COSINE", "FLAT"), ("L2", "HNSW"),
                                                   ("L2", "FLAT")]
    assert {c.name() for c in grid} == {"efficientnet_lite0-imagenet-cosine-hnsw",
                                        "efficientnet_lite0-imagenet-cosine-flat",
                                        "efficientnet_lite0-imagenet-l2-hnsw", "efficientnet_lite0-imagenet-l2-flat"}


def test_hog_backbone_is_one_brute_force_configuration() -> None:
    grid = configs(_args("brain-mri", "--backbone", "hog", "--metric", "COSINE", "L2"))
    assert len(grid) == 1 and grid[0].method_label() == "S4 HOG" and grid[0].name() == "hog-l1-bruteforce"


def test_rerank_and_prefilter_name_their_configuration() -> None:
    config = EvalConfig(weights="runs/a/best.pt", prefilter="predicted", rerank="hog", k_prep=20)
    assert config.name("a-1234abcd").endswith("-prefilter-predicted-rerank-hog-k20")
    with pytest.raises(ValueError, match="prefilter"):
        EvalConfig(prefilter="sometimes")
    k_reciprocal = EvalConfig(rerank="kreciprocal", k_prep=50)
    assert k_reciprocal.method_label() == "S1 +k-reciprocal50"
    assert k_reciprocal.name().endswith("-rerank-kreciprocal-k50")
    assert EvalConfig(weights="runs/a/best.pt", loss="ce", rerank="kreciprocal", k_prep=50).method_label() == \
        "S3 +k-reciprocal50"
    with pytest.raises(ValueError, match="kreciprocal"):
        EvalConfig(rerank="sift")


def test_soft_prefilter_and_query_expansion_are_configurations_of_their_own() -> None:
    grid = configs(_args("brain-mri", "--weights", "runs/a/best.pt", "--index", "FLAT", "--prefilter", "predicted",
                         "soft", "--query-expansion", "0", "5"))
    assert [(c.prefilter, c.query_expansion) for c in grid] == [("predicted", 0), ("predicted", 5), ("soft", 0),
                                                                ("soft", 5)]
    soft_qe = replace(grid[3], loss="ce")
    assert soft_qe.soft_weight == SOFT_SIMILARITY_WEIGHT  # the default, named: a record says what it ran with
    assert soft_qe.name("a-1234abcd").endswith(f"-prefilter-soft-w{SOFT_SIMILARITY_WEIGHT:g}-qe5")
    assert soft_qe.method_label() == "S3 +soft prefilter +αQE5"
    assert EvalConfig(query_expansion=3).method_label() == "S1 +αQE3"
    with pytest.raises(ValueError, match="query_expansion"):
        EvalConfig(query_expansion=-1)
    swept = configs(_args("brain-mri", "--weights", "runs/a/best.pt", "--prefilter", "off", "soft",
                          "--soft-weight", "0.5", "1", "--index", "FLAT"))
    assert [(c.prefilter, c.soft_weight) for c in swept] == [("off", None), ("soft", 0.5), ("soft", 1.0)]
    assert swept[1].name("a").endswith("-prefilter-soft-w0.5")
    with pytest.raises(ValueError, match="soft_weight"):
        EvalConfig(soft_weight=0.5)


def test_a_trained_model_is_scored_with_the_recipe_s_soft_prefilter_by_default() -> None:
    trained = configs(_args("brain-mri", "--weights", "runs/a/best.pt", "--index", "FLAT"))
    assert [(c.prefilter, c.soft_weight) for c in trained] == [("off", None), ("soft", SOFT_SIMILARITY_WEIGHT)]
    imagenet = configs(_args("brain-mri", "--index", "FLAT"))
    assert [c.prefilter for c in imagenet] == ["off"]
    assert [c.prefilter for c in configs(_args("brain-mri", "--weights", "w.pt", "--prefilter", "predicted"))] == \
        ["predicted", "predicted"]  # HNSW and FLAT


def test_medmnist_presets_index_the_train_split_of_the_shared_sets() -> None:
    for name in ("breastmnist", "pneumoniamnist"):
        spec = dataset_spec(_args(name))
        assert (spec.protocol, spec.index_split, spec.query_split) == ("split", "train", "test")
        assert spec.source.endswith(f"medmnist/{name}.npz")


def test_collection_names_separate_label_columns_and_metrics() -> None:
    tissue = collection_name("mias-tissue", "tissue", None, "abc123", "COSINE", "HNSW")
    severity = collection_name("mias-severity", "severity", None, "abc123", "COSINE", "HNSW")
    assert tissue == "q_mias_tissue_tissue_all_abc123_cosine_hnsw" and tissue != severity


def test_unknown_dataset_says_what_to_pass() -> None:
    with pytest.raises(SystemExit, match="preset"):
        dataset_spec(_args("no-such-dataset"))
