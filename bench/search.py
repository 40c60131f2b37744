"""`cbmir bench search`: for each size, engine and index, recall@10 vs exact, latency, QPS, build and insert time."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.bench import ENGINES, ground_truth, metrics, vectors
from cbmir.bench.engines import FaissEngine, MilvusEngine, index_config, label_name, sweep

log = logging.getLogger(__name__)

QUICK_SIZES = (10_000, 100_000)
FULL_SIZES = (10_000, 100_000, 1_000_000)
# Milvus Lite 3.2 searches in pure Python, O(rows) per query whatever the index (~40 ms at 10^5); above this
# its sweep would take hours, so larger sizes skip it.
LITE_MAX_ROWS = 100_000


@dataclass
class SearchBenchConfig:
    sizes: tuple[int, ...] = QUICK_SIZES
    dim: int = 1280
    vectors: str = "cnn"                     # cnn | uniform | a path to real embeddings (.npy / .npz)
    engines: tuple[str, ...] = ENGINES
    index_types: tuple[str, ...] = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW")
    k: int = 10
    queries: int = 200
    budget_s: float = 4.0                    # per setting: stop timing serial queries after this (min 20 queries)
    clients: tuple[int, ...] = (1, 4, 16)
    qps_seconds: float = 2.0
    with_filter: bool = True
    lite_max_rows: int = LITE_MAX_ROWS
    seed: int = 0
    workdir: str = ""
    server_uri: str = ""                     # use this Milvus server instead of starting one
    server_settings: dict[str, str] = field(default_factory=dict)  # milvus.yaml keys for the started server
    reuse: bool = False                      # keep the server collection and the FAISS index, re-use them
    partitions: int | None = None            # Milvus: partitions of the label partition key (None: Milvus's 16)
    faiss_cache: str = ""                    # keep built FAISS indexes here and read them back (with --reuse)
    filter_sweep: bool = False               # the label-filtered search at every search parameter, not only the default
    passes: int = 1                          # serial timing cycles the queries this many times (a steadier p99)


@dataclass
class Measurement:
    engine: str
    n: int
    index_type: str
    build_params: dict[str, Any]
    search_params: dict[str, Any]
    filtered: bool
    recall: float
    latency: dict[str, float]
    qps: list[dict[str, float]] = field(default_factory=list)
    default_params: bool = False             # the index's default search parameters (the row the table shows)


def dataset(config: SearchBenchConfig, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(base, base labels, queries, query labels), unit-normalised; queries are never in the base."""
    total = n + config.queries
    if config.vectors in vectors.SYNTHETIC_KINDS:
        data, labels = vectors.synthetic(config.vectors, total, config.dim, config.seed)
    else:
        data, labels = vectors.load_embeddings(config.vectors)
        if len(data) < total:
            raise ValueError(f"{config.vectors} holds {len(data)} vectors; size {n} needs {total} with the queries")
        order = np.random.default_rng(config.seed).permutation(len(data))[:total]
        data, labels = data[order], labels[order]
    data = vectors.normalize(data)
    return data[:n], labels[:n], data[n:], labels[n:]


