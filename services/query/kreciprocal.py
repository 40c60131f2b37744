"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) over the shortlist a search returned: label-free, no descriptors.

Two images are k-reciprocal neighbours when each is among the other's k nearest. A candidate that shares many
k-reciprocal neighbours with the query is likely of its kind even when its own distance is middling, and a close
candidate whose neighbourhood lies elsewhere (a hub) is pushed down. Each image of the set {query} ∪ candidates is
encoded as a weighted set of its (expanded) k-reciprocal neighbours; the new distance is the Jaccard distance
between the query's set and a candidate's, blended with the original distance.

Here the neighbourhoods are computed inside the shortlist (the query and its `k_prep` hits, vectors fetched from the
store), not over the whole archive: one search and one fetch per query, O(k_prep²) arithmetic, whatever the
collection's size. The paper's defaults (k1 20, k2 6, λ 0.3) are kept; the shortlist must be a few times k1.
"""

from __future__ import annotations

import numpy as np

K1 = 20  # neighbours that must be mutual
K2 = 6  # local query expansion of the encodings
LAMBDA = 0.3  # weight of the original distance beside the Jaccard one
DEFAULT_SHORTLIST = 50  # hits re-ranked when the request does not say (k_prep 0)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _reciprocal(ranks: np.ndarray, i: int, k: int) -> np.ndarray:
    """Indices among i's k nearest that have i among their own k nearest (i itself included)."""
    forward = ranks[i, : k + 1]
    backward = ranks[forward, : k + 1]
    return forward[np.any(backward == i, axis=1)]


def k_reciprocal_distances(query: np.ndarray, candidates: np.ndarray, k1: int = K1, k2: int = K2,
                           lambda_value: float = LAMBDA) -> np.ndarray:
    """The re-ranking distance from the query to each candidate (lower is closer), shape (len(candidates),).

    Distances are squared Euclidean between unit vectors (2 − 2 cos: the order of a COSINE collection), each row
    scaled by its maximum as in the paper's code.
    """
    vectors = _unit(np.vstack([np.asarray(query, dtype=np.float64).reshape(1, -1),
                               np.asarray(candidates, dtype=np.float64)]))
    n = len(vectors)
    if n <= 2:
        return np.zeros(n - 1)
    k1 = max(1, min(k1, n - 1))
    k2 = max(1, min(k2, n))
    distance = np.clip(2.0 - 2.0 * (vectors @ vectors.T), 0.0, None)
    distance = distance / np.maximum(distance.max(axis=1, keepdims=True), 1e-12)
    ranks = np.argsort(distance, axis=1, kind="stable")
    half = max(1, int(np.around(k1 / 2)))

    encodings = np.zeros((n, n))
    for i in range(n):
        mutual = _reciprocal(ranks, i, k1)
        expanded = [mutual]
        for j in mutual:
            theirs = _reciprocal(ranks, int(j), half)
            # A neighbour's own mutual set joins when most of it is already mutual with i (robust to outliers).
            if len(np.intersect1d(theirs, mutual)) > 2.0 / 3.0 * len(theirs):
                expanded.append(theirs)
        members = np.unique(np.concatenate(expanded))
        weights = np.exp(-distance[i, members])
        encodings[i, members] = weights / weights.sum()
    if k2 > 1:
        encodings = encodings[ranks[:, :k2]].mean(axis=1)

    # Jaccard distance of the query's encoding to each candidate's, by min/max of the weighted sets.
    shared = np.minimum(encodings[0], encodings[1:]).sum(axis=1)
    union = np.maximum(encodings[0], encodings[1:]).sum(axis=1)
    jaccard = 1.0 - shared / np.maximum(union, 1e-12)
    return (1.0 - lambda_value) * jaccard + lambda_value * distance[0, 1:]


def k_reciprocal_order(query: np.ndarray, candidates: np.ndarray, k1: int = K1, k2: int = K2,
                       lambda_value: float = LAMBDA) -> np.ndarray:
    """Candidate indices, closest first by the k-reciprocal distance (ties keep the search's order)."""
    if len(candidates) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.argsort(k_reciprocal_distances(query, candidates, k1, k2, lambda_value), kind="stable")
