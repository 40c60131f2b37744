"""Index and metric choice: explicit parameters derived from a stated target, and a record of what was chosen."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

INDEX_TYPES = ("HNSW", "IVF_FLAT", "IVF_SQ8", "FLAT")
METRICS = ("COSINE", "L2", "IP")


@dataclass(frozen=True)
class IndexConfig:
    """How a collection's vectors are indexed and searched."""

    index_type: str = "HNSW"
    metric: str = "COSINE"
    build_params: dict[str, Any] = field(default_factory=dict)
    search_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {self.index_type!r}: choose one of {', '.join(INDEX_TYPES)}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}: choose one of {', '.join(METRICS)}")

    def higher_is_closer(self) -> bool:
        return self.metric in ("COSINE", "IP")


def choose_index(index_type: str = "HNSW", metric: str = "COSINE", expected_rows: int = 100_000) -> IndexConfig:
    """Pick build and search parameters for `expected_rows` aiming at recall@10 >= 0.95.

    HNSW: M=16/efConstruction=200, ef growing with the collection.
    IVF: nlist ~ 4*sqrt(N) (the FAISS rule of thumb), probing ~6% of the lists.
    """
    index_type = index_type.upper()
    metric = metric.upper()
    if index_type == "HNSW":
        # Measured (docs/benchmarks.md): ef=64 holds recall@10 >= 0.99 at 10^4 but falls to ~0.965 at 10^5;
        # ef=128 gives ~0.99 at 10^5. Larger collections get a larger ef.
        ef = 64 if expected_rows <= 20_000 else 128 if expected_rows <= 300_000 else 256
        return IndexConfig(index_type, metric, {"M": 16, "efConstruction": 200}, {"ef": ef})
    if index_type in ("IVF_FLAT", "IVF_SQ8"):
        nlist = int(min(65536, max(16, 4 * math.sqrt(max(expected_rows, 1)))))
        nprobe = max(8, nlist // 16)
        return IndexConfig(index_type, metric, {"nlist": nlist}, {"nprobe": nprobe})
    return IndexConfig(index_type, metric, {}, {})


# The search parameter each index type takes: what an operator may override at serve time (`--search-param`).
SEARCH_PARAMETERS = {"HNSW": "ef", "IVF_FLAT": "nprobe", "IVF_SQ8": "nprobe"}


def parse_search_overrides(items: list[str]) -> dict[str, int]:
    """["ef=128", "nprobe=32"] → {"ef": 128, "nprobe": 32}; anything else is refused with the allowed keys."""
    allowed = sorted(set(SEARCH_PARAMETERS.values()))
    overrides: dict[str, int] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in allowed or not value.isdigit() or int(value) < 1:
            raise ValueError(f"bad search parameter {item!r}: expected KEY=N with KEY one of {', '.join(allowed)} "
                             f"and N >= 1 (e.g. ef=128)")
        overrides[key] = int(value)
    return overrides


def with_overrides(index_type: str, search: dict[str, Any], overrides: dict[str, int]) -> dict[str, Any]:
    """The recorded search parameters with the override of this index type's own parameter, if given."""
    key = SEARCH_PARAMETERS.get(index_type)
    return {**search, key: overrides[key]} if key in overrides else dict(search)


def search_params_for(config: IndexConfig, top_k: int) -> dict[str, Any]:
    """HNSW needs ef >= k; everything else searches as configured."""
    params = dict(config.search_params)
    if config.index_type == "HNSW":
        params["ef"] = max(int(params.get("ef", 64)), top_k)
    return params
