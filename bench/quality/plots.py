"""PNGs of one run: P@k and R@k vs k with 95% CIs, the PR curve, PCA and t-SNE of the index embeddings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_precision_recall_vs_k(curves: dict, title: str, path: Path) -> Path:
    ks = np.array(curves["k"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, name in ((axes[0], "precision", "P@k"), (axes[1], "recall", "R@k")):
        mean = np.array([e["mean"] for e in curves[key]])
        low = np.array([e["ci_low"] for e in curves[key]])
        high = np.array([e["ci_high"] for e in curves[key]])
        ax.plot(ks, mean, marker="o", ms=3)
        ax.fill_between(ks, low, high, alpha=0.25, label="95% bootstrap CI")
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_ylabel(name)
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pr_curve(pr: dict, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(pr["recall"], pr["precision"])
    ax.set_xlabel("recall")
    ax.set_ylabel("interpolated precision (mean over queries)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def embedding_views(vectors: np.ndarray, normalise: bool, cache_dir: Path, tsne: bool = True,
                    seed: int = 0) -> dict[str, np.ndarray | float]:
    """2-D PCA (with explained variance) and t-SNE (after PCA to 50-d, as seed 000) of the vectors, cached."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(vectors, dtype=np.float64)
    if normalise:  # a COSINE collection ranks by angle: show the space it searches
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    digest = hashlib.sha256(np.ascontiguousarray(x.astype(np.float32)).tobytes()).hexdigest()[:16]
    path = cache_dir / f"views_{digest}{'_tsne' if tsne else ''}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    pca = PCA(n_components=2, random_state=seed).fit(x)
    views: dict[str, np.ndarray | float] = {"pca": pca.transform(x), "pca_explained": pca.explained_variance_ratio_}
    if tsne and x.shape[0] > 5:
        reduced = PCA(n_components=min(50, x.shape[1], x.shape[0]), random_state=seed).fit_transform(x)
        perplexity = float(min(30.0, (x.shape[0] - 1) / 3.0))
        views["tsne"] = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
            reduced)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, **views)
    return views


def plot_embedding(coords: np.ndarray, labels: list[str], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 5))
    for label in sorted(set(labels)):
        mask = np.array([lab == label for lab in labels])
        ax.scatter(coords[mask, 0], coords[mask, 1], s=6, alpha=0.6, label=f"{label} ({mask.sum()})")
    ax.legend(loc="best", fontsize=8, markerscale=2)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
