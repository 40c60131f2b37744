"""`cbmir bench service`: vector queries over cbmir's gRPC service on a served collection, serial and under load.

What one query node holds, as a platform team sees it: a real `cbmir serve --vectors-only` process (no model: the
clients embed) on an existing collection (e.g. the 10^6 rows `cbmir bench search --reuse` keeps on a Milvus
server), serial round trips split into Milvus search and service overhead, then QPS and latency percentiles at
1 / 4 / 16 concurrent clients. Query vectors are stored rows with Gaussian noise, so no query is its own exact hit.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbmir.bench.metrics import latency_summary, throughput
from cbmir.bench.serve_process import start_serve, stop_serve

NOISE = 0.05  # of each dimension's spread over the sampled rows


@dataclass
class ServiceBenchConfig:
    milvus_uri: str
    collection: str
    clients: tuple[int, ...] = (1, 4, 16)
    queries: int = 200
    top_k: int = 10
    qps_seconds: float = 10.0
    search_params: tuple[str, ...] = ()  # cbmir serve --search-param, e.g. ("ef=128",)
    workers: int = 8
    seed: int = 0


def query_vectors(uri: str, collection: str, count: int, seed: int) -> tuple[np.ndarray, int]:
    """`count` stored vectors (the first rows Milvus returns), each moved by Gaussian noise; and the row count."""
    from cbmir.services.store import MilvusStore
    from cbmir.services.store.schema import EMBEDDING

    store = MilvusStore(uri, timeout=120)
    try:
        store.load(collection)
        rows = store.client.query(collection, filter="", limit=count, output_fields=[EMBEDDING])
        total = store.count(collection)
    finally:
        store.close()
    if not rows:
        raise ValueError(f"collection {collection!r} is empty: nothing to query with")
    vectors = np.asarray([r[EMBEDDING] for r in rows], dtype=np.float32)
    noise = np.random.default_rng(seed).standard_normal(vectors.shape).astype(np.float32)
    return vectors + NOISE * vectors.std(axis=0, keepdims=True) * noise, total


def _query_vectors_elsewhere(config: ServiceBenchConfig, work: Path) -> tuple[np.ndarray, int]:
    """query_vectors in a child process: a Milvus Lite file is held by the first process that opens it, and the
    server process must be that one."""
    out = work / "queries.npz"
    code = (f"import numpy as np; from cbmir.bench.service import query_vectors; "
            f"v, n = query_vectors({config.milvus_uri!r}, {config.collection!r}, {config.queries}, {config.seed}); "
            f"np.savez({str(out)!r}, vectors=v, rows=n)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600, capture_output=True)
    with np.load(out) as saved:
        return saved["vectors"], int(saved["rows"])


def run_service_bench(config: ServiceBenchConfig, progress: Any = print) -> dict[str, Any]:
    from cbmir.services.query.client import RetrievalClient

    work = Path(tempfile.mkdtemp(prefix="cbmir-bench-service-"))
    vectors, total = _query_vectors_elsewhere(config, work)
    args = ["--vectors-only", "--milvus-uri", config.milvus_uri, "--collection", config.collection,
            "--metrics-port", "0", "--log-level", "WARNING", "--workers", str(config.workers)]
    for param in config.search_params:
        args += ["--search-param", param]
    started = time.perf_counter()
    served = start_serve(args, work / "serve.log")
    progress(f"cbmir serve --vectors-only up in {time.perf_counter() - started:.1f} s at {served.target}; "
             f"{len(vectors)} query vectors")
    try:
        with RetrievalClient(served.target, timeout=60) as client:
            for vector in vectors[:5]:  # warm-up: first-call allocations, segment caches
                client.search(vector=vector, top_k=config.top_k)
            round_trips, search_ms = [], []
            for vector in vectors:
                t0 = time.perf_counter()
                reply = client.search(vector=vector, top_k=config.top_k)
                round_trips.append(time.perf_counter() - t0)
                search_ms.append(reply.timings.search_ms)
            serial = latency_summary(round_trips)
            overhead = latency_summary([rt - s / 1000.0 for rt, s in zip(round_trips, search_ms, strict=True)])
            progress(f"serial: p50 {serial['p50_ms']:.2f} ms, p99 {serial['p99_ms']:.2f} ms "
                     f"(Milvus search p50 {np.percentile(search_ms, 50):.2f} ms)")
            loads = []
            for clients in config.clients:
                load = throughput(lambda i: client.search(vector=vectors[i % len(vectors)], top_k=config.top_k),
                                  clients, config.qps_seconds, len(vectors))
                loads.append(load)
                progress(f"{clients:>3d} clients: {load['qps']:.0f} QPS, p50 {load['p50_ms']:.2f} ms, "
                         f"p99 {load['p99_ms']:.2f} ms")
    finally:
        stop_serve(served)
    return {"config": asdict(config), "rows": total,
            "serial": {"round_trip": serial, "milvus_search": latency_summary(np.asarray(search_ms) / 1000.0),
                       "service_overhead": overhead},
            "load": loads}


def service_table(record: dict[str, Any]) -> str:
    serial = record["serial"]
    lines = [f"collection {record['config']['collection']} ({record['rows']} rows), vector queries over gRPC, "
             f"k={record['config']['top_k']}, {' '.join(record['config']['search_params']) or 'recorded params'}",
             f"{'':22s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s}", "-" * 49]
    for name in ("round_trip", "milvus_search", "service_overhead"):
        s = serial[name]
        lines.append(f"serial {name:15s} {s['p50_ms']:8.2f} {s['p95_ms']:8.2f} {s['p99_ms']:8.2f}")
    lines += ["", f"{'clients':>7s} {'QPS':>8s} {'p50 ms':>8s} {'p99 ms':>8s}", "-" * 34]
    lines += [f"{q['clients']:7d} {q['qps']:8.1f} {q['p50_ms']:8.2f} {q['p99_ms']:8.2f}" for q in record["load"]]
    return "\n".join(lines)


def service_plot(record: dict[str, Any], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    load = record["load"]
    clients = [q["clients"] for q in load]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(clients, [q["qps"] for q in load], "o-")
    left.set(xlabel="concurrent clients", ylabel="queries / s", xscale="log", xticks=clients,
             title=f"QPS over gRPC, {record['rows']:,} rows")
    left.set_xticklabels([str(c) for c in clients])
    right.plot(clients, [q["p50_ms"] for q in load], "o-", label="p50")
    right.plot(clients, [q["p99_ms"] for q in load], "s--", label="p99")
    right.set(xlabel="concurrent clients", ylabel="ms", xscale="log", xticks=clients, title="latency under load")
    right.set_xticklabels([str(c) for c in clients])
    right.legend()
    fig.tight_layout()
    path = out_dir / "service_qps.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
