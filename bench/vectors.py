"""Benchmark vectors: a synthetic generator shaped like CNN (post-ReLU, pooled) embeddings, real ones, statistics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SYNTHETIC_KINDS = ("cnn", "uniform")


@dataclass(frozen=True)
class CnnLikeSpec:
    """Class clusters in a low-rank subspace with a power-law spectrum, lifted to `dim` and passed through softplus.

    Why this shape: a pooled CNN feature is an average of ReLU outputs, so it is non-negative and dense-ish; its
    variance lives in a few dozen directions (a decaying spectrum), images of one class cluster, and per-channel
    scales differ by an order of magnitude. The defaults were set so the statistics of `vector_statistics` match
    efficientnet_lite0 features of real brain MRI (docs/benchmarks.md shows both).
    """

    classes: int = 8
    rank: int = 128
    spectrum_decay: float = 0.4      # latent std of component j ~ (j+1)^-decay
    class_separation: float = 1.0     # class centres' spread relative to the first latent component
    noise: float = 0.7                # isotropic full-dim noise before the nonlinearity
    offset: float = -2.5              # pre-activation shift: how much of the mass softplus squeezes towards 0
    channel_scale_sigma: float = 1.0  # log-normal spread of per-channel scales


def cnn_like(n: int, dim: int, seed: int = 0, spec: CnnLikeSpec = CnnLikeSpec()) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 CNN-like vectors and their int class labels, deterministic for (n, dim, seed, spec).

    The model (centres, projection, scales) depends on `seed` only, so base vectors and queries drawn with
    different `n` come from the same distribution; generated in chunks so 10^6 x 1280 needs no temporaries.
    """
    model = np.random.default_rng(seed)
    std = (np.arange(spec.rank) + 1.0) ** -spec.spectrum_decay
    centres = model.standard_normal((spec.classes, spec.rank)) * std * spec.class_separation * 2.0
    projection = (model.standard_normal((spec.rank, dim)) / np.sqrt(spec.rank)).astype(np.float32)
    bias = (spec.offset + 0.5 * model.standard_normal(dim)).astype(np.float32)
    scales = np.exp(spec.channel_scale_sigma * model.standard_normal(dim)).astype(np.float32)

    draw = np.random.default_rng([seed, n])
    labels = draw.integers(0, spec.classes, size=n)
    out = np.empty((n, dim), dtype=np.float32)
    chunk = 50_000
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        z = centres[labels[start:stop]] + draw.standard_normal((stop - start, spec.rank)) * std
        pre = z.astype(np.float32) @ projection + bias
        pre += spec.noise * draw.standard_normal(pre.shape, dtype=np.float32)
        out[start:stop] = np.logaddexp(0.0, pre) * scales  # softplus, then per-channel scale
    return out, labels


def uniform(n: int, dim: int, seed: int = 0, classes: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The worst case for an index: no structure at all."""
    rng = np.random.default_rng([seed, n, 1])
    return rng.random((n, dim), dtype=np.float32), rng.integers(0, classes, size=n)


def synthetic(kind: str, n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    if kind == "cnn":
        return cnn_like(n, dim, seed)
    if kind == "uniform":
        return uniform(n, dim, seed)
    raise ValueError(f"unknown synthetic vectors {kind!r}: choose one of {', '.join(SYNTHETIC_KINDS)}")


def load_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A .npy (n, dim) of real embeddings, or an .npz with `embeddings` and optional `labels`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embeddings file not found: {path} (make one with `cbmir bench vectors`)")
    if path.suffix == ".npz":
        data = np.load(path, allow_pickle=False)
        vectors = data["embeddings"].astype(np.float32)
        labels = data["labels"] if "labels" in data else np.zeros(len(vectors), dtype=int)
    else:
        vectors = np.load(path, allow_pickle=False).astype(np.float32)
        labels = np.zeros(len(vectors), dtype=int)
    _, codes = np.unique(labels, return_inverse=True)
    return vectors, codes.astype(int)


def normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def vector_statistics(vectors: np.ndarray, sample: int = 2000, seed: int = 0) -> dict[str, float]:
    """What makes ANN search easy or hard, to compare synthetic with real embeddings.

    - pca_dims_90: principal components holding 90% of the variance (a linear intrinsic dimension)
    - participation_ratio: (sum λ)^2 / sum λ^2 of the covariance spectrum
    - cosine_mean / cosine_std: pairwise cosine similarity of random pairs
    - relative_contrast: median distance / nearest-neighbour distance (cosine distance); near 1 = hard
    - near_zero_fraction: share of entries below 1% of the vector's max (sparsity after ReLU)
    """
    rng = np.random.default_rng(seed)
    x = vectors[rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)].astype(np.float64)
    centred = x - x.mean(axis=0)
    eig = np.clip(np.linalg.svd(centred, compute_uv=False) ** 2, 0, None)
    cumulative = np.cumsum(eig) / eig.sum()
    unit = normalize(x.astype(np.float32)).astype(np.float64)
    cos = unit @ unit.T
    off_diagonal = cos[~np.eye(len(cos), dtype=bool)]
    dist = 1.0 - cos
    np.fill_diagonal(dist, np.inf)
    nearest = dist.min(axis=1)
    np.fill_diagonal(dist, np.nan)
    median = np.nanmedian(dist, axis=1)
    return {
        "pca_dims_90": int(np.searchsorted(cumulative, 0.90) + 1),
        "participation_ratio": float(eig.sum() ** 2 / (eig ** 2).sum()),
        "cosine_mean": float(off_diagonal.mean()),
        "cosine_std": float(off_diagonal.std()),
        "relative_contrast": float(np.median(median / np.maximum(nearest, 1e-12))),
        "near_zero_fraction": float((x < 0.01 * x.max(axis=1, keepdims=True)).mean()),
    }
