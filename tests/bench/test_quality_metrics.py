"""Ranking metrics and bootstrap intervals against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cbmir.bench.quality.stats import bootstrap_mean
from cbmir.services import ranking_metrics as metrics

# One query: hits 1 and 3 relevant, 3 relevant images in the index.
REL = np.array([[1, 0, 1, 0, 0]])
N_REL = [3]


def test_precision_at_k_counts_missing_hits_as_not_relevant() -> None:
    assert metrics.precision_at_k(REL, 1)[0] == 1.0
    assert metrics.precision_at_k(REL, 3)[0] == pytest.approx(2 / 3)
    assert metrics.precision_at_k(REL, 5)[0] == pytest.approx(2 / 5)
    assert metrics.precision_at_k(REL, 10)[0] == pytest.approx(2 / 10)  # only 5 hits came back


def test_recall_at_k_divides_by_relevant_images_in_the_index() -> None:
    assert metrics.recall_at_k(REL, 1, N_REL)[0] == pytest.approx(1 / 3)
    assert metrics.recall_at_k(REL, 5, N_REL)[0] == pytest.approx(2 / 3)
    assert math.isnan(metrics.recall_at_k(REL, 5, [0])[0])


def test_ndcg_at_k_uses_the_ideal_list_of_min_k_and_relevant_count() -> None:
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    ideal = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert metrics.ndcg_at_k(REL, 3, N_REL)[0] == pytest.approx(dcg / ideal)  # 0.7039
    # Only one relevant image exists and it is ranked first: perfect.
    assert metrics.ndcg_at_k(np.array([[1, 0, 0]]), 3, [1])[0] == pytest.approx(1.0)
    assert metrics.ndcg_at_k(np.array([[0, 1, 0]]), 3, [1])[0] == pytest.approx(1 / math.log2(3))


def test_seed003_average_precision_is_the_mean_of_precision_at_1_to_kmax() -> None:
    # P@1..5 = 1, 1/2, 2/3, 2/4, 2/5
    assert metrics.seed003_average_precision(REL, 5)[0] == pytest.approx((1 + 1 / 2 + 2 / 3 + 2 / 4 + 2 / 5) / 5)
    # k_max = 10 over 5 hits: P@6..10 = 2/6 … 2/10
    expected = (1 + 1 / 2 + 2 / 3 + 2 / 4 + 2 / 5 + 2 / 6 + 2 / 7 + 2 / 8 + 2 / 9 + 2 / 10) / 10
    assert metrics.seed003_average_precision(REL)[0] == pytest.approx(expected)  # 0.4358
    assert metrics.seed003_average_precision(np.ones((1, 10)))[0] == 1.0
    # Not the textbook AP: one relevant hit at rank 1 of 10 still scores the mean of 1, 1/2, …, 1/10.
    first_only = np.zeros((1, 10))
    first_only[0, 0] = 1
    assert metrics.seed003_average_precision(first_only)[0] == pytest.approx(np.mean(1 / np.arange(1, 11)))


def test_average_precision_over_the_full_ranking() -> None:
    assert metrics.average_precision(REL, N_REL)[0] == pytest.approx((1 + 2 / 3) / 3)
    assert metrics.average_precision(np.array([[1, 1, 0]]), [2])[0] == pytest.approx(1.0)
    assert metrics.average_precision(np.array([[0, 0, 0]]), [2])[0] == 0.0


def test_interpolated_pr_curve_takes_the_best_precision_at_or_beyond_each_recall() -> None:
    curve = metrics.interpolated_pr_curve(np.array([[1, 0, 1]]), [2], np.array([0.0, 0.5, 0.75, 1.0]))
    assert curve[0].tolist() == pytest.approx([1.0, 1.0, 2 / 3, 2 / 3])
    never = metrics.interpolated_pr_curve(np.array([[1, 0, 0]]), [4], np.array([0.25, 0.5]))
    assert never[0].tolist() == [1.0, 0.0]  # recall 0.5 is never reached


def test_metrics_score_each_query_row_separately() -> None:
    rel = np.array([[1, 1], [0, 0]])
    assert metrics.precision_at_k(rel, 2).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="entries"):
        metrics.recall_at_k(rel, 2, [1])


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_queries() -> None:
    rng = np.random.default_rng(0)
    small = bootstrap_mean(rng.random(50), seed=1)
    large = bootstrap_mean(rng.random(5000), seed=1)
    for estimate in (small, large):
        assert estimate.low <= estimate.mean <= estimate.high
    assert (large.high - large.low) < (small.high - small.low) / 4  # ~ 1/sqrt(100)
    constant = bootstrap_mean(np.full(20, 0.7))
    assert (constant.low, constant.mean, constant.high) == pytest.approx((0.7, 0.7, 0.7))


def test_bootstrap_is_seeded_and_skips_nan_queries() -> None:
    values = np.array([0.1, 0.9, np.nan, 0.5, 0.4])
    assert bootstrap_mean(values, seed=3) == bootstrap_mean(values, seed=3)
    assert bootstrap_mean(values).n == 4
    assert bootstrap_mean(values).mean == pytest.approx(np.mean([0.1, 0.9, 0.5, 0.4]))


def test_bootstrap_by_patient_is_wider_when_a_patients_queries_agree() -> None:
    rng = np.random.default_rng(4)
    per_patient = rng.random(100)
    values = np.repeat(per_patient, 2)  # two images per patient, scored alike
    groups = np.repeat(np.arange(100), 2)
    naive = bootstrap_mean(values, seed=5)
    grouped = bootstrap_mean(values, groups, seed=5)
    assert grouped.mean == pytest.approx(naive.mean)
    assert (grouped.high - grouped.low) > 1.2 * (naive.high - naive.low)  # ~ sqrt(2) wider