def run(config: SearchBenchConfig, server_factory: Callable[[], Any] | None = None,
        progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Every measurement of one run, as a JSON-able dict (config, per-size build stats, measurements)."""
    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    server = None
    if "server" in config.engines and not config.server_uri:
        from cbmir.services.store.milvus_server import MilvusServer

        server = (server_factory or (lambda: MilvusServer(data_dir=workdir / "milvus-server",
                                                          settings=config.server_settings)))().start()
    server_uri = config.server_uri or (server.uri if server else "")
    record: dict[str, Any] = {"config": asdict(config), "builds": [], "measurements": [], "skipped": [], "errors": []}
    try:
        for n in config.sizes:
            base, labels, queries, query_labels = dataset(config, n)
            started = time.perf_counter()
            truth = ground_truth.exact_top_k(base, queries, config.k)
            truth_filtered = ground_truth.exact_top_k_filtered(base, labels, queries, query_labels, config.k)
            progress(f"N={n}: exact ground truth in {time.perf_counter() - started:.1f} s")
            for engine_name in config.engines:
                if engine_name == "lite" and n > config.lite_max_rows:
                    reason = f"Milvus Lite skipped at N={n} (> --lite-max-rows {config.lite_max_rows})"
                    record["skipped"].append(reason)
                    progress(reason)
                    continue
                engine = _engine(engine_name, workdir, n, server_uri, config.reuse, config.partitions,
                                 config.faiss_cache)
                try:
                    _bench_engine(config, engine, n, base, labels, queries, query_labels, truth, truth_filtered,
                                  record, progress)
                finally:
                    engine.close()
                    gc.collect()
            del base, labels, queries, truth, truth_filtered
            gc.collect()
    finally:
        if server is not None:
            server.stop()
    return record


def _engine(name: str, workdir: Path, n: int, server_uri: str, reuse: bool = False,
            partitions: int | None = None, faiss_cache: str = "") -> Any:
    if name == "faiss":
        return FaissEngine(cache_dir=Path(faiss_cache) if faiss_cache else None)
    if name == "lite":
        return MilvusEngine("lite", str(workdir / f"lite-{n}.db"), num_partitions=partitions)
    if name == "server":
        suffix = f"_p{partitions}" if partitions else ""
        return MilvusEngine("server", server_uri, collection=f"bench_{n}{suffix}", reuse=reuse,
                            num_partitions=partitions)
    raise ValueError(f"unknown engine {name!r}: choose from {', '.join(ENGINES)}")


def _bench_engine(config: SearchBenchConfig, engine: Any, n: int, base: np.ndarray, labels: np.ndarray,
                  queries: np.ndarray, query_labels: np.ndarray, truth: np.ndarray, truth_filtered: np.ndarray,
                  record: dict[str, Any], progress: Callable[[str], None]) -> None:
    loaded = engine.load(base, labels)
    for index_type in config.index_types:
        index = index_config(index_type, n)
        try:
            build_s = engine.build(index)
        except Exception as error:  # noqa: BLE001 - one failed build must not lose the rest of a long run
            reason = f"{engine.name} N={n} {index_type}: index build failed: {error}"
            record["errors"].append(reason)
            progress(reason)
            continue
        record["builds"].append({
            "engine": engine.name, "n": n, "index_type": index_type, "build_params": index.build_params,
            "insert_s": loaded.insert_s, "insert_rows_per_s": loaded.insert_rows_per_s, "index_build_s": build_s,
            "index_bytes": engine.memory_bytes(),
            "segments": engine.segments(),
            "reused": bool(getattr(engine, "reused_index", False)),
        })
        engine.prepare_search()
        default = index.search_params or {}
        settings = sweep(index)
        for params in settings:
            m = _measure(config, engine, n, index, params, queries, None, truth)
            m.default_params = params == default or len(settings) == 1
            if m.default_params:
                m.qps = [metrics.throughput(_caller(engine, queries, config.k, params, None), c,
                                            config.qps_seconds, len(queries)) for c in config.clients]
            record["measurements"].append(asdict(m))
            progress(_line(m))
        if config.with_filter:
            names = [label_name(c) for c in query_labels]
            for params in settings if config.filter_sweep else [default]:
                m = _measure(config, engine, n, index, params, queries, names, truth_filtered)
                m.default_params = params == default or len(settings) == 1
                record["measurements"].append(asdict(m))
                progress(_line(m))
        engine.drop_index()


def _caller(engine: Any, queries: np.ndarray, k: int, params: dict[str, Any], names: list[str] | None
            ) -> Callable[[int], list[int]]:
    return lambda i: engine.search(queries[i], k, params, names[i] if names else None)


def _measure(config: SearchBenchConfig, engine: Any, n: int, index: Any, params: dict[str, Any],
             queries: np.ndarray, names: list[str] | None, truth: np.ndarray) -> Measurement:
    call = _caller(engine, queries, config.k, params, names)
    call(0)  # warm-up: first-query costs (connections, lazy loads) are not search latency
    count = len(queries)
    # Further passes time the same queries again: a p99 over 1000 calls instead of the 2nd-worst of 200.
    times, found = metrics.serial(lambda i: call(i % count), count * config.passes, config.budget_s * config.passes)
    found = found[:count]
    recall = ground_truth.recall_at_k(found, truth[:len(found)], config.k)
    return Measurement(engine=engine.name, n=n, index_type=index.index_type, build_params=index.build_params,
                       search_params=params, filtered=names is not None, recall=recall,
                       latency=metrics.latency_summary(times))


def _line(m: Measurement) -> str:
    qps = " ".join(f"{q['clients']}c={q['qps']:.0f}" for q in m.qps)
    return (f"  {m.engine:6s} N={m.n:<8d} {m.index_type:8s} {str(m.search_params):16s} "
            f"{'label' if m.filtered else '     '} recall@10={m.recall:.3f} p50={m.latency['p50_ms']:.2f} ms "
            f"p99={m.latency['p99_ms']:.2f} ms {('QPS ' + qps) if qps else ''}")
