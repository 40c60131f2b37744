"""What pooling, input size and preprocessing do to S1's vectors: GeM against average pooling, a larger input, two
scales at once, CLAHE, an aspect-preserving (padded) resize instead of the squash, and database-side augmentation
of the default vectors (`dba<k>-avg<size>`, bench/quality/dba.py).

Label-free feature variants (issue 18, item 2) of the ImageNet backbone, no training: each is scored alone on a
data set by exact cosine search (`precision.ExactProtocol`, the queries and index of `cbmir eval`), beside the
default (average pooling at the backbone's input size, what `cbmir ingest` stores) with the paired mAP@10
difference and its CI. One forward pass per image and size gives both poolings; the two preprocessing variants
(issue 18, item 4) are average-pooled at the input size.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from tqdm import tqdm

from cbmir.bench.quality.datasets import DatasetSpec, decode_item
from cbmir.bench.quality.dba import DBA_ALPHA, dba_rankings
from cbmir.bench.quality.precision import DEPTH, exact_protocol
from cbmir.bench.quality.scoring import relevance, score
from cbmir.bench.quality.stats import bootstrap_mean
from cbmir.ingestion.sources import SourceItem
from cbmir.services import ranking_metrics as metrics

GEM_P = 3.0  # generalized-mean exponent (Radenović et al. 2018): between average (1) and max (∞) pooling
DEFAULT_SIZES = (224, 320)
DEFAULT_DBA_KS = (3, 5)  # neighbours per indexed vector in database-side augmentation (self included)


def clahe(pixels: np.ndarray) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (scikit-image's defaults), float in [0, 1]; RGB on its
    luminance."""
    from skimage.exposure import equalize_adapthist

    return equalize_adapthist(np.asarray(pixels)).astype(np.float32)


def padded_square(pixels: np.ndarray) -> np.ndarray:
    """The image centred on a black square (aspect kept, nothing cut): the squash resize then scales it evenly."""
    from cbmir.services.embedding.resize import unit_pixels

    unit = unit_pixels(pixels)
    height, width = unit.shape[:2]
    side = max(height, width)
    square = np.zeros((side, side, *unit.shape[2:]), dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top:top + height, left:left + width] = unit
    return square


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def embed_variants(items: Sequence[SourceItem], sizes: Sequence[int] = DEFAULT_SIZES,
                   backbone: str = "efficientnet_lite0", batch: int = 32,
                   progress: bool = True) -> tuple[dict[str, np.ndarray], int]:
    """variant -> (len(items), dim) vectors, and the backbone's own input size. Variants: `avg<size>`,
    `gem<size>` per size, with two or more sizes `multiscale-avg` / `multiscale-gem` (sum of the unit vectors over
    the sizes), and `clahe-avg<input>` / `padded-avg<input>`. Each image is decoded and resized per size as the read
    tasks do (the padded variant decodes at full size: the pad comes before the resize)."""
    from cbmir.services.embedding import EmbeddingModel
    from cbmir.services.embedding.preprocess import to_batch_tensor

    model = EmbeddingModel.load(backbone, device="cpu")
    base = model.preprocessing
    parts: dict[str, list[np.ndarray]] = {f"{pool}{size}": [] for size in sizes for pool in ("avg", "gem")}
    parts.update({f"clahe-avg{base.input_size}": [], f"padded-avg{base.input_size}": []})
    for start in tqdm(range(0, len(items), batch), desc="embed", unit="batch", file=sys.stderr, disable=not progress):
        chunk = items[start:start + batch]
        decoded = {size: [decode_item(item, size) for item in chunk] for size in {*sizes, base.input_size}}
        for size in sizes:
            maps = model.feature_maps(to_batch_tensor(decoded[size], replace(base, input_size=size)))
            parts[f"avg{size}"].append(maps.mean(dim=(2, 3)).numpy())
            parts[f"gem{size}"].append(maps.clamp(min=1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P).numpy())
        for name, images in ((f"clahe-avg{base.input_size}", [clahe(p) for p in decoded[base.input_size]]),
                             (f"padded-avg{base.input_size}", [padded_square(decode_item(item)) for item in chunk])):
            parts[name].append(model.feature_maps(to_batch_tensor(images, base)).mean(dim=(2, 3)).numpy())
    vectors = {name: np.concatenate(v) for name, v in parts.items()}
    if len(sizes) > 1:
        for pool in ("avg", "gem"):
            vectors[f"multiscale-{pool}"] = sum(_unit(vectors[f"{pool}{size}"]) for size in sizes)
    return vectors, base.input_size


