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


def _mutual(ranks: np.ndarray, k: int) -> np.ndarray:
    """n x n booleans: [i, j] when j is among i's k nearest and i among j's (each row includes itself)."""
    nearest = np.zeros(ranks.shape, dtype=bool)
    np.put_along_axis(nearest, ranks[:, : k + 1], True, axis=1)
    return nearest & nearest.T


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

    mutual = _mutual(ranks, k1)
    smaller = _mutual(ranks, half)
    # A mutual neighbour j brings its own smaller mutual set along when most of that set is mutual with i already
    # (robust to outliers): overlap[i, j] = |smaller_j ∩ mutual_i|.
    overlap = mutual.astype(np.float64) @ smaller.T.astype(np.float64)
    brings = mutual & (overlap > 2.0 / 3.0 * smaller.sum(axis=1)[np.newaxis, :])
    members = mutual | (brings.astype(np.float64) @ smaller.astype(np.float64) > 0)
    weights = np.where(members, np.exp(-distance), 0.0)
    encodings = weights / weights.sum(axis=1, keepdims=True)
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
