"""Exact ground truth and recall@k on hand-made cases where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from cbmir.bench.ground_truth import exact_top_k, exact_top_k_filtered, recall_at_k
from cbmir.bench.vectors import cnn_like, normalize, uniform, vector_statistics


def test_exact_top_k_orders_by_cosine_on_a_hand_made_set() -> None:
    base = normalize(np.array([[1, 0], [0, 1], [1, 1], [-1, 0], [1, 0.1]], dtype=np.float32))
    query = normalize(np.array([[1, 0.05]], dtype=np.float32))
    # cos to query: [1,0.1] ~0.9988, [1,0] ~0.9988 (tie broken by faiss), [1,1] 0.74, [0,1] 0.05, [-1,0] -1
    top = exact_top_k(base, query, 5)[0].tolist()
    assert set(top[:2]) == {0, 4}
    assert top[2:] == [2, 1, 3]


def test_exact_top_k_matches_numpy_brute_force() -> None:
    rng = np.random.default_rng(1)
    base, queries = normalize(rng.standard_normal((500, 24))), normalize(rng.standard_normal((30, 24)))
    expected = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    assert (exact_top_k(base, queries, 10) == expected).all()


def test_filtered_ground_truth_only_returns_rows_of_the_query_label() -> None:
    rng = np.random.default_rng(2)
    base, labels = normalize(rng.standard_normal((300, 8))), rng.integers(0, 3, 300)
    queries, query_labels = normalize(rng.standard_normal((20, 8))), rng.integers(0, 3, 20)
    truth = exact_top_k_filtered(base, labels, queries, query_labels, 5)
    for row, label, q in zip(truth, query_labels, queries, strict=True):
        assert (labels[row] == label).all()
        rows = np.flatnonzero(labels == label)
        assert row.tolist() == rows[np.argsort(-(base[rows] @ q))[:5]].tolist()


def test_filtered_ground_truth_pads_with_minus_one_when_a_label_has_fewer_than_k_rows() -> None:
    base = normalize(np.eye(4, dtype=np.float32))
    truth = exact_top_k_filtered(base, np.array([0, 0, 1, 1]), base[:1], np.array([1]), 3)
    assert sorted(truth[0][:2].tolist()) == [2, 3] and truth[0][2] == -1


@pytest.mark.parametrize(("found", "expected"), [
    ([[1, 2, 3]], 1.0),                 # all found
    ([[3, 2, 1]], 1.0),                 # order does not matter
    ([[1, 9, 8]], 1 / 3),
    ([[7, 8, 9]], 0.0),
    ([[1, 2]], 2 / 3),                  # fewer hits than k count as misses
])
def test_recall_at_k_counts_the_share_of_true_neighbours_found(found: list[list[int]], expected: float) -> None:
    assert recall_at_k(found, np.array([[1, 2, 3]]), 3) == pytest.approx(expected)


def test_recall_at_k_averages_over_queries_and_ignores_padding() -> None:
    truth = np.array([[1, 2, -1], [4, 5, 6]])
    assert recall_at_k([[1, 0, 0], [4, 5, 6]], truth, 3) == pytest.approx((0.5 + 1.0) / 2)


def test_cnn_like_vectors_are_non_negative_clustered_and_low_rank_unlike_uniform() -> None:
    cnn, labels = cnn_like(600, 256, seed=3)
    assert cnn.dtype == np.float32 and cnn.shape == (600, 256) and (cnn >= 0).all()
    assert np.array_equal(cnn_like(600, 256, seed=3)[0], cnn)  # deterministic
    stats, flat = vector_statistics(cnn), vector_statistics(uniform(600, 256)[0])
    assert stats["pca_dims_90"] < flat["pca_dims_90"]
    assert stats["relative_contrast"] > flat["relative_contrast"]
    unit = normalize(cnn)
    same = [unit[labels == c].mean(0) for c in np.unique(labels)]
    # queries are closer to their own class centre than to the others on average
    assert np.mean([np.argmax([u @ s for s in same]) == c for u, c in zip(unit, labels, strict=True)]) > 0.5
