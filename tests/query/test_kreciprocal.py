"""k-reciprocal re-ranking of a shortlist, on vectors whose neighbourhoods are known."""

from __future__ import annotations

import numpy as np

from cbmir.services.query.kreciprocal import k_reciprocal_order


def _shortlist(seed: int, dim: int = 64, size: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two loose clusters A and B, a query just on A's side of the middle; the 60 vectors in plain cosine order
    (what the store's search returns) with their cluster (0 = A)."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=dim), rng.normal(size=dim)
    vectors = np.vstack([a + 0.6 * rng.normal(size=(size, dim)), b + 0.6 * rng.normal(size=(size, dim))])
    clusters = np.array([0] * size + [1] * size)
    query = 0.52 * a + 0.48 * b + 0.3 * rng.normal(size=dim)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    order = np.argsort(-(unit @ (query / np.linalg.norm(query))), kind="stable")
    return query, vectors[order], clusters[order]


def test_mutual_neighbourhoods_keep_the_querys_cluster_together_in_the_first_ten() -> None:
    plain, reranked = [], []
    for seed in range(30):
        query, shortlist, clusters = _shortlist(seed)
        order = k_reciprocal_order(query, shortlist, k1=10, k2=3)
        assert sorted(order.tolist()) == list(range(len(shortlist)))  # a permutation: nothing lost or repeated
        plain.append(np.mean(clusters[:10] == 0))
        reranked.append(np.mean(clusters[order][:10] == 0))
    # Plain cosine lets B's members into A's first ten (0.64 on these seeds); mutual neighbourhoods keep more of A's.
    assert np.mean(reranked) >= np.mean(plain) + 0.05


def test_small_shortlists_are_returned_as_they_are() -> None:
    query = np.ones(8)
    assert k_reciprocal_order(query, np.zeros((0, 8))).tolist() == []
    assert k_reciprocal_order(query, np.ones((1, 8))).tolist() == [0]
    assert sorted(k_reciprocal_order(query, np.random.default_rng(0).normal(size=(3, 8)), k1=20).tolist()) == [0, 1, 2]
