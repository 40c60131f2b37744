"""Seed 003's HOG-alone baseline: HOG of every image, brute-force L1 ranking in numpy (no Milvus, no CNN).

The descriptor is the one the engine re-ranks with (cbmir.services.embedding.descriptors.hog_descriptor), so "HOG
alone" and "CNN + HOG re-rank" compare the same HOG.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.spatial.distance import cdist
from tqdm import tqdm

from cbmir.bench.quality.datasets import decode_item
from cbmir.bench.quality.protocols import IndexView, Query, Ranking
from cbmir.ingestion.sources import SourceItem
from cbmir.services.embedding.descriptors import DESCRIPTORS, hog_descriptor

log = logging.getLogger(__name__)

HOG_TAG = f"hog{DESCRIPTORS['hog']}"


def hog_matrix(items: Sequence[SourceItem], cache_dir: Path, tag: str, progress: bool = True) -> np.ndarray:
    """HOG descriptors of `items` (rows in order), cached in cache_dir by the item list and descriptor size."""
    digest = hashlib.sha256("\n".join(f"{i.uri}#{i.split}/{i.array_index}" for i in items).encode()).hexdigest()
    path = cache_dir / f"{tag}_{HOG_TAG}_{digest[:12]}.npy"
    if path.is_file():
        return np.load(path)
    rows = [hog_descriptor(decode_item(item))
            for item in tqdm(items, desc=f"HOG {tag}", unit="img", file=sys.stderr, disable=not progress)]
    matrix = np.stack(rows).astype(np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, matrix)
    return matrix


def rank_with_hog(index: IndexView, index_descriptors: np.ndarray, queries: Sequence[Query],
                  query_descriptors: np.ndarray, depths: Sequence[int], chunk: int = 64) -> list[Ranking]:
    """L1 (cityblock) distance to every index image, the query's patient masked out, closest first."""
    ids = [e.id for e in index.entries]
    groups = np.array([e.group for e in index.entries])
    labels = [e.label for e in index.entries]
    rankings = []
    for start in range(0, len(queries), chunk):
        block = queries[start:start + chunk]
        distances = cdist(query_descriptors[start:start + chunk].astype(np.float64),
                          index_descriptors.astype(np.float64), metric="cityblock")
        for query, row in zip(block, distances, strict=True):
            row = np.where(groups == query.group, np.inf, row)
            order = [j for j in np.argsort(row, kind="stable") if np.isfinite(row[j])]
            ranking = Ranking(query=query, n_relevant=index.n_relevant(query))
            for depth in depths:
                ranking.hits[depth] = [ids[j] for j in order[:depth]]
                ranking.labels[depth] = [labels[j] for j in order[:depth]]
            rankings.append(ranking)
    return rankings