def feature_grid(spec: DatasetSpec, sizes: Sequence[int] = DEFAULT_SIZES, limit: int | None = None,
                 resamples: int = 2000, progress: bool = True,
                 dba_ks: Sequence[int] = DEFAULT_DBA_KS) -> dict[str, Any]:
    """Every variant of one data set: mAP@10 and P@10 with CIs, and the paired mAP@10 difference to the default."""
    started = time.perf_counter()
    protocol = exact_protocol(spec, limit)
    vectors, input_size = embed_variants(protocol.items, sizes, progress=progress)
    default = f"avg{input_size}"
    ranked = {name: protocol.rank(v) for name, v in vectors.items()}
    for k in dba_ks:  # the stored default vectors with the index augmented: no new embedding
        ranked[f"dba{k}-{default}"] = dba_rankings(protocol, vectors[default], k)
    per_query, cells = {}, []
    for name, rankings in ranked.items():
        per_query[name] = metrics.seed003_average_precision(relevance(rankings, DEPTH))
        figures = score(rankings, [DEPTH], ks=(1, DEPTH), resamples=resamples, by_group=protocol.lopo)["figures"]
        cells.append({"variant": name, "mAP@10": figures["mAP@10"], "P@10": figures[f"P@{DEPTH}"]})
    for cell in cells:
        delta = per_query[cell["variant"]] - per_query[default] if default in per_query else None
        cell["delta_mAP@10_vs_default"] = (bootstrap_mean(delta, protocol.by_group, resamples=resamples).to_dict()
                                           if delta is not None else None)
    return {"dataset": spec.name, "protocol": spec.protocol, "index_images": protocol.n_index,
            "queries": len(protocol.queries), "limit": limit, "sizes": list(sizes), "gem_p": GEM_P,
            "dba_ks": list(dba_ks), "dba_alpha": DBA_ALPHA,
            "default": default, "cells": cells, "seconds": time.perf_counter() - started}


def feature_table(record: dict[str, Any]) -> str:
    lines = [f"{record['dataset']} ({record['protocol']}, {record['index_images']} indexed, {record['queries']} "
             f"queries; default {record['default']})",
             f"{'variant':>15s} {'mAP@10 [95% CI]':>24s} {'diff vs default [95% CI]':>30s}"]
    for c in record["cells"]:
        m, d = c["mAP@10"], c["delta_mAP@10_vs_default"]
        diff = f"{d['mean']:+9.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]" if d else f"{'–':>30s}"
        lines.append(f"{c['variant']:>15s} {m['mean']:8.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}] {diff}")
    return "\n".join(lines)


def feature_plot(record: dict[str, Any], directory: Any) -> Any:
    """Paired mAP@10 difference of every variant to the default, with its CI, one panel per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = record["datasets"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.8), squeeze=False, sharey=True)
    for ax, data in zip(axes[0], datasets, strict=True):
        cells = [c for c in data["cells"] if c["delta_mAP@10_vs_default"]]
        means = np.array([c["delta_mAP@10_vs_default"]["mean"] for c in cells]) * 100
        low = means - np.array([c["delta_mAP@10_vs_default"]["ci_low"] for c in cells]) * 100
        high = np.array([c["delta_mAP@10_vs_default"]["ci_high"] for c in cells]) * 100 - means
        ax.bar(range(len(cells)), means, yerr=[low, high], capsize=3)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(cells)), [c["variant"] for c in cells], rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{data['dataset']} (default {data['default']})", fontsize=9)
    axes[0][0].set_ylabel("mAP@10 − default, points (95% CI)")
    fig.tight_layout()
    path = directory / "features.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
